"""The boundary itself: the safetensors memfd writer and reader, and the framed channel.

The reader faces a process that ran hostile code, so every malformed input must
become a BadResult before anything is parsed or mapped."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehub._sandbox.channel import Channel, ChannelClosed, ProtocolError
from safehub._sandbox.result import new_result_file, read_tensors
from safehub._sandbox.writer import SEALS, TensorProblem, check_tensors, pack
from safehub.sandbox import BadResult
from tests.sandbox.conftest import assert_same_tensors

torch = pytest.importorskip("torch")


def memfd(data: bytes, seals: int = SEALS) -> int:
    fd = os.memfd_create("test", os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def safetensors_bytes(header: dict[str, Any] | bytes, data: bytes = b"",
                      length: int | None = None) -> bytes:
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    head += b" " * (-(8 + len(head)) % 8)
    return struct.pack("<Q", len(head) if length is None else length) + head + data


def roundtrip(tensors: dict[str, Any]) -> dict[str, Any]:
    packed = pack(check_tensors(tensors), new_result_file())
    return read_tensors(packed.fd, order=list(tensors))


def test_roundtrip_keeps_values_dtypes_shapes_and_order() -> None:
    base = torch.randn(5, 7)
    tensors = {"z": base, "a": base.t(), "h": base.half(), "b16": base.bfloat16(),
               "i": torch.arange(5), "flag": torch.tensor([True, False]), "s": torch.tensor(2),
               "e": torch.empty(0, 3), "u8": torch.arange(250, 256, dtype=torch.uint8)}
    out = roundtrip(tensors)
    assert list(out) == list(tensors)
    assert_same_tensors(out, tensors)


def test_mapped_tensors_are_writable_copy_on_write() -> None:
    packed = pack({"w": torch.ones(1024)}, new_result_file())
    fd2 = os.dup(packed.fd)
    out = read_tensors(packed.fd)
    out["w"].mul_(3)  # private mapping: the memfd itself is unchanged
    assert out["w"][0] == 3
    assert read_tensors(fd2)["w"][0] == 1


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(
    st.text(min_size=1, max_size=12).filter(lambda k: k != "__metadata__"),
    st.tuples(st.sampled_from(["float32", "float16", "bfloat16", "int64", "int8", "uint8",
                               "bool", "float64"]),
              st.lists(st.integers(0, 4), max_size=3)),
    max_size=6))
def test_roundtrip_property(spec: dict[str, tuple[str, list[int]]]) -> None:
    tensors = {}
    for i, (key, (dtype, shape)) in enumerate(spec.items()):
        t = torch.arange(int(torch.tensor(shape).prod()) if shape else 1) + i
        tensors[key] = t.reshape(shape).to(getattr(torch, dtype))
    assert_same_tensors(roundtrip(tensors), tensors)


def test_writer_names_every_bad_key() -> None:
    with pytest.raises(TensorProblem) as info:
        check_tensors({"ok": torch.ones(1), "cfg": {"a": 1}, "n": 3,
                       "q": torch.empty(2, device="meta"),
                       "c128": torch.ones(2, dtype=torch.complex128),
                       "sparse": torch.ones(2).to_sparse()})
    text = str(info.value)
    for key in ("cfg (builtins.dict)", "n (builtins.int)", "q", "c128", "sparse"):
        assert key in text
    assert "ok" not in info.value.keys


VALID = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


MALFORMED = [
    (safetensors_bytes(VALID, b"\0" * 8), 0, "not sealed"),
    (safetensors_bytes(VALID, b"\0" * 8),
     fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL, "not sealed"),
    (b"\1\0\0", SEALS, "shorter than"),
    (safetensors_bytes(b"{}", length=1 << 40), SEALS, "exceeds"),
    (safetensors_bytes(b"{}", length=1000), SEALS, "runs past the end"),
    (safetensors_bytes({f"t{i}": {} for i in range(200_001)}), SEALS, "more than"),
    (safetensors_bytes(b"{not json"), SEALS, "not valid JSON"),
    (safetensors_bytes(b"[1, 2]"), SEALS, "does not start"),
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                        "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
                       b"\0" * 12), SEALS, "overlaps"),
    (safetensors_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
                       b"\0" * 8), SEALS, "needs 12 bytes"),
    (safetensors_bytes({"w": {"dtype": "C128", "shape": [1], "data_offsets": [0, 16]}},
                       b"\0" * 16), SEALS, "unknown dtype"),
    (safetensors_bytes({"w": {"dtype": "F6_E2M3", "shape": [8], "data_offsets": [0, 6]}},
                       b"\0" * 6), SEALS, "not accepted"),
    (safetensors_bytes({"b": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                        "w": {"dtype": "F32", "shape": [1], "data_offsets": [1, 5]}},
                       b"\0" * 5), SEALS, "not aligned"),
    (safetensors_bytes({"b": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}},
                       b"\1\7"), SEALS, "booleans"),
    (safetensors_bytes(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, '
                       b'"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
                       b"\0" * 8), SEALS, "twice"),
]


@pytest.mark.parametrize("data, seals, words", MALFORMED)
def test_reader_refuses_malformed_results(data: bytes, seals: int, words: str) -> None:
    with pytest.raises(BadResult, match=words) as info:
        read_tensors(memfd(data, seals))
    assert info.value.rule_id == "SH503"


def test_reader_refuses_a_regular_file(tmp_path: Any) -> None:
    path = tmp_path / "f.safetensors"
    path.write_bytes(safetensors_bytes(VALID, b"\0" * 8))
    with pytest.raises(BadResult, match=r"not sealed|not a memfd"):
        read_tensors(os.open(path, os.O_RDONLY))


def test_reader_refuses_a_pipe() -> None:
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(BadResult, match="not a memory file"):
        read_tensors(r)


def test_reader_checks_the_reported_key_order() -> None:
    packed = pack({"a": torch.ones(1), "b": torch.ones(1)}, new_result_file())
    with pytest.raises(BadResult, match="key order"):
        read_tensors(packed.fd, order=["a", "a"])


# --- channel -------------------------------------------------------------------------------


@pytest.fixture
def pair() -> Any:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield Channel(a, max_frame=1 << 16, max_fds=2), Channel(b, max_frame=1 << 16, max_fds=2), a
    a.close()
    b.close()


def open_fds() -> set[int]:
    return {int(x) for x in os.listdir("/proc/self/fd")}


def test_channel_carries_frames_and_descriptors(pair: Any) -> None:
    left, right, _ = pair
    r, w = os.pipe()
    left.send({"t": "x", "n": [1, 2]}, [r])
    message, fds = right.recv()
    assert message == {"t": "x", "n": [1, 2]} and len(fds) == 1
    os.write(w, b"ok")
    assert os.read(fds[0], 2) == b"ok"
    for fd in (r, w, *fds):
        os.close(fd)


@pytest.mark.parametrize("raw, words", [
    (struct.pack(">I", 1 << 20), "exceeds"),
    (struct.pack(">I", 4) + b"[1] ", "JSON object"),
    (struct.pack(">I", 2) + b"{}", "JSON object"),
    (struct.pack(">I", 3) + b"{\xff}", "not valid JSON"),
])
def test_channel_refuses_malformed_frames(pair: Any, raw: bytes, words: str) -> None:
    _, right, peer = pair
    peer.sendall(raw)
    with pytest.raises(ProtocolError, match=words):
        right.recv()


def test_channel_closes_descriptors_sent_out_of_place(pair: Any) -> None:
    left, right, _ = pair
    r, w = os.pipe()
    before = open_fds()
    # Header first, then descriptors with the payload bytes: not allowed.
    payload = b'{"t":"x"}'
    left.sock.sendall(struct.pack(">I", len(payload)))
    left.sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                   struct.pack("ii", r, w))])
    with pytest.raises(ProtocolError, match="outside a frame header"):
        right.recv()
    assert open_fds() <= before | {r, w}
    os.close(r)
    os.close(w)


def test_channel_too_many_descriptors(pair: Any) -> None:
    left, right, _ = pair
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(5)]
    left.send({"t": "x"}, fds)
    with pytest.raises(ProtocolError, match="more than 2"):
        right.recv()
    for fd in fds:
        os.close(fd)


def test_channel_end_of_stream(pair: Any) -> None:
    left, right, _ = pair
    left.close()
    with pytest.raises(ChannelClosed):
        right.recv()
