"""Unpicklers a program made before ``enforce()``: subclasses of the C ``pickle.Unpickler``
(``class AppUnpickler(pickle.Unpickler)`` executed at import binds the C type), and
pure-Python ones whose own opcodes call a mixin's ``find_class``.

The C unpickler's BUILD and NEWOBJ_EX cannot be intercepted: such a subclass took
``torch.Tensor.__new__(torch.Tensor, cdata=N)`` (a crash) and BUILD on an allowed class
under enforcement. Each hostile load runs in a subprocess, first without safehub (the
payload fires), then under ``enforce()`` called after the classes were defined.
"""

from __future__ import annotations

import _pickle
import collections
import io
import pickle
from pathlib import Path

import numpy
import pytest

import safehub
from safehub.errors import SafehubError
from tests.enforce.test_bypasses import (
    _ALLOCATOR,
    _CDATA,
    _MUTATION,
    _binunicode,
    _guarded,
    _run,
    _short,
)

# The unpicklers, defined before enforcement as a library would at import.
_CLASSES = """
import importlib, io, pickle, sys, collections, torch
class AppUnpickler(pickle.Unpickler):
    pass
class Mixin:
    def find_class(self, module, name):
        return super().find_class(module, name)
class MixUnpickler(Mixin, pickle.Unpickler):
    def __init__(self, f, tag):
        self.tag = tag
        super().__init__(f, encoding="latin1")
class Deeper(AppUnpickler):
    def load(self):
        return super().load()
StockUnpickler = pickle.Unpickler  # bound at import, as dill binds it
class DillLike(StockUnpickler):
    def __init__(self, *args, **kwargs):
        StockUnpickler.__init__(self, *args, **kwargs)
    def load(self):
        return StockUnpickler.load(self)  # the C load itself
"""

_STYLES = {
    "plain_subclass": "AppUnpickler(io.BytesIO(D)).load()",
    "mixin_and_init": "MixUnpickler(io.BytesIO(D), 'x').load()",
    "subclass_of_subclass": "Deeper(io.BytesIO(D)).load()",
    # find_class set on the instance: the C opcodes call it, unchecked
    "instance_find_class": "u = AppUnpickler(io.BytesIO(D))\n"
                           "u.find_class = lambda m, n: getattr(importlib.import_module(m), n)\n"
                           "u.load()",
    # the C load reached through names bound before enforce(): it gets no global at all
    "c_load_by_name": "DillLike(io.BytesIO(D)).load()",
    "c_load_by_name_instance_find_class":
        "u = DillLike(io.BytesIO(D))\n"
        "u.find_class = lambda m, n: getattr(importlib.import_module(m), n)\nu.load()",
}

# torch.Tensor(cdata=N) through GLOBAL and a protocol-2 header (the C unpickler takes
# NEWOBJ_EX whatever the header says), next to _CDATA's protocol-4 STACK_GLOBAL.
_CDATA_GLOBAL = b"\x80\x02ctorch\nTensor\n)}" + _short("cdata") + b"\x8a\x05AAAAAs\x92."
_PAYLOADS = {"_CDATA": _CDATA, "_CDATA_GLOBAL": _CDATA_GLOBAL, "_ALLOCATOR": _ALLOCATOR}


def _system(marker: Path) -> bytes:
    return b"\x80\x02cos\nsystem\n" + _binunicode(f"touch {marker}") + b"\x85R."


def _program(payload: bytes, style: str, *, enforce: bool) -> str:
    return (_CLASSES + f"D = {payload!r}\n"
            + ("import safehub\nsafehub.enforce()\n" if enforce else "")
            + "print('LOADING', flush=True)\n" + _guarded(_STYLES[style])
            + "\nprint('MUTATED', hasattr(collections.Counter, 'safehub_pwnd'))\n")


@pytest.mark.parametrize(("payload", "style"), [
    ("_CDATA", "plain_subclass"), ("_CDATA_GLOBAL", "mixin_and_init"),
    ("_ALLOCATOR", "subclass_of_subclass"), ("_CDATA", "instance_find_class"),
    ("_CDATA", "c_load_by_name"), ("_CDATA_GLOBAL", "c_load_by_name_instance_find_class")])
def test_raw_addresses_through_a_c_unpickler_subclass_are_refused(
        tmp_path: Path, payload: str, style: str) -> None:
    data = _PAYLOADS[payload]
    plain = _run(_program(data, style, enforce=False), tmp_path, site=False)
    assert plain.stdout.startswith("LOADING"), (plain.stdout, plain.stderr)
    assert plain.returncode < 0, (plain.stdout, plain.stderr)  # the address was used

    enforced = _run(_program(data, style, enforce=True), tmp_path, site=False)
    assert "REFUSED UnsafeModel" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert ("SH122" if "c_load" in style else "SH108") in enforced.stdout
    assert enforced.returncode == 0


@pytest.mark.parametrize("style", ["plain_subclass", "mixin_and_init", "c_load_by_name"])
def test_build_on_an_allowed_class_through_a_c_unpickler_subclass_is_refused(
        tmp_path: Path, style: str) -> None:
    plain = _run(_program(_MUTATION, style, enforce=False), tmp_path, site=False)
    assert "MUTATED True" in plain.stdout, (plain.stdout, plain.stderr)

    enforced = _run(_program(_MUTATION, style, enforce=True), tmp_path, site=False)
    assert "REFUSED UnsafeModel" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert "MUTATED False" in enforced.stdout


def test_find_class_set_on_a_c_unpickler_instance_is_checked(tmp_path: Path,
                                                              marker_dir: Path) -> None:
    marker = marker_dir / "fired"
    program = _program(_system(marker), "instance_find_class", enforce=False)
    plain = _run(program, tmp_path, site=False)
    assert marker.exists(), (plain.stdout, plain.stderr)
    marker.unlink()

    enforced = _run(_program(_system(marker), "instance_find_class", enforce=True),
                    tmp_path, site=False)
    assert "REFUSED UnsafeModel" in enforced.stdout and "SH122" in enforced.stdout, (
        enforced.stdout, enforced.stderr)
    assert not marker.exists()


_TAGGED = '''
import torch


class Tagged(torch.Tensor):
    """A tensor subclass a library defines: its __new__ is torch's (cdata= included)."""
'''


@pytest.mark.parametrize("entry", ["pickle.loads(D)", "AppUnpickler(io.BytesIO(D)).load()"])
def test_raw_addresses_for_an_allowed_tensor_subclass_are_refused(tmp_path: Path,
                                                                  entry: str) -> None:
    # A policy allowing a library's tensor subclass allowed Tagged(cdata=N): the check
    # named torch's own classes only.
    (tmp_path / "mytensors.py").write_text(_TAGGED)
    policy = tmp_path / "tagged.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
                      '[scanner]\nallowed_globals = ["mytensors.Tagged"]\n')
    data = (b"\x80\x04" + _short("mytensors") + _short("Tagged") + b"\x93)}" + _short("cdata")
            + b"\x8a\x05AAAAAs\x92.")
    head = (f"import sys\nsys.path.insert(0, {str(tmp_path)!r})\nimport mytensors\n"
            + _CLASSES + f"D = {data!r}\n")
    tail = "print('LOADING', flush=True)\n" + _guarded(entry)
    plain = _run(head + tail, tmp_path, site=False)
    assert plain.stdout.startswith("LOADING") and plain.returncode < 0, (plain.stdout,
                                                                         plain.stderr)
    enforce = f"import safehub\nsafehub.enforce({str(policy)!r})\n"
    enforced = _run(head + enforce + tail, tmp_path, site=False)
    assert "REFUSED UnsafeModel" in enforced.stdout and "a torch.Tensor" in enforced.stdout, (
        enforced.stdout, enforced.stderr)


def test_copyreg_newobj_ex_allowed_by_a_policy_gets_the_keyword_check(tmp_path: Path) -> None:
    # copyreg.__newobj_ex__(cls, args, kwargs) is NEWOBJ_EX as a function: a policy that
    # allowed it let REDUCE do torch.Tensor.__new__(torch.Tensor, cdata=N).
    policy = tmp_path / "copyreg.toml"
    policy.write_text('schema = 1\nextends = "default"\nloosen = ["scanner.allowed_globals"]\n'
                      '[scanner]\nallowed_globals = ["copyreg.__newobj_ex__"]\n')
    data = (b"\x80\x04" + _short("copyreg") + _short("__newobj_ex__") + b"\x93" + _short("torch")
            + _short("Tensor") + b"\x93)}" + _short("cdata") + b"\x8a\x05AAAAAs\x87R.")
    tail = f"D = {data!r}\nprint('LOADING', flush=True)\n" + _guarded("pickle.loads(D)")
    plain = _run("import pickle, torch\n" + tail, tmp_path, site=False)
    assert plain.stdout.startswith("LOADING") and plain.returncode < 0, (plain.stdout,
                                                                         plain.stderr)
    enforced = _run(f"import pickle, torch, safehub\nsafehub.enforce({str(policy)!r})\n" + tail,
                    tmp_path, site=False)
    assert "REFUSED UnsafeModel" in enforced.stdout and "SH108" in enforced.stdout, (
        enforced.stdout, enforced.stderr)


# --- legitimate loads through unpicklers made before enforce() --------------------------

class AppUnpickler(pickle.Unpickler):
    pass


class _Mixin:
    def find_class(self, module: str, name: str) -> object:
        return super().find_class(module, name)  # type: ignore[misc]


class MixUnpickler(_Mixin, pickle.Unpickler):
    def __init__(self, f: io.BytesIO, tag: str):
        self.tag = tag
        super().__init__(f, encoding="latin1")


StockUnpickler = pickle.Unpickler


class DillLike(StockUnpickler):
    def load(self) -> object:
        return StockUnpickler.load(self)


class PersistentUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: object) -> object:
        return ("external", pid)


class _Persistent(pickle.Pickler):
    def persistent_id(self, obj: object) -> object:
        return "ID" if obj == "outside" else None


def test_c_unpickler_subclasses_made_before_enforce_still_load_plain_data() -> None:
    arrays = pickle.dumps({"a": numpy.arange(4), "od": collections.OrderedDict(k=1)},
                          protocol=2)
    stream = io.BytesIO()
    pickle.dump([1, 2], stream, protocol=5)
    pickle.dump(numpy.arange(3), stream, protocol=5)
    external = io.BytesIO()
    _Persistent(external, protocol=2).dump(["outside", 1])
    made_before = AppUnpickler(io.BytesIO(arrays))
    with safehub.enforce():
        loaded = MixUnpickler(io.BytesIO(arrays), "tag").load()
        assert loaded["a"].tolist() == [0, 1, 2, 3] and loaded["od"] == {"k": 1}
        # a Python 2 str under the subclass's own encoding
        assert MixUnpickler(io.BytesIO(b"\x80\x02U\x02\xe9\xe9."), "tag").load() == "\xe9\xe9"
        stream.seek(0)
        twice = AppUnpickler(stream)  # successive pickles from one stream
        assert twice.load() == [1, 2] and twice.load().tolist() == [0, 1, 2]
        external.seek(0)
        assert PersistentUnpickler(external).load() == [("external", "ID"), 1]
        # the C load by name: plain data only
        assert DillLike(io.BytesIO(pickle.dumps({"k": [1, 2.0, "s"]}))).load() == {
            "k": [1, 2.0, "s"]}
        with pytest.raises(SafehubError, match="own load"):
            DillLike(io.BytesIO(arrays)).load()
        # made before enforce(): its arguments were never seen, so it cannot load (fail closed)
        with pytest.raises(SafehubError, match="made before enforce"):
            made_before.load()
    # enforcement left: the C type is the base again, and the C load reads
    assert AppUnpickler.__bases__ == (_pickle.Unpickler,)
    assert AppUnpickler(io.BytesIO(arrays)).load()["a"].tolist() == [0, 1, 2, 3]


# --- 4. a pure-Python unpickler whose own GLOBAL calls a mixin's find_class -------------

_OWN_GLOBAL = """
import io, pickle
class Resolver:
    def find_class(self, module, name):
        return getattr(__import__(module), name)
class OwnGlobal(Resolver, pickle._Unpickler):
    dispatch = dict(pickle._Unpickler.dispatch)
    def load_global(self):
        module = self.readline()[:-1].decode()
        name = self.readline()[:-1].decode()
        self.append(self.find_class(module, name))
    dispatch[pickle.GLOBAL[0]] = load_global
"""


@pytest.mark.parametrize("order", ["defined_before", "defined_after"])
def test_own_global_opcode_calling_a_mixin_find_class_is_checked(
        tmp_path: Path, marker_dir: Path, order: str) -> None:
    marker = marker_dir / "fired"
    load = f"D = {_system(marker)!r}\n" + _guarded("OwnGlobal(io.BytesIO(D)).load()")
    plain = _run(_OWN_GLOBAL + load, tmp_path, site=False)
    assert marker.exists(), (plain.stdout, plain.stderr)
    marker.unlink()

    enforce = "import safehub\nsafehub.enforce()\n"
    program = (_OWN_GLOBAL + enforce if order == "defined_before" else enforce + _OWN_GLOBAL)
    enforced = _run(program + load, tmp_path, site=False)
    assert "REFUSED UnsafeModel" in enforced.stdout, (enforced.stdout, enforced.stderr)
    assert not marker.exists()
