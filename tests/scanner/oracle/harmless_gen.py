"""Realistic harmless checkpoints, made with the real libraries, and the loaders that judge them.

Each case is the bytes a user's ordinary ``torch.save`` / ``numpy.save`` / ``joblib.dump`` /
``pickle.dump`` writes, with the loader a user would load it with. :func:`oracle_accepts`
asks that loader, restricted as its safe mode is (``torch.load(weights_only=True)`` with no
extra globals, ``numpy.load(allow_pickle=False)``, torch's weights-only unpickler for plain
pickles), whether it loads the file: a file it accepts must scan CLEAN.

``quick`` keeps one file per object shape (the fast subset the tests run); the full set
crosses every object with every pickle protocol and both torch formats.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Case", "cases", "oracle_accepts"]


@dataclass(frozen=True)
class Case:
    name: str
    loader: str  # torch | numpy | pickle | joblib | safetensors | torchscript
    data: bytes


def _t(dtype: torch.dtype, shape: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    base = torch.arange(int(np.prod(shape)) if shape else 1, dtype=torch.float32)
    base = base.reshape(shape) if shape else base.reshape(())
    if dtype.is_complex:
        return torch.complex(base, -base).to(dtype)
    if dtype in (torch.uint16, torch.uint32, torch.uint64):
        return torch.tensor(base.to(torch.int64).tolist(), dtype=dtype)
    return base.to(dtype)


_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64,
           torch.complex128, torch.complex32, torch.bool, torch.uint8, torch.int8, torch.int16,
           torch.int32, torch.int64, torch.uint16, torch.uint32, torch.uint64,
           torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
           torch.float8_e8m0fnu]


def _quantized() -> dict[str, Any]:
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    return {
        "per_tensor_quint8": torch.quantize_per_tensor(x, 0.1, 3, torch.quint8),
        "per_tensor_qint8": torch.quantize_per_tensor(x, 0.05, 0, torch.qint8),
        "per_tensor_qint32": torch.quantize_per_tensor(x, 0.01, 0, torch.qint32),
        "per_tensor_quint4x2": torch.quantize_per_tensor(x, 0.5, 1, torch.quint4x2),
        "per_channel": torch.quantize_per_channel(x, torch.tensor([0.1, 0.2, 0.3, 0.4]),
                                                  torch.tensor([0, 1, 2, 3]), 0, torch.quint8),
        "per_channel_float_qparams": torch.quantize_per_channel(
            x, torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0.0, 1.0, 2.0, 3.0]), 0,
            torch.quint8),
    }


def _views() -> dict[str, Any]:
    base = torch.arange(24.0).reshape(4, 6)
    p = torch.nn.Parameter(torch.ones(3))
    p2 = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    tagged = torch.ones(2)
    tagged.note = "kept"  # an attribute: saved through _rebuild_from_type_v2's state
    p3 = torch.nn.Parameter(torch.zeros(2))
    p3.tag = 1
    return {
        "shared": {"base": base, "row": base[1], "col": base[:, 2], "t": base.t(),
                   "offset": base.view(-1)[5:], "strided": base[::2, ::3]},
        "empty": {"e0": torch.empty(0), "e2": torch.empty(0, 3), "scalar": torch.tensor(3.5),
                  "scalar_int": torch.tensor(7), "empty_bool": torch.empty(0, dtype=torch.bool)},
        "channels_last": torch.ones(1, 3, 4, 4).to(memory_format=torch.channels_last),
        "channels_last_3d": torch.ones(1, 2, 2, 2, 2).to(memory_format=torch.channels_last_3d),
        "expanded": torch.ones(3, 1).expand(3, 4),
        "parameters": {"p": p, "frozen": p2, "p_attr": p3},
        "tensor_attr": tagged,
        "requires_grad": torch.ones(2, requires_grad=True),
        "meta": torch.empty(3, 4, device="meta"),
        "neg_conj": {"conj": torch.tensor([1 + 2j]).conj(), "neg": torch.tensor([1.0])._neg_view()},
    }


def _values() -> dict[str, Any]:
    return {
        "size": torch.Size([2, 3]),
        "devices": [torch.device("cpu"), torch.device("cuda", 0), torch.device("meta"),
                    torch.device("cuda")],
        "dtypes": [*_DTYPES, torch.qint8, torch.quint8, torch.qint32, torch.quint4x2],
        "qschemes": [torch.per_tensor_affine, torch.per_channel_affine,
                     torch.per_tensor_symmetric],
        "containers": collections.OrderedDict(
            a={"l": [1, 2.5, None, True, "s", b"b", b"", bytearray(b"x"), 3 + 4j],
               "t": (1, (2, (3,))), "set": {1, 2}, "fs": frozenset({"a"}),
               "big": 2 ** 100, "neg": -(2 ** 70), "inf": float("inf"), "nan": float("nan"),
               "unicode": "é\u2603\U0001f600", "empty": ((), [], {}, set(), "")},
            b=collections.Counter("abca")),
        "python_rng": random.Random(1).getstate(),
        "torch_rng": torch.random.get_rng_state(),
        "generator_state": torch.Generator().manual_seed(3).get_state(),
    }


def _modules() -> dict[str, Any]:
    nn = torch.nn
    layers: dict[str, Any] = {
        "linear": nn.Linear(3, 2), "bilinear": nn.Bilinear(2, 2, 3),
        "conv1d": nn.Conv1d(2, 3, 3), "conv2d": nn.Conv2d(2, 3, 3, groups=1),
        "conv3d": nn.Conv3d(1, 2, 2), "convt2d": nn.ConvTranspose2d(2, 2, 3),
        "bn": nn.BatchNorm2d(3), "ln": nn.LayerNorm(4), "gn": nn.GroupNorm(2, 4),
        "in": nn.InstanceNorm1d(3, affine=True, track_running_stats=True),
        "emb": nn.Embedding(5, 3, padding_idx=0), "embbag": nn.EmbeddingBag(5, 3),
        "lstm": nn.LSTM(3, 4, 2, bidirectional=True, proj_size=2), "gru": nn.GRU(3, 4),
        "rnn": nn.RNN(3, 4), "mha": nn.MultiheadAttention(4, 2, kdim=3, vdim=3),
        "transformer": nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16), 1),
        "prelu": nn.PReLU(3), "rmsnorm": nn.RMSNorm(4),
        "weight_norm": nn.utils.parametrizations.weight_norm(nn.Linear(3, 2)),
        "spectral_norm": nn.utils.spectral_norm(nn.Linear(3, 2)),
        "orthogonal": nn.utils.parametrizations.orthogonal(nn.Linear(3, 3)),
    }
    out = {name: m.state_dict() for name, m in layers.items()}
    out["keep_vars"] = nn.Linear(2, 2).state_dict(keep_vars=True)
    out["half_model"] = nn.Linear(2, 2).half().state_dict()
    out["bf16_model"] = nn.Linear(2, 2).to(torch.bfloat16).state_dict()
    ao = torch.ao.nn
    out["quantized_linear"] = ao.quantized.Linear(3, 2).state_dict()
    out["quantized_conv"] = ao.quantized.Conv2d(2, 2, 3).state_dict()
    out["dynamic_lstm"] = ao.quantized.dynamic.LSTM(3, 4).state_dict()
    out["dynamic_linear"] = ao.quantized.dynamic.Linear(3, 2).state_dict()
    qat = torch.ao.quantization
    model = nn.Sequential(nn.Linear(3, 2))
    model.qconfig = qat.get_default_qat_qconfig("fbgemm")
    model.train()
    out["qat_prepared"] = qat.prepare_qat(model).state_dict()
    swa = torch.optim.swa_utils.AveragedModel(nn.Linear(2, 2))
    out["swa_model"] = swa.state_dict()
    return out


def _optimizers() -> dict[str, Any]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    params = list(model.parameters())
    optim = torch.optim
    opts = {
        "adam_amsgrad": optim.Adam(params, amsgrad=True), "adamw": optim.AdamW(params),
        "adam_tensor_lr": optim.Adam(params, lr=torch.tensor(0.01)),
        "adamax": optim.Adamax(params), "nadam": optim.NAdam(params, decoupled_weight_decay=True),
        "radam": optim.RAdam(params), "asgd": optim.ASGD(params), "rprop": optim.Rprop(params),
        "adadelta": optim.Adadelta(params), "adagrad": optim.Adagrad(params),
        "rmsprop": optim.RMSprop(params, centered=True, momentum=0.5),
        "sgd": optim.SGD(params, 0.1, momentum=0.9, nesterov=True),
        "lbfgs": optim.LBFGS(params),
        "groups": optim.SGD([{"params": params[:2], "lr": 0.2}, {"params": params[2:]}], 0.1),
    }
    x = torch.ones(2, 4)
    for opt in opts.values():
        def closure(opt: Any = opt) -> torch.Tensor:
            opt.zero_grad()
            loss = model(x).pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
    out: dict[str, Any] = {f"optim_{k}": v.state_dict() for k, v in opts.items()}
    sgd = optim.SGD(params, 0.1)
    sched = optim.lr_scheduler
    schedulers = {
        "step": sched.StepLR(sgd, 3), "poly": sched.PolynomialLR(sgd, 4),
        "linear": sched.LinearLR(sgd), "constant": sched.ConstantLR(sgd),
        "cosine": sched.CosineAnnealingLR(sgd, 10),
        "onecycle": sched.OneCycleLR(sgd, 1.0, total_steps=10),
        "cyclic": sched.CyclicLR(sgd, 0.01, 0.1, mode="exp_range"),
        "plateau": sched.ReduceLROnPlateau(sgd),
        "multiplicative": sched.MultiplicativeLR(sgd, lambda e: 0.95),
    }
    out.update({f"sched_{k}": v.state_dict() for k, v in schedulers.items()})
    sgd2 = optim.SGD(params, 0.1)
    seq = sched.SequentialLR(sgd2, [sched.ConstantLR(sgd2), sched.ExponentialLR(sgd2, 0.9)],
                             milestones=[2])
    out["sched_sequential"] = seq.state_dict()
    sgd3 = optim.SGD(params, 0.1)
    out["sched_chained"] = sched.ChainedScheduler(
        [sched.ConstantLR(sgd3), sched.ExponentialLR(sgd3, 0.9)]).state_dict()
    out["swalr"] = optim.swa_utils.SWALR(optim.SGD(params, 0.1), swa_lr=0.05).state_dict()
    scaler = torch.amp.GradScaler("cpu")
    out["grad_scaler"] = scaler.state_dict()
    return out


def _numpy_arrays() -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for code in ("?", "b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e", "f", "d", "g",
                 "F", "D", "G", "S5", "U3", "V4", "M8[D]", "M8[ns]", "m8[s]", ">f8", "<i2",
                 ">c16", ">U2"):
        arrays[f"dtype_{code}"] = np.zeros(3, dtype=code)
    arrays["structured"] = np.zeros(2, dtype=[("a", "<i4"), ("b", ">f8", (2,)), ("c", "S3")])
    arrays["nested"] = np.zeros(2, dtype=[("x", [("y", "u1"), ("z", "<f4")]), ("w", "?")])
    arrays["aligned"] = np.zeros(2, dtype=np.dtype([("a", "u1"), ("b", "<i8")], align=True))
    arrays["titled"] = np.zeros(1, dtype=np.dtype({"names": ["a"], "formats": ["<i4"],
                                                   "titles": ["Title"]}))
    arrays["subarray"] = np.zeros(2, dtype=("<f4", (2, 2)))
    arrays["fortran"] = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    arrays["zero_d"] = np.array(5)
    arrays["empty"] = np.zeros((0, 3))
    arrays["datetime"] = np.array(["2024-01-01T00:00", "NaT"], dtype="M8[m]")
    return arrays


def _numpy_values() -> dict[str, Any]:
    return {
        "scalars": [np.float64(1.5), np.float32(2), np.float16(1), np.int8(-1), np.uint64(5),
                    np.bool_(True), np.complex64(1j), np.datetime64("2024-01-01"),
                    np.timedelta64(3, "s"), np.bytes_(b"ab"), np.str_("x"), np.longdouble(2)],
        "dtypes": [np.dtype("f4"), np.dtype(">i8"), np.dtype([("a", "<i4")]), np.dtype("M8[s]"),
                   np.dtype("U3"), np.dtype("V8")],
        "arrays": {k: v for k, v in list(_numpy_arrays().items())[::3]},
        "structured": _numpy_arrays()["structured"],
        "numpy_rng": np.random.RandomState(1).get_state(),
        "generator_state": np.random.default_rng(2).bit_generator.state,
    }


def _shapes() -> dict[str, Any]:
    """Larger and odder shapes real checkpoints have: many entries (memo indices past
    65,535), a tokenizer vocabulary, deep config trees, keys of every plain type."""
    shared = torch.arange(4, dtype=torch.int32)
    deep: Any = {"leaf": torch.ones(1)}
    for i in range(60):
        deep = {f"level{i}": deep, "i": i}
    return {
        "many_tensors": collections.OrderedDict(
            (f"layers.{i}.weight", torch.full((2,), float(i))) for i in range(12000)),
        "vocab": {"vocab": {f"tok{i}": i for i in range(50000)},
                  "merges": [f"a{i} b{i}" for i in range(5000)], "text": "x" * (1 << 20)},
        "deep_config": deep,
        "odd_keys": {0: torch.ones(1), (1, "a"): 2, None: 3, True: 4, 2.5: 5, b"k": 6,
                     frozenset({1}): 7, -1: [], 2 ** 64: {}},
        "dtype_views": {"i": shared, "f": shared.view(torch.float32),
                        "bytes": shared.view(torch.uint8)},
        "view_as_real": torch.view_as_real(torch.tensor([1 + 2j, 3 - 1j])),
        "nonleaf": torch.ones(2, requires_grad=True) * 2,
        "dtype_objects": [getattr(torch, n) for n in (
            *(f"uint{i}" for i in range(1, 8)), *(f"int{i}" for i in range(1, 8)),
            "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2", "float4_e2m1fn_x2",
            "float8_e8m0fnu", "cfloat", "cdouble", "chalf", "half", "long")],
    }


def _torch_objects() -> dict[str, Any]:
    objs: dict[str, Any] = {}
    objs.update(_shapes())
    objs["dtype_tensors"] = {str(d): _t(d) for d in _DTYPES}
    objs["float4"] = torch.empty(2, 2, dtype=torch.float4_e2m1fn_x2)
    objs["bits"] = {str(d): torch.empty(2, dtype=d) for d in
                    (torch.bits8, torch.bits16, torch.bits1x8, torch.bits4x2, torch.bits2x4)}
    objs.update({f"quant_{k}": v for k, v in _quantized().items()})
    objs.update({f"view_{k}": v for k, v in _views().items()})
    objs.update(_values())
    objs.update({f"module_{k}": v for k, v in _modules().items()})
    objs.update(_optimizers())
    return objs


def _tsave(obj: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _torchscript() -> bytes:
    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.lin(x))

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Small()), buf)
    return buf.getvalue()


def cases(quick: bool = False) -> Iterator[Case]:
    """Every harmless file, each once (``quick``) or crossed with protocols and formats."""
    torch_objs = _torch_objects()
    protocols = [2] if quick else [0, 1, 2, 3, 4, 5]
    for name, obj in torch_objs.items():
        for proto in protocols:
            for zip_format in (True, False):
                if quick and not zip_format and not name.startswith(("dtype", "quant", "view")):
                    continue
                if proto < 2 and name.startswith("module_dynamic"):
                    continue  # torch.save aborts the process pickling packed params below 2
                fmt = "zip" if zip_format else "legacy"
                try:
                    data = _tsave(obj, pickle_protocol=proto,
                                  _use_new_zipfile_serialization=zip_format)
                except Exception:  # torch cannot write this shape this way
                    continue
                yield Case(f"torch/{name}/p{proto}/{fmt}", "torch", data)
    numpy_vals = _numpy_values()
    for name, obj in numpy_vals.items():  # numpy inside torch.save: torch itself refuses it
        yield Case(f"torch/numpy_{name}", "torch", _tsave(obj))
    arrays = _numpy_arrays()
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr)
        yield Case(f"npy/{name}", "numpy", buf.getvalue())
    buf = io.BytesIO()
    for arr in list(arrays.values())[:6]:  # numpy.save appends to an open file
        np.save(buf, arr)
    yield Case("npy/appended", "numpy", buf.getvalue())
    for save in (np.savez, np.savez_compressed):
        buf = io.BytesIO()
        save(buf, **arrays)
        yield Case(f"npz/{save.__name__}", "numpy", buf.getvalue())
    plain = {**{f"np_{k}": v for k, v in numpy_vals.items()},
             **{f"np_array_{k}": v for k, v in arrays.items()},
             "containers": torch_objs["containers"], "python_rng": torch_objs["python_rng"]}
    for name, obj in plain.items():
        for proto in protocols if not quick else [2, 4, 5]:
            yield Case(f"pickle/{name}/p{proto}", "pickle", pickle.dumps(obj, protocol=proto))
    yield from _joblib_cases(arrays, numpy_vals, quick)
    yield from _safetensors_cases(torch_objs)
    yield Case("torchscript/scripted", "torchscript", _torchscript())


def _joblib_cases(arrays: dict[str, np.ndarray], numpy_vals: dict[str, Any],
                  quick: bool) -> Iterator[Case]:
    import joblib

    objs = {"arrays": arrays, "values": {k: numpy_vals[k] for k in ("scalars", "dtypes")},
            "model_like": {"coef_": np.ones((2, 3)), "intercept_": np.zeros(2),
                           "classes_": np.array(["a", "b"]), "n_iter_": np.int32(4)}}
    compressions: list[Any] = [0, ("zlib", 3), ("gzip", 3), ("bz2", 3), ("lzma", 3),
                               ("xz", 3)]
    try:
        import lz4  # noqa: F401
        compressions.append(("lz4", 3))
    except ImportError:
        pass
    for name, obj in objs.items():
        for comp in compressions[:2] if quick else compressions:
            buf = io.BytesIO()
            joblib.dump(obj, buf, compress=comp)
            tag = comp if isinstance(comp, int) else comp[0]
            yield Case(f"joblib/{name}/{tag}", "joblib", buf.getvalue())


def _safetensors_cases(torch_objs: dict[str, Any]) -> Iterator[Case]:
    from safetensors.torch import _SIZE, save

    tensors = {k: v.contiguous() for k, v in torch_objs["dtype_tensors"].items()
               if v.dtype in _SIZE}
    yield Case("safetensors/dtypes", "safetensors", save(tensors, metadata={"format": "pt"}))
    yield Case("safetensors/empty", "safetensors", save({}))
    yield Case("safetensors/zero_d", "safetensors",
               save({"s": torch.tensor(1.0), "e": torch.empty(0, 3)}))


def _safetensors(data: bytes) -> None:
    from safetensors.torch import load

    load(data)


def _weights_only_pickle(data: bytes) -> None:
    from torch._weights_only_unpickler import Unpickler

    f = io.BytesIO(data)
    Unpickler(f, encoding="utf-8").load()
    if f.read(1):
        raise ValueError("trailing bytes")


def _joblib_restricted(data: bytes) -> None:
    """joblib.load with globals restricted to torch's weights-only set, numpy's array
    reconstruction and joblib's own array record (what its numeric files need)."""
    import joblib
    from joblib import numpy_pickle
    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = set(_get_allowed_globals()) | {
        "numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar", "joblib.numpy_pickle.NumpyArrayWrapper",
        "numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar"}
    original = numpy_pickle.NumpyUnpickler.find_class

    def find_class(self: Any, module: str, name: str) -> Any:
        if f"{module}.{name}" not in allowed:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return original(self, module, name)

    numpy_pickle.NumpyUnpickler.find_class = find_class  # type: ignore[method-assign]
    try:
        joblib.load(io.BytesIO(data))
    finally:
        numpy_pickle.NumpyUnpickler.find_class = original  # type: ignore[method-assign]


def _numpy(data: bytes) -> None:
    loaded = np.load(io.BytesIO(data), allow_pickle=False)
    if hasattr(loaded, "files"):
        for key in loaded.files:
            loaded[key]


_ORACLES: dict[str, Callable[[bytes], object]] = {
    "torch": lambda data: torch.load(io.BytesIO(data), weights_only=True),
    "numpy": _numpy,
    "pickle": _weights_only_pickle,
    "joblib": _joblib_restricted,
    "safetensors": _safetensors,
}


def oracle_accepts(case: Case) -> bool:
    """Whether the real loader, in its safe mode and with no extra allowances, loads it.

    The load runs in a forked child: torch's C++ code can abort the process on some
    legacy streams, and a crash is a refusal too.
    """
    if case.loader == "torchscript":
        return False  # executable content: needs a policy whatever the loader says
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            warnings.simplefilter("ignore")
            _ORACLES[case.loader](case.data)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
