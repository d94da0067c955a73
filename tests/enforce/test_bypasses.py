"""Regression tests for the bypasses of issue 12, each with the reviewer's real payload.

Every payload is first shown firing in a plain Python process (its marker file appears),
then refused under the shipped sitecustomize.py and/or in-process ``safehub.enforce()``.
"""

from __future__ import annotations

import collections
import os
import pickle
import pickletools
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

import safehub
from safehub.errors import SafehubError
from tests.enforce.payloads import _torchscript

_ROOT = Path(__file__).resolve().parents[2]
_SITE = _ROOT / "examples" / "sitecustomize.py"


def _run(program: str, tmp_path: Path, *, site: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SAFEHUB_POLICY", "PYTHONPATH")}
    env["TORCH_HOME"] = str(tmp_path / "torch")
    # The checkout under test, not whichever safehub the interpreter has installed.
    env["PYTHONPATH"] = str(_ROOT)
    if site:
        folder = tmp_path / "site"
        folder.mkdir(exist_ok=True)
        (folder / "sitecustomize.py").write_text(_SITE.read_text())
        env["PYTHONPATH"] = os.pathsep.join([str(folder), str(_ROOT)])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(program)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=tmp_path)


_GUARDED = """
try:
{body}
except BaseException as exc:
    print("REFUSED", type(exc).__name__, str(exc)[:300])
else:
    print("LOADED")
"""


def _guarded(body: str) -> str:
    return _GUARDED.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "))

def _plain_and_under_dcp_policy(program: str, tmp_path: Path
                                ) -> tuple[subprocess.CompletedProcess[str],
                                           subprocess.CompletedProcess[str]]:
    """``program`` run plainly, then under ``enforce()`` of the documented dcp policy."""
    policy = tmp_path / "dcp.toml"
    policy.write_text(_DCP_POLICY)
    plain = _run(program, tmp_path, site=False)
    enforced = _run(f"import safehub\nsafehub.enforce({str(policy)!r})\n" + program,
                    tmp_path, site=False)
    return plain, enforced


# --- 1. the torch import hook survives lookups of torch ---------------------------------

_SPELLINGS = {
    "find_spec": "import importlib.util\nassert importlib.util.find_spec('torch')\n"
                 "import torch",
    "find_spec_twice_import_module": "import importlib, importlib.util\n"
                                     "importlib.util.find_spec('torch')\n"
                                     "importlib.util.find_spec('torch')\n"
                                     "torch = importlib.import_module('torch')",
    "dunder_import": "import importlib.util\nimportlib.util.find_spec('torch')\n"
                     "torch = __import__('torch')",
    "submodule_first": "import importlib.util\nimportlib.util.find_spec('torch')\n"
                       "import torch.jit._serialization\n"
                       "from torch.jit._serialization import load\n"
                       "import torch",
}


def _import_then_load(spelling: str, path: Path, prefix: str) -> str:
    # torch.jit.load: only the torch patches stop it (pickle's restrictions do not).
    bind = "LOAD = load" if spelling == "submodule_first" else "LOAD = torch.jit.load"
    return (prefix + "\n" + _SPELLINGS[spelling] + "\n" + bind + "\n"
            + _guarded(f"LOAD({str(path)!r})"))


@pytest.fixture(scope="module")
def torchscript(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A TorchScript archive whose __setstate__ creates the marker file at load."""
    folder = tmp_path_factory.mktemp("ts")
    marker = folder / "fired"
    path = folder / "evil.pt"
    _torchscript(path, marker)
    return path, marker


def test_torchscript_payload_fires_without_safehub(tmp_path: Path,
                                                   torchscript: tuple[Path, Path]) -> None:
    path, marker = torchscript
    marker.unlink(missing_ok=True)
    out = _run(_import_then_load("find_spec", path, ""), tmp_path, site=False)
    assert "LOADED" in out.stdout, out.stderr
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("spelling", sorted(_SPELLINGS))
def test_probing_for_torch_before_importing_it_keeps_enforcement(
        tmp_path: Path, torchscript: tuple[Path, Path], spelling: str) -> None:
    path, marker = torchscript
    marker.unlink(missing_ok=True)
    program = _import_then_load(spelling, path, "import safehub\nsafehub.enforce()")
    out = _run(program, tmp_path, site=False)
    assert "REFUSED PolicyViolation" in out.stdout, (out.stdout, out.stderr)
    assert not marker.exists()


def test_probing_for_torch_under_sitecustomize_keeps_every_patch(
        tmp_path: Path, marker_dir: Path, torchscript: tuple[Path, Path]) -> None:
    path, marker = torchscript
    marker.unlink(missing_ok=True)
    program = _import_then_load("find_spec", path, "") + textwrap.dedent("""
        import torch.hub, torch.jit, torch.package
        print("PATCHED", torch.hub.load.__code__.co_filename,
              torch.jit.load.__code__.co_filename,
              torch.package.PackageImporter.__init__.__module__)
    """)
    out = _run(program, tmp_path, site=True)
    assert "REFUSED PolicyViolation" in out.stdout, (out.stdout, out.stderr)
    assert not marker.exists()
    assert ("PATCHED <safehub enforce: torch.hub.load> <safehub enforce: torch.jit.load> "
            "safehub.enforce") in out.stdout


_WARM_UP_THREAD = """
import importlib.abc, sys, threading, time
import safehub

started = threading.Event()


class Pause(importlib.abc.MetaPathFinder):
    # Scaffolding that makes the race certain: the warm-up thread's import of torch stops
    # halfway until enforce() has put its import hook in place.
    def find_spec(self, name, path, target=None):
        if name == "torch.serialization" and threading.current_thread().name == "warmup":
            started.set()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not any(
                    type(f).__name__ == "_TorchImportHook" for f in sys.meta_path):
                time.sleep(0.01)
        return None


sys.meta_path.insert(0, Pause())
warmup = threading.Thread(target=lambda: __import__("torch"), name="warmup")
warmup.start()
started.wait()
enforcement = safehub.enforce()
warmup.join()
import torch
print("WAITING", enforcement.waiting_for_torch)
"""


def test_enforce_while_another_thread_imports_torch_patches_torch(
        tmp_path: Path, torchscript: tuple[Path, Path]) -> None:
    """torch's spec was found before the hook existed: the patches waited for some later
    import, and torch.jit.load ran the archive's __setstate__ under enforce()."""
    path, marker = torchscript
    marker.unlink(missing_ok=True)
    out = _run(_WARM_UP_THREAD + _guarded(f"torch.jit.load({str(path)!r})"), tmp_path,
               site=False)
    assert "WAITING False" in out.stdout, (out.stdout, out.stderr)
    assert "REFUSED PolicyViolation" in out.stdout, (out.stdout, out.stderr)
    assert not marker.exists()


# --- 2. TorchScript lite/flatbuffer loaders and AOTInductor packages --------------------

_BUILD_SCRIPT = '''
import sys
from typing import Tuple
import torch

class Writer(torch.nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.n = 0

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.target = state[0]
        self.training = state[1]
        self.n = torch.from_file(self.target, shared=True, size=1).numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

m = torch.jit.script(Writer(sys.argv[3]))
if sys.argv[1] == "lite":
    m._save_for_lite_interpreter(sys.argv[2])
else:
    from torch.jit._serialization import save_jit_module_to_flatbuffer
    save_jit_module_to_flatbuffer(m, sys.argv[2])
'''


def _scripted(kind: str, path: Path, marker: Path) -> Path:
    script = path.with_suffix(".build.py")
    script.write_text(_BUILD_SCRIPT)
    subprocess.run([sys.executable, str(script), kind, str(path), str(marker)], check=True,
                   capture_output=True, timeout=300)
    return path


_SCRIPT_LOADS = [
    ("lite", "import torch.jit.mobile; torch.jit.mobile._load_for_lite_interpreter(P)"),
    ("lite", "from torch.jit.mobile import _load_for_lite_interpreter as L; L(open(P, 'rb'))"),
    ("flatbuffer", "import torch; torch.jit.jit_module_from_flatbuffer(P)"),
    ("flatbuffer", "from torch.jit._serialization import jit_module_from_flatbuffer as J; J(P)"),
    # The bytecode backports load the archive as TorchScript to rewrite it.
    ("lite", "import torch.jit.mobile; torch.jit.mobile._backport_for_mobile(P, P + '.v5', 5)"),
    ("lite", "from torch.jit.mobile import _backport_for_mobile_to_buffer as B; "
             "B(open(P, 'rb'), 5)"),
    # A route enforcement does not wrap ends in torch._C's reader, which refuses.
    ("lite", "import torch; torch._C._backport_for_mobile_to_buffer(P, 5)"),
]


@pytest.mark.parametrize(("kind", "load"), _SCRIPT_LOADS)
def test_lite_and_flatbuffer_torchscript_are_refused(tmp_path: Path, marker_dir: Path,
                                                     kind: str, load: str) -> None:
    marker = marker_dir / "fired"
    path = _scripted(kind, tmp_path / f"evil.{kind}", marker)
    # Bound before enforcement, as a program importing it at the top would.
    program = f"P = {str(path)!r}\n" + load.split(";")[0] + "\n" + _guarded(load)
    plain = _run(program, tmp_path, site=False)
    assert "LOADED" in plain.stdout, plain.stderr
    assert marker.exists()
    marker.unlink()

    enforced = _run(program, tmp_path, site=True)
    assert "REFUSED PolicyViolation" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert not marker.exists()

    with safehub.enforce():
        namespace: dict[str, object] = {"P": str(path)}
        with pytest.raises(SafehubError):
            exec(load, namespace)  # the program's own load line
    assert not marker.exists()


_AOTI_C = r"""
#include <stdio.h>
__attribute__((constructor)) static void fire(void) {
    FILE *f = fopen(MARKER, "w");
    if (f) { fputs("native code ran\n", f); fclose(f); }
}
"""


def _aoti_library(tmp_path: Path, marker: Path) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed to build the AOTInductor payload's shared library")
    source = tmp_path / "evil.c"
    source.write_text(_AOTI_C)
    lib = tmp_path / "evil.so"
    subprocess.run([gcc, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(lib),
                    str(source)], check=True, capture_output=True, timeout=120)
    return lib


def _aoti_package(path: Path, lib: Path, version: str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("evil/archive_format", "pt2")
        z.writestr("evil/version", version)
        if version == "1":
            z.writestr("evil/archive_version", "0")
        z.write(lib, "evil/data/aotinductor/model/model.wrapper.so")
        z.writestr("evil/data/aotinductor/model/model.wrapper.cpp", "")
        z.writestr("evil/data/aotinductor/model/model.wrapper_metadata.json",
                   '{"AOTI_DEVICE_KEY": "cpu"}')
    return path


_AOTI_LOADS = {
    "aoti_load_package": ("0", "import torch._inductor; torch._inductor.aoti_load_package(P)"),
    "export_load": ("1", "import torch; torch.export.load(P)"),
    "aot_load_so": ("", "import torch._export; torch._export.aot_load(SO, 'cpu')"),
}


@pytest.mark.parametrize("spelling", sorted(_AOTI_LOADS))
def test_aotinductor_native_code_is_never_loaded(tmp_path: Path, marker_dir: Path,
                                                 spelling: str) -> None:
    marker = marker_dir / "fired"
    lib = _aoti_library(tmp_path, marker)
    version, load = _AOTI_LOADS[spelling]
    pt2 = _aoti_package(tmp_path / "evil.pt2", lib, version or "1")
    program = f"P = {str(pt2)!r}\nSO = {str(lib)!r}\n" + _guarded(load)
    plain = _run(program, tmp_path, site=False)
    assert marker.exists(), (plain.stdout, plain.stderr)  # the library was mapped
    marker.unlink()

    enforced = _run(program, tmp_path, site=True)
    assert "REFUSED PolicyViolation" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert not marker.exists()


def test_aotinductor_is_refused_in_process_even_when_torchscript_is_allowed(
        tmp_path: Path, marker_dir: Path) -> None:
    marker = marker_dir / "fired"
    pt2 = _aoti_package(tmp_path / "evil.pt2", _aoti_library(tmp_path, marker), "0")
    policy = tmp_path / "ts.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allow_torchscript"]\n'
                      "[scanner]\nallow_torchscript = true\n")
    import torch._inductor

    with safehub.enforce(policy), pytest.raises(SafehubError, match="native code"):
        torch._inductor.aoti_load_package(str(pt2))
    assert not marker.exists()


def _exported_program(path: Path, marker: Path) -> Path:
    """A real torch.export archive whose symbolic shape expressions create ``marker``."""
    import json

    class Double(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    batch = torch.export.Dim("b", min=2, max=100)
    program = torch.export.export(Double(), (torch.ones(4, 3),),
                                  dynamic_shapes={"x": {0: batch}})
    clean = path.with_suffix(".clean.pt2")
    torch.export.save(program, str(clean))
    payload = ("sympify.__globals__['__builtins__']['exec']"
               f"('open(\"{marker}\", \"w\").close()')")

    def poison(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr_str":
                    node[key] = payload
                else:
                    poison(value)
        elif isinstance(node, list):
            for value in node:
                poison(value)

    with zipfile.ZipFile(clean) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("models/model.json"):
                tree = json.loads(data)
                poison(tree)
                data = json.dumps(tree).encode()
            zout.writestr(info.filename, data)
    return path


_EXPORT_LOADS = [
    "import torch; torch.export.load(P)",
    "import torch._inductor; torch._inductor.aoti_load_package(P)",
    "from torch.export.pt2_archive._package import load_pt2; load_pt2(P)",
]


@pytest.mark.parametrize("load", _EXPORT_LOADS)
def test_an_exported_program_is_refused_before_its_expressions_are_evaluated(
        tmp_path: Path, marker_dir: Path, load: str) -> None:
    """torch.export's deserializer evals the file's shape expressions (sympy.sympify): the
    archive ran its code under enforce(), and the scanner does not read it."""
    marker = marker_dir / "fired"
    path = _exported_program(tmp_path / "evil.pt2", marker)
    program = f"P = {str(path)!r}\n" + _guarded(load)
    plain = _run(program, tmp_path, site=False)
    assert marker.exists(), (plain.stdout, plain.stderr)
    marker.unlink()

    # The deserializer's module is imported by the load, after enforcement began.
    enforced = _run(program, tmp_path, site=True)
    assert "REFUSED PolicyViolation" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "ExportedProgram" in enforced.stdout
    assert not marker.exists()

    # And when it was imported before.
    import torch._export.serde.serialize  # noqa: F401

    with safehub.enforce(), pytest.raises(SafehubError, match="ExportedProgram"):
        exec(load, {"P": str(path)})
    assert not marker.exists()


# --- 3. wildcard allowances and BUILD on classes or functions ---------------------------

def _binunicode(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _dcp_dataclass_pickle(marker: Path) -> bytes:
    """The reviewer's dcp metadata: Counter.__annotations__ set by BUILD to names that
    inject code into the source dataclass() execs, then dataclass(Counter) through the
    name ``torch.distributed.checkpoint.metadata.dataclass`` (an import there)."""
    expr = f'open({str(marker)!r},"w").write("code ran")'
    n1, n2 = "x:" + expr + " or'''", "y:'''"
    return (b"\x80\x02ccollections\nCounter\nq\x00"
            b"N}" + _binunicode("__annotations__") + b"}(" + _binunicode(n1) + b"K\x01"
            + _binunicode(n2) + b"K\x01u" + b"s\x86b0"
            b"ctorch.distributed.checkpoint.metadata\ndataclass\nh\x00\x85R.")


def _wildcard_only_dataclass_pickle(marker: Path) -> bytes:
    """Reaches ``dataclasses.dataclass`` through the wildcard alone (no BUILD)."""
    return (b"\x80\x02ctorch.distributed.checkpoint.metadata\ndataclass\n"
            b"ccollections\nCounter\n\x85R.")


_DCP_POLICY = ('schema = 1\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
               '[scanner]\nallowed_globals = ["torch.distributed.checkpoint.metadata.*", '
               '"torch.distributed.checkpoint.filesystem._StorageInfo", "pathlib.PosixPath"]\n')


def test_dcp_metadata_cannot_reach_imports_through_a_wildcard(tmp_path: Path,
                                                              marker_dir: Path) -> None:
    marker = marker_dir / "fired"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / ".metadata").write_bytes(_dcp_dataclass_pickle(marker))
    load = _guarded(f"""
        import warnings, torch, torch.distributed.checkpoint as dcp
        warnings.simplefilter("ignore")
        dcp.load({{"w": torch.zeros(2)}}, checkpoint_id={str(ckpt)!r})
    """)
    policy = tmp_path / "dcp.toml"
    policy.write_text(_DCP_POLICY)
    plain = _run(load, tmp_path, site=False)
    assert marker.exists(), (plain.stdout, plain.stderr)
    marker.unlink()

    enforced = _run(f"import safehub\nsafehub.enforce({str(policy)!r})\n" + load, tmp_path,
                    site=False)
    assert "REFUSED" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert not marker.exists()

    import dataclasses

    with safehub.enforce(policy):
        with pytest.raises(SafehubError, match="does not define"):
            pickle.loads(_wildcard_only_dataclass_pickle(marker))
        with pytest.raises(SafehubError):
            pickle.loads(_dcp_dataclass_pickle(marker))
    assert not marker.exists()
    assert "__annotations__" not in vars(collections.Counter)
    assert dataclasses.dataclass.__module__ == "dataclasses"


_MUTATION = (b"\x80\x02ccollections\nCounter\n"
             b"N}" + _binunicode("safehub_pwnd") + b"K\x01s\x86b"
             b"0ctorch._utils\n_rebuild_tensor_v2\nN}" + _binunicode("__defaults__")
             + b"(K\x07t\x85s\x86b.")


@pytest.mark.parametrize("entry", ["pickle.loads(D)", "pickle._loads(D)",
                                   "pickle.Unpickler(io.BytesIO(D)).load()",
                                   "numpy.load(io.BytesIO(D), allow_pickle=True)"])
def test_build_on_an_allowed_class_or_function_is_refused(tmp_path: Path, entry: str) -> None:
    program = (f"import io, pickle, numpy, collections, torch\nD = {_MUTATION!r}\n"
               + _guarded(entry) + "\nprint('MUTATED', hasattr(collections.Counter, "
               "'safehub_pwnd'), torch._utils._rebuild_tensor_v2.__defaults__ == ((7,),))\n")
    plain = _run(program, tmp_path, site=False)
    assert "MUTATED True True" in plain.stdout, (plain.stdout, plain.stderr)

    enforced = _run(program, tmp_path, site=True)
    assert "REFUSED" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "MUTATED False False" in enforced.stdout

    defaults = torch._utils._rebuild_tensor_v2.__defaults__
    with safehub.enforce(), pytest.raises((SafehubError, pickle.UnpicklingError)):
        pickle.loads(_MUTATION)
    assert not hasattr(collections.Counter, "safehub_pwnd")
    assert torch._utils._rebuild_tensor_v2.__defaults__ == defaults


@pytest.mark.parametrize("order", ["joblib_first", "enforce_first"])
def test_build_through_joblib_is_refused(tmp_path: Path, order: str) -> None:
    # joblib's NumpyUnpickler copies the pure unpickler's dispatch table and its BUILD calls
    # pickle._Unpickler.load_build(self) directly: a patch of the class's table alone
    # missed both, whether joblib was imported before enforce() or after.
    path = tmp_path / "mutation.pkl"
    path.write_bytes(_MUTATION)
    setup = "import collections, torch\n" + (
        "import joblib\nimport safehub\nsafehub.enforce()\n" if order == "joblib_first"
        else "import safehub\nsafehub.enforce()\nimport joblib\n")
    check = ("\nprint('MUTATED', hasattr(collections.Counter, 'safehub_pwnd'), "
             "torch._utils._rebuild_tensor_v2.__defaults__ == ((7,),))\n")
    load = _guarded(f"joblib.load({str(path)!r})")
    plain = _run("import collections, torch, joblib\n" + load + check, tmp_path, site=False)
    assert "MUTATED True True" in plain.stdout, (plain.stdout, plain.stderr)

    enforced = _run(setup + load + check, tmp_path, site=False)
    assert "REFUSED UnsafeModel" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "MUTATED False False" in enforced.stdout
    under_site = _run("import collections, torch, joblib\n" + load + check, tmp_path,
                      site=True)
    assert "REFUSED UnsafeModel" in under_site.stdout, (under_site.stdout, under_site.stderr)
    assert "MUTATED False False" in under_site.stdout


def _short(text: str) -> bytes:
    data = text.encode()
    return b"\x8c" + bytes([len(data)]) + data


_MD = "torch.distributed.checkpoint.metadata"


def _namespace_pickle(attribute: str) -> bytes:
    """Protocol 4: STACK_GLOBAL ``metadata.<attribute>`` (the builtins dict, or the
    module's own namespace), then SETITEMS on it: ``len`` becomes a dataclass and the
    module gains a global."""
    return (b"\x80\x04" + _short(_MD) + _short(attribute) + b"\x93("
            + _short("len") + _short(_MD) + _short("Metadata") + b"\x93"
            + _short("safehub_pwnd") + b"\x88u.")


@pytest.mark.parametrize("attribute", ["__builtins__", "__dict__"])
def test_a_wildcard_does_not_reach_a_namespace_to_change_in_place(
        tmp_path: Path, attribute: str) -> None:
    # The documented dcp allowance names metadata.*; __builtins__ and __dict__ are
    # attributes of that module, neither a class nor a function it defines.
    data = _namespace_pickle(attribute)
    owner = "builtins" if attribute == "__builtins__" else _MD
    program = (f"import builtins, pickle, torch, {_MD}\n" + _guarded(f"pickle.loads({data!r})")
               + f"\nprint('MUTATED', getattr({owner}, 'len', None) is {_MD}.Metadata, "
               f"getattr({owner}, 'safehub_pwnd', False))\n")
    plain, enforced = _plain_and_under_dcp_policy(program, tmp_path)
    assert "MUTATED True True" in plain.stdout, (plain.stdout, plain.stderr)

    assert "REFUSED UnsafeModel" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "MUTATED False False" in enforced.stdout


def _loads_then_show_the_enum_member(data: bytes, entry: str = "pickle.loads(D)") -> str:
    """A program that unpickles ``data`` (as ``D``) with ``entry``, then prints whether
    dcp's process-wide memory-format enum member was renamed and renumbered."""
    return (f"import io, joblib, pickle, torch, {_MD} as md\nD = {data!r}\n" + _guarded(entry)
            + "\nm = md._MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT\n"
            "print('MUTATED', m.name == 'PWNED', m.value == 7)\n")


def test_build_on_an_enum_member_is_refused(tmp_path: Path) -> None:
    # Calling an allowed enum class returns its process-wide member; BUILD then renamed
    # and renumbered it for everyone (dcp's own memory-format encoding, under the
    # documented dcp allowance). Enums pickle without state: no real pickle does this.
    data = (b"\x80\x04" + _short(_MD) + _short("_MEM_FORMAT_ENCODING") + b"\x93K\x00\x85R}"
            + _short("_value_") + b"K\x07s" + _short("_name_") + _short("PWNED") + b"sb.")
    program = _loads_then_show_the_enum_member(data)
    plain, enforced = _plain_and_under_dcp_policy(program, tmp_path)
    assert "MUTATED True True" in plain.stdout, (plain.stdout, plain.stderr)

    assert "REFUSED UnsafeModel" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "enum member" in enforced.stdout
    assert "MUTATED False False" in enforced.stdout


# The pure-Python unpickler (pickle._loads, joblib.load) resolves names through the
# replaced pickle._Unpickler.find_class: it got torch's own _rebuild_from_type_v2, unchecked.
@pytest.mark.parametrize("entry", ["pickle.loads(D)", "pickle._loads(D)",
                                   "joblib.load(io.BytesIO(D))"])
def test_torch_rebuild_from_type_cannot_set_state_on_an_enum_member(tmp_path: Path,
                                                                     entry: str) -> None:
    # torch._tensor._rebuild_from_type_v2 (allowed: tensor subclasses) is torch's own BUILD:
    # it calls func(*args) and setattr's the state on the result. With the allowed enum
    # class as func it renamed and renumbered the process-wide member, past BUILD's check.
    data = (b"\x80\x04" + _short("torch._tensor") + _short("_rebuild_from_type_v2") + b"\x93("
            + _short(_MD) + _short("_MEM_FORMAT_ENCODING") + b"\x93\x94h\x00K\x00\x85}"
            + _short("_value_") + b"K\x07s" + _short("_name_") + _short("PWNED") + b"stR.")
    program = _loads_then_show_the_enum_member(data, entry)
    plain, enforced = _plain_and_under_dcp_policy(program, tmp_path)
    assert "MUTATED True True" in plain.stdout, (plain.stdout, plain.stderr)
    assert "REFUSED UnsafeModel" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "SH105" in enforced.stdout and "MUTATED False False" in enforced.stdout
    path = tmp_path / "enum.pkl"
    path.write_bytes(data)
    scan = subprocess.run([sys.executable, "-m", "safehub", "scan", "--policy",
                           str(tmp_path / "dcp.toml"), str(path)], capture_output=True,
                          text=True, timeout=300, check=False,
                          env={**os.environ, "PYTHONPATH": str(_ROOT)})
    assert scan.returncode == 1 and "SH105" in scan.stdout, (scan.stdout, scan.stderr)


def test_torch_rebuild_from_type_still_rebuilds_tensors(tmp_path: Path) -> None:
    program = ("import torch, safehub\nt = torch.ones(2); t.meta = 'x'\n"
               "torch.save({'t': t}, 'w.pt')\nsafehub.enforce('default')\n"
               "print('META', torch.load('w.pt')['t'].meta)\n")
    run = _run(program, tmp_path, site=False)
    assert "META x" in run.stdout, (run.stdout, run.stderr)


def _checkpoint_with_pickle(path: Path, data_pkl: bytes) -> Path:
    """A torch.save zip whose data.pkl is replaced by ``data_pkl``."""
    plain = path.with_suffix(".orig")
    torch.save({"w": torch.ones(1)}, plain)
    with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = src.read(info)
            dst.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else body)
    return path


def test_torch_load_gets_no_wildcard_import_from_the_policy(tmp_path: Path) -> None:
    # torch.load hands torch's loader only the names the scan saw allowed; the wildcard
    # import is not among them, so the weights-only loader refuses it (a regression guard).
    # dataclass(Counter) rewrites Counter process-wide: the observable effect.
    ckpt = _checkpoint_with_pickle(tmp_path / "ckpt.pt", _wildcard_only_dataclass_pickle(
        tmp_path / "unused"))
    program = ("import collections, torch\n" + _guarded(
        f"torch.load({str(ckpt)!r}, weights_only=False)")
        + "\nprint('MUTATED', '__dataclass_fields__' in vars(collections.Counter))\n")
    plain, enforced = _plain_and_under_dcp_policy(program, tmp_path)
    assert "MUTATED True" in plain.stdout, (plain.stdout, plain.stderr)

    assert "REFUSED" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "MUTATED False" in enforced.stdout


# A 2x2 CSR tensor whose row pointers say 10**8 values where there is one, made only of
# allowed names (the legacy constructors, torch's layout lookup, its sparse rebuild).
_SPARSE_CSR = (b"\x80\x02ctorch._utils\n_rebuild_sparse_tensor\nctorch.serialization\n"
               b"_get_layout\n" + _binunicode("torch.sparse_csr") + b"\x85R(ctorch\nLongTensor"
               b"\n]q\x00(K\x00J\x00\xe1\xf5\x05J\x00\xe1\xf5\x05e\x85Rctorch\nLongTensor\n]"
               b"K\x00a\x85Rctorch\nFloatTensor\n]G?\xf0\x00\x00\x00\x00\x00\x00a\x85RK\x02K"
               b"\x02\x86t\x86R.")
# A 4x4 COO tensor with an index of 10**8, from the legacy sparse constructor
# torch.sparse.FloatTensor(indices, values, size).
_SPARSE_LEGACY = (b"\x80\x02ctorch.sparse\nFloatTensor\nctorch\nLongTensor\n](](K\x00J\x00"
                  b"\xe1\xf5\x05e](K\x00J\x00\xe1\xf5\x05ee\x85Rctorch\nFloatTensor\n](G?\xf0"
                  b"\x00\x00\x00\x00\x00\x00G@\x00\x00\x00\x00\x00\x00\x00e\x85RK\x04K\x04\x86"
                  b"\x87R.")

# A 4x4 BSR tensor whose blocks are 1x0: torch's own validation passes it, and to_dense()
# divides by the block width (SIGFPE). to_sparse_bsr never makes an empty block.
_SPARSE_BSR_EMPTY_BLOCKS = (
    b"\x80\x02ctorch._utils\n_rebuild_sparse_tensor\nctorch.serialization\n_get_layout\n"
    + _binunicode("torch.sparse_bsr") + b"\x85R(ctorch\nLongTensor\n](K\x00K\x01K\x02K\x02"
    b"K\x02e\x85Rctorch\nLongTensor\n](K\x00K\x01e\x85Rctorch\nFloatTensor\n](]]a]]ae"
    b"\x85RK\x04K\x04\x86t\x86R.")


@pytest.mark.parametrize(("payload", "entry"), [
    ("_SPARSE_BSR_EMPTY_BLOCKS", "pickle.loads(D)"),
    ("_SPARSE_BSR_EMPTY_BLOCKS", "torch.load(P, weights_only=False)"),
    ("_SPARSE_CSR", "pickle.loads(D)"), ("_SPARSE_CSR", "pickle._loads(D)"),
    ("_SPARSE_CSR", "torch.load(P, weights_only=False)"),
    ("_SPARSE_LEGACY", "pickle.loads(D)"), ("_SPARSE_LEGACY", "joblib.load(io.BytesIO(D))"),
    ("_SPARSE_LEGACY", "torch.load(P)")])
def test_sparse_tensor_with_unchecked_indices_is_refused(tmp_path: Path, payload: str,
                                                        entry: str) -> None:
    # torch builds it unchecked and checks it afterwards only under
    # torch.sparse.check_sparse_tensor_invariants (off by default; weights_only loads the
    # legacy constructor too): its first use reads and writes outside its data. The scanner
    # and the restricted unpickler (every pure-Python one included) refuse it.
    data = globals()[payload]
    _checkpoint_with_pickle(tmp_path / "w.pt", data)
    program = ("import io, joblib, pickle, warnings, torch\nwarnings.simplefilter('ignore')\n"
               f"D = {data!r}\nP = 'w.pt'\n"
               + _guarded(f"t = {entry}\nt = t if isinstance(t, torch.Tensor) else t['w']\n"
                          "print('LOADED', flush=True)\n"
                          "(t.coalesce() if t.layout == torch.sparse_coo else t).to_dense()"))
    plain = _run(program, tmp_path, site=False)
    assert plain.stdout.startswith("LOADED"), (plain.stdout, plain.stderr)
    assert plain.returncode < 0, (plain.stdout, plain.stderr)  # the process crashed

    enforced = _run(program, tmp_path, site=True)
    # pickle: the restricted unpickler (UnsafeModel); torch.load: the scan (PolicyViolation)
    assert "REFUSED" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "SH108" in enforced.stdout and enforced.returncode == 0


# NEWOBJ_EX: torch.Tensor.__new__(torch.Tensor, cdata=0x4141414141), the tensor at that
# address adopted; UntypedStorage(8, allocator=0x4141414141), its allocator called there.
_CDATA = b"\x80\x04" + _short("torch") + _short("Tensor") + b"\x93)}" + _short(
    "cdata") + b"\x8a\x05AAAAAs\x92."
_ALLOCATOR = b"\x80\x04" + _short("torch.storage") + _short("UntypedStorage") + (
    b"\x93K\x08\x85}") + _short("allocator") + b"\x8a\x05AAAAAs\x92."


@pytest.mark.parametrize(("payload", "entry"), [
    ("_CDATA", "pickle.loads(D)"), ("_CDATA", "joblib.load(io.BytesIO(D))"),
    ("_ALLOCATOR", "pickle._loads(D)"), ("_ALLOCATOR", "torch.load(P, weights_only=False)")])
def test_raw_addresses_for_torch_constructors_are_refused(tmp_path: Path, payload: str,
                                                          entry: str) -> None:
    data = globals()[payload]
    _checkpoint_with_pickle(tmp_path / "w.pt", data)
    program = (f"import io, joblib, pickle, torch\nD = {data!r}\nP = 'w.pt'\n"
               "print('LOADING', flush=True)\n" + _guarded(entry))
    plain = _run(program, tmp_path, site=False)
    assert plain.stdout.startswith("LOADING"), (plain.stdout, plain.stderr)
    assert plain.returncode < 0, (plain.stdout, plain.stderr)  # the address was used

    enforced = _run(program, tmp_path, site=True)
    assert "REFUSED" in enforced.stdout and "SH108" in enforced.stdout, (
        enforced.stdout, enforced.stderr)


# The same CSR tensor with valid row pointers ([0, 1, 1]): torch's validation passes.
_SPARSE_CSR_VALID = _SPARSE_CSR.replace(b"J\x00\xe1\xf5\x05J\x00\xe1\xf5\x05e",
                                        b"K\x01K\x01e")


def _write_after_rebuild(data: bytes) -> bytes:
    """``crow[1] = 10**8`` by SETITEM on the row pointer tensor once the sparse tensor is
    built from it: the pickle's last REDUCE, then GET of the first LongTensor's memo."""
    ops = list(pickletools.genops(data))
    first = next(i for i, (op, arg, _) in enumerate(ops)
                 if op.name == "GLOBAL" and arg == "torch LongTensor")
    reduce_at = next(i for i in range(first, len(ops)) if ops[i][0].name == "REDUCE")
    crow = data[:ops[reduce_at][2] + 1] + b"q\x07" + data[ops[reduce_at][2] + 1:]
    at = crow.rindex(b"R.") + 1
    return crow[:at] + b"h\x07K\x01J\x00\xe1\xf5\x05s0" + crow[at:]


@pytest.mark.parametrize(("payload", "entry"), [
    ("_SPARSE_CSR_VALID", "pickle.loads(D)"), ("_SPARSE_CSR_VALID", "pickle._loads(D)"),
    ("_SPARSE_CSR_WRITTEN", "pickle.loads(D)"), ("_SPARSE_CSR_WRITTEN", "pickle._loads(D)")])
def test_a_valid_sparse_tensor_loads_and_leaves_nothing_queued(
        tmp_path: Path, payload: str, entry: str) -> None:
    # enforce() builds it, validates it with torch's own check, and takes it off torch's
    # process-wide queue (a plain pickle load never empties it). A write into the row
    # pointers after the rebuild (SETITEM on the memoized index tensor) crashes a plain
    # load's first to_dense(); under enforce() the tensor was built from a copy.
    data = (_write_after_rebuild(_SPARSE_CSR_VALID) if payload == "_SPARSE_CSR_WRITTEN"
            else _SPARSE_CSR_VALID)
    program = ("import io, pickle, warnings, torch\nwarnings.simplefilter('ignore')\n"
               f"D = {data!r}\n"
               + _guarded(f"t = {entry}\nprint('BUILT', flush=True)\nt.to_dense()")
               + "\nprint('QUEUED', len(torch._utils._sparse_tensors_to_validate))\n")
    enforced = _run(program, tmp_path, site=True)
    assert "LOADED" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "QUEUED 0" in enforced.stdout, (enforced.stdout, enforced.stderr)
    if payload == "_SPARSE_CSR_WRITTEN":
        plain = _run(program, tmp_path, site=False)
        assert plain.stdout.startswith("BUILT") and plain.returncode < 0, (
            plain.stdout, plain.stderr)


def test_a_valid_sparse_checkpoint_loads_under_enforce(tmp_path: Path) -> None:
    # The scan passes torch.save's sparse tensors (their index records checked), and the
    # load then validates each with torch's own check.
    tensors = {"coo": torch.eye(3).to_sparse(), "csr": torch.eye(3).to_sparse_csr(),
               "bsc": torch.eye(4).to_sparse_bsc((2, 2))}
    torch.save(tensors, tmp_path / "sparse.pt")
    # torch's end-of-load validation is watched: under enforce() it runs with the sparse
    # invariant checks on (a second check after every opcode ran), then they are off again
    program = ("import warnings, torch\nwarnings.simplefilter('ignore')\n"
               "validate = torch._utils._validate_loaded_sparse_tensors\n"
               "def watched():\n"
               "    print('VALIDATES', torch.sparse.check_sparse_tensor_invariants.is_enabled(),"
               " len(torch._utils._sparse_tensors_to_validate))\n"
               "    validate()\n"
               "torch._utils._validate_loaded_sparse_tensors = watched\n" + _guarded(
                   "t = torch.load('sparse.pt')\nassert all(v.to_dense().equal(torch.eye("
                   "len(v))) for v in t.values())")
               + "\nprint('AFTER', torch.sparse.check_sparse_tensor_invariants.is_enabled())\n")
    enforced = _run(program, tmp_path, site=True)
    assert "LOADED" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "VALIDATES True 3" in enforced.stdout and "AFTER False" in enforced.stdout, (
        enforced.stdout, enforced.stderr)


class _Reduce:
    def __init__(self, func: object, args: tuple[object, ...]):
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


def _nested_pickle(width: int) -> bytes:
    """A nested tensor whose sizes row is ``width`` wide and whose strides row is one wide,
    its tensors from the legacy constructors (allowed names only)."""
    return pickle.dumps(_Reduce(torch._utils._rebuild_nested_tensor, (
        _Reduce(torch.FloatTensor, ([0.0] * 8,)), _Reduce(torch.LongTensor, ([[2] * width],)),
        _Reduce(torch.LongTensor, ([[1]],)), _Reduce(torch.LongTensor, ([0],)))), protocol=2)


@pytest.mark.parametrize("entry", ["pickle.loads(D)", "pickle._loads(D)"])
def test_nested_metadata_read_past_its_end_is_refused(tmp_path: Path, entry: str) -> None:
    # torch reads the strides as wide as sizes before comparing their shapes: the heap past
    # the strides tensor shows up in its error (a crash when far enough). enforce() checks
    # the shapes first.
    data = _nested_pickle(64)
    program = ("import io, pickle, re, warnings, torch\nwarnings.simplefilter('ignore')\n"
               f"D = {data!r}\n" + _guarded(f"{entry}")
               + "\n")
    plain = _run(program, tmp_path, site=False)
    assert "REFUSED RuntimeError" in plain.stdout and "strides" in plain.stdout, (
        plain.stdout, plain.stderr)
    enforced = _run(program, tmp_path, site=True)
    assert "REFUSED UnsafeModel SH108" in enforced.stdout, (enforced.stdout, enforced.stderr)
    valid = _run(program.replace(repr(data), repr(_nested_pickle(1))), tmp_path, site=True)
    assert "LOADED" in valid.stdout, (valid.stdout, valid.stderr)


def _csr_values_shrunk_after_rebuild() -> bytes:
    """A valid 3x3 CSR tensor (three values) from allowed names, then BUILD on its values
    tensor with the legacy state (FloatStorage([1.0]), 0, (1,), (1,)): Tensor.__setstate__
    calls set_, and the CSR tensor holds that very tensor."""
    values = _Reduce(torch.FloatTensor, ([1.0, 2.0, 3.0],))
    data = pickle.dumps(_Reduce(torch._utils._rebuild_sparse_tensor, (
        _Reduce(torch.serialization._get_layout, ("torch.sparse_csr",)),
        (_Reduce(torch.LongTensor, ([0, 1, 2, 3],)), _Reduce(torch.LongTensor, ([0, 1, 2],)),
         values, (3, 3)))), protocol=2)
    ops = list(pickletools.genops(data))
    first = next(i for i, (op, arg, _) in enumerate(ops)
                 if op.name == "GLOBAL" and arg == "torch FloatTensor")
    memo = next(ops[i + 1][1] for i in range(first, len(ops)) if ops[i][0].name == "REDUCE")
    state = (b"(ctorch\nFloatStorage\n]G?\xf0\x00\x00\x00\x00\x00\x00a\x85R"
             b"K\x00K\x01\x85K\x01\x85t")
    return data[:-1] + b"h" + bytes([memo]) + state + b"b0."


@pytest.mark.parametrize("entry", ["pickle.loads(D)", "pickle._loads(D)"])
def test_a_build_on_the_values_does_not_reach_the_sparse_tensor(tmp_path: Path,
                                                                 entry: str) -> None:
    data = _csr_values_shrunk_after_rebuild()
    program = ("import io, pickle, warnings, torch\nwarnings.simplefilter('ignore')\n"
               f"D = {data!r}\n" + _guarded(
                   f"t = {entry}\nprint('VALUES', tuple(t.values().shape), flush=True)\n"
                   "torch._validate_sparse_compressed_tensor_args(t.crow_indices(), "
                   "t.col_indices(), t.values(), t.size(), t.layout)"))
    plain = _run(program, tmp_path, site=False)
    # the loaded tensor's values shrank under its row pointers: torch's own check fails
    assert "VALUES (1,)" in plain.stdout and "REFUSED RuntimeError" in plain.stdout, (
        plain.stdout, plain.stderr)
    enforced = _run(program, tmp_path, site=True)
    assert "VALUES (3,)" in enforced.stdout and "LOADED" in enforced.stdout, (
        enforced.stdout, enforced.stderr)
