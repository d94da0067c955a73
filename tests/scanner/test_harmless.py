"""Harmless data classes: right in both directions.

Real checkpoints (optimizers, schedulers, GradScaler, Lightning, fairseq, sklearn-style
joblib, numpy) are generated here with the real libraries and must be CLEAN; the
curated classes must be unable to reach code whatever arguments a pickle gives them
(constructed under an audit hook in a throwaway subprocess); defaultdict is harmless only
with a value-type factory; ``strict`` still blocks them; and safehub's own weights-only
load path accepts exactly what the scan let through.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import io
import json
import os
import pathlib
import pickle
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from safehub._hub.safe_globals import torch_safe_globals
from safehub._scanner.harmless import DEFAULTDICT_FACTORIES, HARMLESS
from safehub.findings import FileReport, Verdict
from safehub.rules import Severity
from safehub.scan import ScanOptions, scan_file

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

STRICT = ScanOptions(block_severity=Severity.INFO)


def _scan(data: bytes, options: ScanOptions | None = None) -> FileReport:
    return scan_file(io.BytesIO(data), "ckpt", options=options)


def _tsave(obj: object, **kw: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _trained() -> tuple[Any, list[Any]]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opts = [torch.optim.Adam(model.parameters(), 1e-3), torch.optim.AdamW(model.parameters()),
            torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, nesterov=True),
            torch.optim.RMSprop(model.parameters()), torch.optim.Adagrad(model.parameters())]
    for opt in opts:
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
    return model, opts


def _schedulers() -> list[object]:
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), 0.1)
    sched = torch.optim.lr_scheduler
    return [sched.StepLR(opt, 3), sched.OneCycleLR(opt, 1.0, total_steps=10),
            sched.ReduceLROnPlateau(opt), sched.CosineAnnealingWarmRestarts(opt, 5),
            sched.LambdaLR(opt, lambda e: 0.9), sched.MultiStepLR(opt, [2, 4]),
            sched.ExponentialLR(opt, 0.9), sched.CyclicLR(opt, 0.01, 0.1)]


def _checkpoints() -> dict[str, object]:
    model, opts = _trained()
    scaler = torch.amp.GradScaler("cpu")
    return {
        "optimizers": {type(o).__name__: o.state_dict() for o in opts},
        "schedulers": {type(s).__name__: s.state_dict() for s in _schedulers()},  # type: ignore[attr-defined]
        "grad_scaler": scaler.state_dict(),
        # Lightning's checkpoint layout, with the values its callbacks and loggers store.
        "lightning": {
            "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
            "state_dict": model.state_dict(),
            "optimizer_states": [opts[0].state_dict()],
            "lr_schedulers": [_schedulers()[0].state_dict()],  # type: ignore[attr-defined]
            "callbacks": {"ModelCheckpoint{'monitor': 'val_loss'}": {
                "best_model_score": torch.tensor(0.25),
                "best_model_path": "/runs/epoch=3.ckpt",
                "dirpath": pathlib.Path("/runs"),
                "train_time_interval": datetime.timedelta(hours=1),
                "best_k_models": {"/runs/a.ckpt": torch.tensor(0.3)}}},
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {
                "total": {"ready": 4, "completed": 3}}}},
            "hparams_name": "kwargs",
            "hyper_parameters": {"lr": 1e-3, "data_dir": pathlib.PosixPath("/data"),
                                 "started": datetime.datetime(2024, 5, 1, 12, 0,
                                                              tzinfo=datetime.timezone.utc)},
            "counters": collections.defaultdict(int),
            "buckets": collections.defaultdict(list),
        },
        # Filled defaultdicts: torch's weights-only loader fills only dict, OrderedDict and
        # Counter; safehub's load paths let it fill a defaultdict of a value type.
        "defaultdicts": {"counts": collections.defaultdict(int, {"seen": 7}),
                         "lists": collections.defaultdict(list, {"a": [1]}),
                         "nested": collections.defaultdict(collections.defaultdict)},
        # fairseq's checkpoint layout: the training arguments as an argparse.Namespace.
        "fairseq": {
            "args": argparse.Namespace(arch="transformer", lr=[0.0005], max_tokens=4096,
                                       save_dir=pathlib.PurePosixPath("checkpoints"),
                                       seed=1, fp16=True),
            "model": model.state_dict(),
            "optimizer_history": [{"criterion_name": "CrossEntropyCriterion",
                                   "optimizer_name": "Adam",
                                   "lr_scheduler_state": {"best": 3.2}, "num_updates": 10}],
            "extra_state": {"epoch": 2, "train_iterator": {"epoch": 2, "iterations_in_epoch": 5},
                            "val_loss": 3.2, "previous_training_time": 10.5},
            "last_optimizer_state": opts[0].state_dict(),
        },
        "numpy_values": {"f": np.float64(1.5), "i": np.int64(3), "dt": np.dtype("f4"),
                         "arr": np.arange(6).reshape(2, 3), "rec": np.dtype([("a", "<i4")]),
                         "d64": np.datetime64("2024-01-01"), "b": np.bool_(True)},
        # Hugging Face Trainer's rng_state.pth.
        "rng_state": {"python": random.getstate(),
                      "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
        "dates": {"d": datetime.date(2024, 1, 2), "t": datetime.time(1, 2, 3),
                  "tz": datetime.timezone(datetime.timedelta(hours=2), "X")},
    }


CHECKPOINTS = sorted(_checkpoints())


@pytest.mark.parametrize("name", CHECKPOINTS)
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_real_checkpoint_shapes_are_clean(name: str, zip_format: bool) -> None:
    obj = _checkpoints()[name]
    report = _scan(_tsave(obj, _use_new_zipfile_serialization=zip_format))
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings if f.blocking]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_scan_and_weights_only_load_agree(name: str) -> None:
    """safehub's own load paths hand torch exactly what the scan let through."""
    data = _tsave(_checkpoints()[name])
    report = _scan(data)
    assert report.verdict is Verdict.CLEAN
    with torch.serialization.safe_globals(torch_safe_globals(report)):
        loaded = torch.load(io.BytesIO(data), weights_only=True)
    _same_shape(loaded, _checkpoints()[name])


def _same_shape(loaded: object, saved: object) -> None:
    """Same types all the way down (a defaultdict stays one, with its factory)."""
    assert type(loaded) is type(saved), (type(loaded), type(saved))
    if isinstance(saved, collections.defaultdict):
        assert loaded.default_factory is saved.default_factory  # type: ignore[union-attr]
    if isinstance(saved, dict):
        assert list(loaded) == list(saved)  # type: ignore[call-overload]
        for key, value in saved.items():
            _same_shape(loaded[key], value)  # type: ignore[index]
    elif isinstance(saved, (list, tuple)) and not hasattr(saved, "_fields"):
        assert len(loaded) == len(saved)  # type: ignore[arg-type]
        for a, b in zip(loaded, saved, strict=True):  # type: ignore[call-overload]
            _same_shape(a, b)


def _sh175_shapes() -> list[str]:
    return [n for n in CHECKPOINTS
            if "SH175" in {f.rule_id for f in _scan(_tsave(_checkpoints()[n])).findings}]


def test_every_sh175_shape_loads_through_safehub_load_paths(tmp_path: Path,
                                                            isolated_torch_home: Path) -> None:
    """Every harmless-class checkpoint shape loads through safehub's own load paths, with
    its types kept: torch.load under enforce() (the drop-in path) and
    safehub.load_state_dict_from_url (download, scan, weights-only load)."""
    import safehub
    import safehub.policy
    from tests.fetch.fakehub import FakeHub
    from tests.fetch.helpers import write_policy

    shapes = _sh175_shapes()
    assert {"defaultdicts", "fairseq", "lightning", "dates"} <= set(shapes)
    server = FakeHub("127.0.0.1")
    try:
        policy = safehub.policy.load_policy(write_policy(tmp_path / "p.toml", server))
        for name in shapes:
            saved = _checkpoints()[name]
            path = tmp_path / f"{name}.pt"
            torch.save(saved, path)
            with safehub.enforce("default"):
                _same_shape(torch.load(path), saved)
            url = server.add_file(f"/models/{name}.pt", path.read_bytes())
            _same_shape(safehub.load_state_dict_from_url(url, policy=policy), saved)
    finally:
        server.close()


def test_filled_defaultdict_of_another_factory_is_still_refused_by_torch() -> None:
    """The hook lets torch fill only a defaultdict of a value type: a factory the pickle
    took from another allowed global is refused by torch's own check."""
    data = _tsave({"d": collections.defaultdict(argparse.Namespace, {"a": 1})})
    report = _scan(data)
    assert report.verdict is Verdict.UNSAFE
    allowed = [*torch_safe_globals(_scan(_tsave({"d": collections.defaultdict(
        int, {"a": 1})}))), (argparse.Namespace, "argparse.Namespace")]
    with torch.serialization.safe_globals(allowed), \
            pytest.raises(pickle.UnpicklingError, match="SETITEM"):
        torch.load(io.BytesIO(data), weights_only=True)


def test_harmless_names_are_handed_to_torch_only_when_present() -> None:
    def handed(report: FileReport) -> set[object]:
        return {obj for obj, _ in torch_safe_globals(report)}

    assert not {argparse.Namespace, pathlib.PosixPath} & handed(_scan(_tsave({"w": 1})))
    data = _tsave({"a": argparse.Namespace(x=1)})
    assert argparse.Namespace in handed(_scan(data))
    # Under strict the scan blocks it, and it is not handed to the loader either.
    assert argparse.Namespace not in handed(_scan(data, STRICT))


@pytest.mark.parametrize("name", ["lightning", "fairseq", "dates"])
def test_strict_blocks_harmless_classes(name: str) -> None:
    report = _scan(_tsave(_checkpoints()[name]), STRICT)
    assert report.verdict is Verdict.UNSAFE
    assert {f.rule_id for f in report.findings if f.blocking} == {"SH175"}


def test_sklearn_style_joblib_dump_is_clean(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "model.joblib"
    joblib.dump({"coef_": np.ones((3, 4)), "intercept_": np.zeros(3),
                 "classes_": np.array(["a", "b", "c"]), "n_features_in_": 4,
                 "feature_names_in_": np.array(["w", "x", "y", "z"], dtype=object)}, path)
    with open(path, "rb") as fh:
        report = scan_file(fh, "model.joblib")
    assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]
    assert "joblib.numpy_pickle.NumpyArrayWrapper" in {f.subject for f in report.findings}


def test_numpy_object_array_of_harmless_values_is_clean(tmp_path: Path) -> None:
    path = tmp_path / "meta.npy"
    np.save(path, np.array([{"when": datetime.date(2024, 1, 1), "n": 3}], dtype=object))
    with open(path, "rb") as fh:
        assert scan_file(fh, "meta.npy").verdict is Verdict.CLEAN


# --- defaultdict: harmless only with a value-type factory ------------------------------------


class _Reduce:
    def __init__(self, func: object, args: tuple[object, ...], state: object = None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self) -> tuple[object, ...]:
        return (self.func, self.args) if self.state is None else (self.func, self.args,
                                                                   self.state)


@pytest.mark.parametrize("factory", sorted(DEFAULTDICT_FACTORIES))
def test_defaultdict_with_value_factory_is_clean(factory: str) -> None:
    module, _, attr = factory.rpartition(".")
    cls = getattr(__import__(module), attr)
    d = collections.defaultdict(cls, {"k": cls()})
    for proto in (2, 4):
        report = _scan(pickle.dumps(d, proto))
        assert report.verdict is Verdict.CLEAN, [f.message for f in report.findings]


@pytest.mark.parametrize("bad", [
    pytest.param(_Reduce(collections.defaultdict, (pathlib.PurePosixPath,)), id="other-class"),
    pytest.param(_Reduce(collections.defaultdict, (argparse.Namespace,)), id="namespace"),
    pytest.param(_Reduce(collections.defaultdict, (int, {"a": 1}, 3)), id="extra-args"),
    # BUILD's slot state sets default_factory after construction (setattr).
    pytest.param(_Reduce(collections.defaultdict, (int,),
                         (None, {"default_factory": pathlib.PurePosixPath})), id="build-state"),
])
def test_defaultdict_with_other_factory_is_unsafe(bad: _Reduce) -> None:
    data = pickle.dumps(bad, 2)
    try:
        loaded = pickle.loads(data)
    except TypeError:
        loaded = None  # too many arguments: refused by defaultdict itself
    if isinstance(loaded, collections.defaultdict):
        assert loaded.default_factory not in (int, None)  # the factory really is installed
    report = _scan(data)
    assert report.verdict is Verdict.UNSAFE
    assert "collections.defaultdict" in {f.subject for f in report.findings if f.blocking}


# --- construction cannot reach code ----------------------------------------------------------

_CONSTRUCT = r"""
import importlib, json, pickle, sys

names = json.loads(sys.argv[1])
import codecs
codecs.lookup("latin1"); codecs.lookup("utf-8")  # how protocol 2 writes bytes: loaded first

class R:
    def __init__(self, f, a, st=None):
        self.f, self.a, self.st = f, a, st
    def __reduce__(self):
        return (self.f, self.a) if self.st is None else (self.f, self.a, self.st)

ARGS = [(), ("touch marker",), ("/etc/passwd",), ("marker",), (b"\x00" * 10,), (1, 2, 3),
        ({"a": 1},), ([1, "x"],), (None,), ("x", "y", "z"), ("a", 1.5), (10 ** 30,),
        (b"\x07\xe8\x01\x01\x00\x00\x00\x00\x00\x00",), ("touch marker", "utf-8"),
        (b"touch marker", "latin1")]
STATES = [None, {"default_factory": None, "x": "touch marker"}, (None, {"x": 1}),
          ({"a": 1}, {"b": 2}), (None, {"__class__": None})]
blobs = {}
resolved = []
for name in names:
    module, _, attr = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        continue  # another Python's spelling (pathlib._local before 3.13)
    resolved.append(name)
    blobs[name] = [pickle.dumps(R(cls, a, st), p) for a in ARGS for st in STATES
                   for p in (2, 4)]

events = []
sys.addaudithook(lambda ev, args: events.append(ev))
for name, items in blobs.items():
    for data in items:
        try:
            obj = pickle.loads(data)
            repr(obj); str(obj); hash(obj) if obj.__hash__ else None
        except Exception:
            pass
print(json.dumps({"resolved": resolved, "events": sorted(set(events))}))
"""


def test_harmless_classes_cannot_reach_code(tmp_path: Path) -> None:
    """Every curated class, called with hostile arguments and BUILD states a pickle can build,
    runs nothing that Python audits (no import, open, exec, process, socket, file system)."""
    proc = subprocess.run([sys.executable, "-c", _CONSTRUCT, json.dumps(sorted(HARMLESS))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    out = json.loads(proc.stdout)
    assert out["events"] == ["pickle.find_class"], out["events"]
    assert os.listdir(tmp_path) == []  # no marker, no file created
    unresolved = set(HARMLESS) - set(out["resolved"])
    assert all(n.startswith("pathlib._local.") for n in unresolved) or sys.version_info >= (
        3, 13), unresolved


def test_every_harmless_name_is_a_real_class_somewhere() -> None:
    """No typo'd entries: each resolves in this Python, or is the other spelling of one that
    does (pathlib's classes live in pathlib._local from Python 3.13)."""
    import importlib

    for name in HARMLESS:
        alias = name.replace("pathlib._local.", "pathlib.")
        for candidate in (name, alias):
            mod, _, at = candidate.rpartition(".")
            try:
                getattr(importlib.import_module(mod), at)
                break
            except (ImportError, AttributeError):
                continue
        else:
            pytest.fail(f"{name} does not resolve")


def test_enforced_torch_load_accepts_harmless_classes_and_strict_refuses(tmp_path: Path) -> None:
    """The real load path: torch.load under safehub.enforce() scans, then loads weights-only
    with the harmless names the file uses."""
    import safehub
    from safehub.errors import PolicyViolation

    ckpt = tmp_path / "fairseq.pt"
    torch.save(_checkpoints()["fairseq"], ckpt)
    with safehub.enforce("default"):
        loaded = torch.load(ckpt)
    assert loaded["args"].arch == "transformer"
    assert loaded["args"].save_dir == pathlib.PurePosixPath("checkpoints")
    with safehub.enforce("strict"), pytest.raises(PolicyViolation, match=r"argparse\.Namespace"):
        torch.load(ckpt)


def test_convert_child_uses_the_scanner_value_factories() -> None:
    from safehub._convert.entry import VALUE_FACTORIES
    from safehub._hub.safe_globals import resolve_global

    resolved = {pair[0] for pair in map(resolve_global, DEFAULTDICT_FACTORIES) if pair}
    assert set(VALUE_FACTORIES) == resolved


@pytest.mark.slow
def test_convert_loads_a_filled_defaultdict(tmp_path: Path) -> None:
    """safehub convert (torch's weights-only loader in the sandbox) accepts what the scan
    passed: a filled defaultdict of a value type."""
    from safehub.convert import convert

    src = tmp_path / "dd.pt"
    torch.save({"w": torch.ones(2), "counts": collections.defaultdict(int, {"seen": 7})}, src)
    result = convert(src)
    meta = json.loads(result.metadata.read_text()) if result.metadata else {}
    assert meta["structure"]["counts"] == {"seen": 7}
