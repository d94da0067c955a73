"""safetensors: no code, but a header that must be exactly consistent with the data.

The checks mirror the reference implementation's own validation (header size cap,
JSON object, known dtypes, shapes times dtype size equal to each byte range,
ranges contiguous from zero and covering the data exactly), and add what it
tolerates silently: duplicate keys in the JSON (loaders disagree on which wins).
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from safehub._scanner.context import FileScan

__all__ = ["DTYPE_BITS", "MAX_HEADER", "check_header", "scan_safetensors"]

MAX_HEADER = 100_000_000  # the reference implementation's limit
MAX_TENSORS = 1_000_000
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
    "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64, "I64": 64,
    "U64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    # AMD's fp8 formats (torch.float8_e4m3fnuz, float8_e5m2fnuz): ROCm-quantized models.
    "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
}


class HeaderError(ValueError):
    """The header is inconsistent; the message says how."""


def looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = struct.unpack_from("<Q", head)[0]
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def scan_safetensors(scan: FileScan, fh: BinaryIO) -> None:
    fh.seek(0)
    head = fh.read(8)
    n = struct.unpack("<Q", head)[0]
    if n > MAX_HEADER:
        scan.add("SH150", f"header of {n} bytes exceeds the {MAX_HEADER}-byte limit", offset=0)
        return
    header = fh.read(n)
    try:
        check_header(header, scan.size - 8 - n)
    except HeaderError as exc:
        scan.add("SH150", str(exc), offset=8)


def check_header(header: bytes, data_len: int) -> dict[str, object]:
    """Validate a safetensors header against the data length; returns the parsed header."""
    if not header.startswith(b"{"):
        raise HeaderError("header does not start with '{'")
    # Imported here: json costs every `safehub scan` start-up, most meet no safetensors.
    from safehub import _strictjson as strictjson

    try:
        # The reference implementation pads headers with spaces; duplicate keys are refused.
        parsed = strictjson.loads(header.rstrip(b" "))
    except strictjson.StrictJSONError as exc:
        raise HeaderError(f"header is not valid JSON ({exc})") from None
    if not isinstance(parsed, dict):
        raise HeaderError("header is not a JSON object")
    if len(parsed) > MAX_TENSORS:
        raise HeaderError(f"header lists more than {MAX_TENSORS} tensors")
    metadata = parsed.get("__metadata__")
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise HeaderError("__metadata__ must map strings to strings")
    spans: list[tuple[int, int, str]] = []
    for name, info in parsed.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise HeaderError(f"tensor {name!r}: entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise HeaderError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise HeaderError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets
        )):
            raise HeaderError(f"tensor {name!r}: data_offsets {offsets!r} are malformed")
        begin, end = offsets
        if begin > end:
            raise HeaderError(f"tensor {name!r}: data_offsets end before they begin")
        count = 1
        for d in shape:
            count *= d
        bits = count * DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            raise HeaderError(f"tensor {name!r}: {dtype}{shape} needs {bits / 8:g} bytes, "
                              f"its range holds {end - begin}")
        spans.append((begin, end, name))
    spans.sort()
    expected = 0
    for begin, end, name in spans:
        if begin != expected:
            what = "overlaps the previous tensor" if begin < expected else "leaves a gap"
            raise HeaderError(f"tensor {name!r}: data range {what}")
        expected = end
    if expected != data_len:
        raise HeaderError(f"tensors cover {expected} bytes but the file holds {data_len}")
    return parsed
