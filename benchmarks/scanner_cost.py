"""What real checkpoints need from the scanner's opcode budget, and what a bomb costs.

    .venv/bin/python benchmarks/scanner_cost.py

1. ``data.pkl`` of state dicts shaped like real models (names and shapes, no tensor bytes:
   ``torch.serialization.skip_data`` with meta tensors), with and without Adam state:
   record size, opcodes, and the scanner's CPU time and speed on it.
2. A torch zip whose ``data.pkl`` inflates to 200 MB of opcodes: the whole-file scan's CPU
   time and its finding (SH191 at the opcode budget, ``Limits.max_ops``).
"""

from __future__ import annotations

import io
import time
import zipfile

import torch

from safehub._scanner.pickle_vm import Limits, run_stream
from safehub._scanner.source import BytesSource
from safehub.scan import scan_file

Shapes = dict[str, tuple[int, ...]]


def llama_like(layers: int, experts: int = 1, hidden: int = 4096, ffn: int = 11008) -> Shapes:
    sd: Shapes = {"model.embed_tokens.weight": (32000, hidden)}
    for n in range(layers):
        p = f"model.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"{p}self_attn.{proj}.weight"] = (hidden, hidden)
        for e in range(experts):
            q = f"{p}mlp.experts.{e}." if experts > 1 else f"{p}mlp."
            for proj in ("gate_proj", "up_proj", "down_proj"):
                sd[f"{q}{proj}.weight"] = (ffn, hidden)
        sd[f"{p}input_layernorm.weight"] = (hidden,)
        sd[f"{p}post_attention_layernorm.weight"] = (hidden,)
    sd["model.norm.weight"] = (hidden,)
    sd["lm_head.weight"] = (32000, hidden)
    return sd


def data_pkl(shapes: Shapes, adam: bool) -> tuple[bytes, int]:
    with torch.serialization.skip_data():
        sd = {k: torch.empty(v, device="meta") for k, v in shapes.items()}
        obj: object = sd
        tensors = len(sd)
        if adam:
            state = {i: {"step": torch.empty((), device="meta"),
                         "exp_avg": torch.empty(v, device="meta"),
                         "exp_avg_sq": torch.empty(v, device="meta")}
                     for i, v in enumerate(shapes.values())}
            obj = {"model": sd, "optimizer": {"state": state, "param_groups": [
                {"lr": 1e-4, "params": list(range(len(shapes)))}]}}
            tensors *= 4
        buf = io.BytesIO()
        torch.save(obj, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        name = next(n for n in zf.namelist() if n.endswith("data.pkl"))
        return zf.read(name), tensors


def bomb() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as out:
            out.write(b"\x80\x02")
            block = b"N0" * 65536
            for _ in range(100_000_000 // 65536):
                out.write(block)
            out.write(b"N.")
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def main() -> None:
    print(f"opcode budget per file (Limits.max_ops): {Limits().max_ops:,}\n")
    print("| state dict | tensors | data.pkl | opcodes | scan CPU | opcodes/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, shapes, adam in [
        ("Llama-7B", llama_like(32), False),
        ("Llama-70B-like (80 layers, 8192 hidden)", llama_like(80, hidden=8192, ffn=28672),
         False),
        ("Mixtral-8x7B-like", llama_like(32, 8, ffn=14336), False),
        ("Llama-7B + Adam", llama_like(32), True),
        ("MoE 61 layers x 256 experts", llama_like(61, 256, 7168, 2048), False),
        ("MoE 61 x 256 + Adam", llama_like(61, 256, 7168, 2048), True),
    ]:
        data, tensors = data_pkl(shapes, adam)
        best = float("inf")
        for _ in range(3):
            start = time.process_time()
            res = run_stream(BytesSource(data), torch_names=True)
            best = min(best, time.process_time() - start)
        print(f"| {name} | {tensors:,} | {len(data) / 1e6:.2f} MB | {res.ops:,} | "
              f"{best:.2f} s | {res.ops / best / 1e6:.2f} M |")
    data = bomb()
    start = time.process_time()
    report = scan_file(io.BytesIO(data), "bomb.pt")
    took = time.process_time() - start
    found = [f"{f.rule_id}: {f.message}" for f in report.findings]
    print(f"\n200 MB opcode deflate bomb ({len(data) / 1e3:.0f} kB zip): {took:.1f} s CPU, "
          f"{report.verdict.value}, {found}")


if __name__ == "__main__":
    main()
