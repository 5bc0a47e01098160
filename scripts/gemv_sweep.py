"""GPU time of fused_linear against stock F.linear (+ activation) on a few decode shapes, under
whatever AUTOGLM_GEMV_* knobs the environment sets (they are read once per process, so run one
process per variant). CUDA-graph replays over rotated weights (bench/common.GraphTimer).

    AUTOGLM_GEMV_MAX_WEIGHT_MIB=1024 python scripts/gemv_sweep.py --label gemv-all --json out.jsonl

Appends one JSON line per (shape, M) to --json; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from common import GraphTimer, copies_for, pct_of_read_bw, read_bandwidth, stock_linear  # noqa: E402

from autoglm_kernels import ops  # noqa: E402

SHAPES = {  # name -> (K, N, activation)
    "8b down 14336->4096": (14336, 4096, "none"),
    "8b gate_up 4096->28672 gated": (4096, 28672, "gated_silu"),
    "glm down 13696->4096": (13696, 4096, "none"),
    "glm gate_up 4096->27392 gated": (4096, 27392, "gated_silu"),
    "8b qkv 4096->6144": (4096, 6144, "none"),
    "glm qkv 4096->4608": (4096, 4608, "none"),
    "1b down 8192->2048": (8192, 2048, "none"),
    "1b qkv 2048->3072": (2048, 3072, "none"),
    "1b o 2048->2048": (2048, 2048, "none"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of SHAPES")
    ap.add_argument("--kn", default="", help="more shapes as comma-separated KxN (activation none), e.g. 4096x4224")
    ap.add_argument("--M", default="1")
    ap.add_argument("--bias", action="store_true", help="with a bias (rotated with the weights), as GLM-4's qkv has")
    args = ap.parse_args()
    extra = [kn for kn in args.kn.split(",") if kn]
    for kn in extra:
        K, N = (int(v) for v in kn.split("x"))
        SHAPES[kn] = (K, N, "none")
    knobs = {k: v for k, v in os.environ.items() if k.startswith("AUTOGLM_")}
    bw = read_bandwidth()
    rows = []
    for name in [n for n in args.shapes.split(",") if n] + extra:
        K, N, act = SHAPES[name]
        copies = copies_for(N * K * 2)
        ws = [torch.empty(N, K, device="cuda", dtype=torch.bfloat16).normal_(std=K**-0.5) for _ in range(copies)]
        bs = [torch.randn(N, device="cuda", dtype=torch.bfloat16) if args.bias else None for _ in ws]
        for M in (int(m) for m in args.M.split(",")):
            sets = [(torch.randn(M, K, device="cuda", dtype=torch.bfloat16), w, b) for w, b in zip(ws, bs)]
            us = {}
            for impl, fn in (("stock", stock_linear), ("fused", ops.fused_linear)):
                timer = GraphTimer(lambda x, w, b, fn=fn: fn(x, w, b, act), sets)
                us[impl] = min(timer.time_us() for _ in range(3))
                del timer
            row = dict(label=args.label, knobs=knobs, shape=name, bias=args.bias, M=M, stock_us=round(us["stock"], 2),
                       fused_us=round(us["fused"], 2), ratio=round(us["stock"] / us["fused"], 3),
                       fused_pct_bw=pct_of_read_bw(N * K * 2, us["fused"], bw), bandwidth_gbs=round(bw / 1e9))
            rows.append(row)
            shown = name + (" +bias" if args.bias else "")
            print(f"{args.label:14s} {shown:32s} M={M:<2d} stock {us['stock']:7.2f} us  fused {us['fused']:7.2f} us  "
                  f"{row['ratio']:.3f}x  {row['fused_pct_bw']:.1f}% of {row['bandwidth_gbs']} GB/s", flush=True)
        del ws, bs
        torch.cuda.empty_cache()
    with open(args.json, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
