"""Knowledge base of names: how bad an import is and what it would let a pickle do.

The allowlist decides *whether* a global is a finding; this table only decides
its severity and explanation. A name not listed here and not allowlisted is
still a finding (SH101, medium): default deny does not depend on this table
being complete.

Lookup goes from the full dotted name to ever shorter prefixes, so an entry
for a module covers everything in it, and a more specific entry wins.
"""

from __future__ import annotations

from dataclasses import dataclass

from safehub.rules import Severity

__all__ = ["Knowledge", "canonical", "lookup"]


@dataclass(frozen=True)
class Knowledge:
    """What is known about a name: severity, a category, and what it would do."""

    severity: Severity
    category: str
    explanation: str


C, H, M, L = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW

# Module spellings that reach the same code under another name.
_MODULE_ALIASES = {
    "posix": "os", "nt": "os", "posixpath": "os.path", "ntpath": "os.path",
    "__builtin__": "builtins", "__builtins__": "builtins", "exceptions": "builtins",
    "_pickle": "pickle", "cPickle": "pickle", "copy_reg": "copyreg", "_operator": "operator",
    "_functools": "functools", "_io": "io", "_socket": "socket", "_posixsubprocess": "subprocess",
    "commands": "subprocess", "popen2": "subprocess", "urllib2": "urllib.request",
    "httplib": "http.client", "_thread": "threading", "thread": "threading",
    "_codecs": "codecs", "_collections": "collections", "_imp": "importlib",
    "_frozen_importlib": "importlib", "_frozen_importlib_external": "importlib",
    "_ctypes": "ctypes", "_sqlite3": "sqlite3", "_ssl": "ssl", "_signal": "signal",
    "_asyncio": "asyncio", "_multiprocessing": "multiprocessing", "_winapi": "subprocess",
    "numpy.core": "numpy._core",
    # numpy 2 moved numpy.lib.format's code here; the old name re-exports it.
    "numpy.lib._format_impl": "numpy.lib.format",
}


def _k(severity: Severity, category: str, explanation: str) -> Knowledge:
    return Knowledge(severity, category, explanation)


_EXEC = "executes arbitrary Python code"
_PROC = "starts a process or runs a shell command"
_RESOLVE = "resolves an arbitrary name at load time, reaching any function"
_NESTED = "loads another serialized object, whose content this scan cannot vouch for"
_FILE = "reads, writes or deletes files"
_NET = "opens network connections"

_TABLE: dict[str, Knowledge] = {
    # --- code execution ---------------------------------------------------------------------
    "builtins.eval": _k(C, "code-exec", _EXEC),
    "builtins.exec": _k(C, "code-exec", _EXEC),
    "builtins.execfile": _k(C, "code-exec", _EXEC),
    "builtins.compile": _k(C, "code-exec", "compiles code objects for later execution"),
    "builtins.__import__": _k(C, "import", "imports any module"),
    "builtins.getattr": _k(C, "resolver", "fetches any attribute of any object (gadget chains)"),
    "builtins.setattr": _k(C, "resolver", "overwrites attributes of any object"),
    "builtins.delattr": _k(C, "resolver", "deletes attributes of any object"),
    "builtins.globals": _k(C, "resolver", "exposes the loader's global namespace"),
    "builtins.locals": _k(C, "resolver", "exposes a namespace"),
    "builtins.vars": _k(C, "resolver", "exposes a namespace"),
    "builtins.breakpoint": _k(C, "code-exec", "starts a debugger that runs commands"),
    "builtins.input": _k(H, "interactive", "blocks waiting for console input"),
    "builtins.open": _k(H, "file", _FILE),
    "builtins.help": _k(H, "process", "starts the pydoc pager, which can run a process"),
    "builtins.type": _k(H, "class-factory", "creates new classes at load time"),
    "builtins.memoryview": _k(M, "memory", "exposes raw memory of objects"),
    "code": _k(C, "code-exec", _EXEC), "codeop": _k(C, "code-exec", _EXEC),
    "runpy": _k(C, "code-exec", "runs modules or code objects"),
    "timeit": _k(C, "code-exec", "executes statements given as strings"),
    "cProfile": _k(C, "code-exec", "runs code given as strings under the profiler"),
    "profile": _k(C, "code-exec", "runs code given as strings under the profiler"),
    "pdb": _k(C, "code-exec", "runs code under the debugger"),
    "bdb": _k(C, "code-exec", "runs code under the debugger"),
    "trace": _k(C, "code-exec", "runs code under the tracer"),
    "doctest": _k(C, "code-exec", "runs examples as code"),
    "types.FunctionType": _k(C, "code-exec", "builds functions from code objects"),
    "types.CodeType": _k(C, "code-exec", "builds code objects"),
    "types.LambdaType": _k(C, "code-exec", "builds functions from code objects"),
    "types.MethodType": _k(C, "resolver", "binds functions to objects"),
    "types.ModuleType": _k(H, "import", "creates modules"),
    "marshal": _k(C, "code-exec", "deserializes code objects"),
    "ctypes": _k(C, "native", "calls native code and reads or writes raw memory"),
    "cffi": _k(C, "native", "calls native code"),
    "jinja2": _k(C, "code-exec", "compiles templates to Python code"),
    "mako": _k(C, "code-exec", "compiles templates to Python code"),
    "yaml.load": _k(C, "nested-loader", "loads YAML with arbitrary object construction"),
    "yaml.unsafe_load": _k(C, "nested-loader", "loads YAML with arbitrary object construction"),
    "numpy.testing": _k(C, "code-exec", "numpy test utilities (runstring executes code)"),
    "numpy.f2py": _k(C, "process", "compiles and runs Fortran through a subprocess"),
    "numpy.distutils": _k(C, "process", "builds and runs compilers"),
    "numpy.ctypeslib": _k(C, "native", "loads native libraries"),
    "IPython": _k(C, "code-exec", _EXEC),
    "idlelib": _k(C, "code-exec", "IDE internals that run code and processes"),
    "_osx_support": _k(C, "process", _PROC),
    # Subinterpreters run code strings: run_string(create(), "import os; ...").
    "_xxsubinterpreters": _k(C, "code-exec", "runs code strings in a subinterpreter"),
    "_interpreters": _k(C, "code-exec", "runs code strings in a subinterpreter"),
    # CPython's own test helpers (installed with most builds): run_in_subinterp(code),
    # script_helper.assert_python_ok(...) and raw memory access.
    "_testcapi": _k(C, "code-exec", "CPython test internals: run code strings, touch memory"),
    "_testinternalcapi": _k(C, "code-exec", "CPython test internals: run code, touch memory"),
    "test.support": _k(C, "code-exec", "CPython's test helpers: run code strings, processes"),
    "test.libregrtest": _k(C, "code-exec", "CPython's test runner: runs code and processes"),
    "tkinter": _k(H, "code-exec", "a Tcl interpreter: Tcl's exec starts processes"),
    "_tkinter": _k(H, "code-exec", "a Tcl interpreter: Tcl's exec starts processes"),
    "lib2to3": _k(H, "file", "source refactoring that rewrites files"),
    # --- processes --------------------------------------------------------------------------
    "os": _k(C, "process", "operating-system access: processes, files, environment"),
    "subprocess": _k(C, "process", _PROC),
    "pty": _k(C, "process", _PROC),
    "platform.popen": _k(C, "process", _PROC),
    "asyncio.subprocess": _k(C, "process", _PROC),
    "asyncio.create_subprocess_exec": _k(C, "process", _PROC),
    "asyncio.create_subprocess_shell": _k(C, "process", _PROC),
    "asyncio.unix_events": _k(C, "process", _PROC),
    "asyncio": _k(H, "network", "event loop: sockets, subprocesses"),
    "multiprocessing": _k(C, "process", _PROC),
    "concurrent": _k(H, "process", "runs callables in threads or processes"),
    "webbrowser": _k(C, "process", "runs the program named in $BROWSER"),
    "pip": _k(C, "process", "installs packages (runs their setup code)"),
    "setuptools": _k(C, "process", "builds and installs packages"),
    "distutils": _k(C, "process", "builds and installs packages"),
    "ensurepip": _k(C, "process", "installs packages"),
    "venv": _k(C, "process", "creates environments and runs pip"),
    "sys": _k(C, "interpreter", "interpreter internals (modules, hooks, exit)"),
    "signal": _k(H, "interpreter", "installs signal handlers"),
    "atexit": _k(H, "interpreter", "registers code to run at exit"),
    "gc": _k(H, "interpreter", "reaches every live object in the process"),
    "threading": _k(H, "interpreter", "starts threads running callables"),
    "resource": _k(H, "interpreter", "changes process limits"),
    "fcntl": _k(H, "file", "manipulates file descriptors"),
    "mmap": _k(H, "file", "maps files into memory"),
    # --- imports and resolvers --------------------------------------------------------------
    "importlib": _k(C, "import", "imports any module"),
    "imp": _k(C, "import", "imports any module"),
    "zipimport": _k(C, "import", "imports modules from archives"),
    "pkgutil": _k(C, "resolver", _RESOLVE),
    "pydoc": _k(C, "resolver", _RESOLVE),
    "inspect": _k(H, "resolver", "introspects and reaches objects"),
    "site": _k(C, "import", "runs site configuration and .pth files"),
    "operator.attrgetter": _k(C, "resolver", _RESOLVE),
    "operator.itemgetter": _k(H, "resolver", "fetches items of any object"),
    "operator.methodcaller": _k(C, "resolver", "calls any method by name"),
    "operator": _k(H, "resolver", "operator functions used to build gadget chains"),
    "functools.partial": _k(H, "wrapper", "wraps a callable to call it later with stored args"),
    "functools.reduce": _k(H, "wrapper", "calls a function repeatedly"),
    "functools": _k(H, "wrapper", "higher-order function helpers used in gadget chains"),
    "copyreg.add_extension": _k(H, "registry", "changes the extension registry"),
    "copyreg._reconstructor": _k(M, "object-factory", "builds an instance of any class"),
    "copyreg.__newobj__": _k(M, "object-factory", "builds an instance of any class"),
    "copyreg.__newobj_ex__": _k(M, "object-factory", "builds an instance of any class"),
    "builtins.object": _k(M, "object-factory", "base of every class"),
    # --- nested loaders ---------------------------------------------------------------------
    "pickle": _k(C, "nested-loader", _NESTED),
    "dill": _k(C, "nested-loader", _NESTED),
    "cloudpickle": _k(C, "nested-loader", _NESTED),
    "jsonpickle": _k(C, "nested-loader", _NESTED),
    "shelve": _k(C, "nested-loader", _NESTED),
    "joblib.load": _k(C, "nested-loader", _NESTED),
    "joblib.numpy_pickle.load": _k(C, "nested-loader", _NESTED),
    "joblib.numpy_pickle.NumpyArrayWrapper": _k(
        L, "data", "joblib's array record; harmless, but loading any joblib file runs pickle"),
    "joblib": _k(H, "nested-loader", "joblib internals (loaders, parallel execution)"),
    "numpy.load": _k(C, "nested-loader", _NESTED),
    "numpy.lib.npyio": _k(C, "nested-loader", _NESTED),
    "numpy.lib._npyio_impl": _k(C, "nested-loader", _NESTED),
    "numpy.lib.format": _k(C, "nested-loader", _NESTED),
    "numpy.fromfile": _k(H, "file", _FILE),
    "numpy.savez_compressed": _k(H, "file", _FILE),
    "numpy.fromregex": _k(H, "file", _FILE),
    "numpy._core.multiarray.fromfile": _k(H, "file", _FILE),
    "numpy._core.records.fromfile": _k(H, "file", _FILE),
    "numpy._core.memmap": _k(H, "file", _FILE),
    "numpy.lib._datasource": _k(H, "file", "opens, creates and downloads files"),
    "numpy.memmap": _k(H, "file", _FILE),
    "numpy.save": _k(H, "file", _FILE),
    "numpy.savez": _k(H, "file", _FILE),
    "numpy.savetxt": _k(H, "file", _FILE),
    "numpy.loadtxt": _k(H, "file", _FILE),
    "numpy.genfromtxt": _k(H, "file", _FILE),
    "numpy.random._pickle": _k(L, "data", "numpy random-generator state (harmless data)"),
    "numpy.random": _k(L, "data", "numpy random-generator state (harmless data)"),
    "numpy._core._internal": _k(L, "data", "numpy dtype helper"),
    "numpy.dtypes": _k(L, "data", "numpy dtype class"),
    "numpy": _k(M, "unlisted", "numpy name outside array reconstruction"),
    "torch.load": _k(C, "nested-loader", _NESTED),
    "torch.save": _k(H, "file", _FILE),
    "torch.from_file": _k(H, "file", "maps a file, creating or extending it when shared"),
    "torch.compiler": _k(C, "code-exec", "compiler entry points that load and run compiled code"),
    "torch.utils.benchmark": _k(C, "code-exec", "compiles and runs statements given as strings"),
    "torch.utils.data.datapipes": _k(H, "file", "data pipes that open files and URLs"),
    "torch.serialization": _k(C, "nested-loader", "torch's loaders (can disable weights_only)"),
    "torch.jit.load": _k(C, "code-exec", "loads TorchScript, which runs code"),
    "torch.jit.unsupported_tensor_ops": _k(C, "code-exec", "execWrapper runs exec()"),
    "torch.jit._pickle": _k(L, "data", "TorchScript list and type-tag constructors"),
    "torch.jit": _k(H, "code-exec", "TorchScript compiler and loader"),
    "torch.hub": _k(C, "code-exec", "imports and runs a repository's hubconf.py"),
    "torch.package": _k(C, "code-exec", "imports Python modules from archives"),
    "torch.fx": _k(C, "code-exec", "graph modules are rebuilt by executing generated code"),
    "torch._inductor": _k(C, "code-exec", "compiles and loads generated code"),
    "torch._dynamo": _k(C, "code-exec", "compiler internals that run code"),
    "torch.utils.cpp_extension": _k(C, "process", "compiles and loads native extensions"),
    "torch.utils._config_module": _k(H, "interpreter", "changes torch configuration"),
    "torch.multiprocessing": _k(C, "process", _PROC),
    "torch.distributed": _k(H, "network", "distributed runtime: network and RPC"),
    "torch.testing": _k(C, "code-exec", "test internals that run code"),
    "torch.ops": _k(H, "native", "calls registered native operators"),
    "torch.library": _k(H, "native", "registers operators"),
    "torch._C": _k(H, "native", "torch's native internals"),
    "torch.storage._load_from_bytes": _k(C, "nested-loader", "torch.load on embedded bytes"),
    "torch.nn": _k(M, "module-object", "a full module object: its class code runs on load"),
    "torch": _k(M, "unlisted", "torch name outside the weights-only set"),
    # --- files -----------------------------------------------------------------------------
    "io": _k(H, "file", _FILE), "codecs.open": _k(H, "file", _FILE),
    "shutil": _k(H, "file", _FILE), "tempfile": _k(H, "file", _FILE),
    "fileinput": _k(H, "file", _FILE), "glob": _k(M, "file", "lists files"),
    "zipfile": _k(H, "file", _FILE), "tarfile": _k(H, "file", _FILE),
    "dbm": _k(H, "file", _FILE), "sqlite3": _k(H, "file", "opens databases"),
    "mailbox": _k(H, "file", _FILE), "linecache": _k(M, "file", "reads source files"),
    "logging.FileHandler": _k(H, "file", "creates or appends to files"),
    "logging.handlers": _k(H, "network", "logging handlers that write files or send data"),
    "logging.config": _k(C, "code-exec", "listens for and applies configuration (code)"),
    "logging": _k(M, "unlisted", "logging internals"),
    "pathlib": _k(L, "data", "path value; harmless to construct"),
    # --- network ---------------------------------------------------------------------------
    "socket": _k(C, "network", _NET), "ssl": _k(C, "network", _NET),
    "socketserver": _k(C, "network", _NET), "http": _k(C, "network", _NET),
    "urllib": _k(C, "network", _NET), "requests": _k(C, "network", _NET),
    "httpx": _k(C, "network", _NET), "aiohttp": _k(C, "network", _NET),
    "ftplib": _k(C, "network", _NET), "smtplib": _k(C, "network", _NET),
    "poplib": _k(C, "network", _NET), "imaplib": _k(C, "network", _NET),
    "telnetlib": _k(C, "network", _NET), "xmlrpc": _k(C, "network", _NET),
    "select": _k(H, "network", "waits on descriptors"),
    # --- harmless values that are simply not needed for weights ----------------------------
    "argparse.Namespace": _k(L, "data", "attribute bag (fairseq-style configs)"),
    "collections.defaultdict": _k(L, "data", "dict with a default factory"),
    "collections.deque": _k(L, "data", "double-ended queue container"),
    "collections.namedtuple": _k(M, "class-factory", "creates a class at load time"),
    "datetime": _k(L, "data", "date and time values"),
    "decimal.Decimal": _k(L, "data", "decimal number value"),
    "fractions.Fraction": _k(L, "data", "fraction value"),
    "uuid.UUID": _k(L, "data", "UUID value"),
    "enum": _k(L, "data", "enumeration value"),
    "re._compile": _k(L, "data", "compiled regular expression"),
    "builtins.range": _k(L, "data", "range value"),
    "builtins.slice": _k(L, "data", "slice value"),
    "builtins.int": _k(L, "data", "int type"), "builtins.float": _k(L, "data", "float type"),
    "builtins.str": _k(L, "data", "str type"), "builtins.bytes": _k(L, "data", "bytes type"),
    "builtins.list": _k(L, "data", "list type"), "builtins.tuple": _k(L, "data", "tuple type"),
    "builtins.dict": _k(L, "data", "dict type"), "builtins.bool": _k(L, "data", "bool type"),
    "builtins.print": _k(M, "output", "writes to the console"),
    "builtins": _k(M, "builtin", "a builtin outside the allowlist"),
    "__main__": _k(M, "user-class", "a class from the saving program's main script"),
    "__torch__": _k(M, "torchscript-class", "a TorchScript class (resolved by torch.jit.load)"),
}


def canonical(name: str) -> str:
    """The name with module aliases replaced by the module they stand for."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in _MODULE_ALIASES:
            return ".".join([_MODULE_ALIASES[head], *parts[cut:]])
    return name


def lookup(name: str) -> Knowledge | None:
    """The most specific knowledge about ``name`` and about its canonical spelling, the
    worse of the two: a general entry for the written name (``numpy``) must not hide a
    specific one for the module the alias stands for (``numpy.lib.format``)."""
    found: Knowledge | None = None
    for candidate in (name, canonical(name)):
        parts = candidate.split(".")
        for cut in range(len(parts), 0, -1):
            hit = _TABLE.get(".".join(parts[:cut]))
            if hit is not None:
                if found is None or hit.severity.rank > found.severity.rank:
                    found = hit
                break
    return found
