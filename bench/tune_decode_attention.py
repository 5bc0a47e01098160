"""Tuning sweep for decode_attention's split count: GPU time per num_splits against SDPA over the
valid tokens, batch 1, one query, at the reference GQA shapes (GLM-4 32/2, Llama-8B 32/8, d 128;
Llama-3.2-1B 32/8, d 64).

Not a pytest benchmark: it prints a table (and writes JSON with --json) that says which split
count is fastest per context length, to check or retune `default_num_splits`.

    python bench/tune_decode_attention.py [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (GraphTimer, StockAttnModule, copies_for, pct_of_read_bw, read_bandwidth,  # noqa: E402
                    write_rows_json)

from autoglm_kernels import ops  # noqa: E402
from autoglm_kernels.triton.decode_attention import default_num_splits  # noqa: E402

SHAPES = {"glm4-9b": (32, 2, 128), "llama3.1-8b": (32, 8, 128), "llama3.2-1b": (32, 8, 64)}
CONTEXTS = (256, 1024, 8192, 32768)
SPLITS = (0, 2, 4, 8, 16, 32, 64, 128, 256)  # 0 = the default


def main() -> int:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)), help="valid lengths L")
    parser.add_argument("--capacity-mult", type=int, default=1, help="cache capacity C = this x L (a static cache)")
    parser.add_argument("--splits", default=",".join(map(str, SPLITS)), help="num_splits to try besides the default")
    args = parser.parse_args()
    splits = [0] + [n for n in (int(v) for v in args.splits.split(",")) if n != 0]  # 0, the default, first
    bw = read_bandwidth()
    rows = []
    for name in args.models.split(","):
        Hq, Hk, D = SHAPES[name]
        for L in (int(c) for c in args.contexts.split(",")):
            C = L * args.capacity_mult
            useful = 2 * Hk * L * D * 2
            sets = [tuple(torch.randn(*s, device="cuda", dtype=torch.bfloat16)
                          for s in ((1, 1, Hq, D), (1, Hk, C, D), (1, Hk, C, D))) for _ in range(copies_for(useful))]
            lens = torch.full((1,), L, dtype=torch.int32, device="cuda")
            module = StockAttnModule(Hq // Hk)
            sdpa = GraphTimer(lambda q, k, v: sdpa_attention_forward(module, q.transpose(1, 2), k[:, :, :L],
                                                                     v[:, :, :L], None, scaling=D**-0.5,
                                                                     is_causal=True)[0], sets)
            row = {"model": name, "L": L, "C": C, "sdpa_us": round(sdpa.time_us(), 2),
                   "default_splits": default_num_splits(sets[0][0], sets[0][1]), "fused_us": {}}
            del sdpa
            counters = torch.zeros(ops.decode_attention_counters(*sets[0][:2]), dtype=torch.int32, device="cuda")
            for n in splits:
                t = GraphTimer(lambda q, k, v, n=n: ops.decode_attention(q, k, v, lens, num_splits=n or None,
                                                                         counters=counters), sets)
                row["fused_us"][n] = round(t.time_us(), 2)
                del t
            best = min(row["fused_us"], key=row["fused_us"].get)
            row["best_splits"], row["best_us"] = best, row["fused_us"][best]
            row["default_pct_of_bw"] = pct_of_read_bw(useful, row["fused_us"][0], bw)
            rows.append(row)
            print(f"{name:12s} L={L:6d} C={C:6d} sdpa {row['sdpa_us']:7.2f} us | "
                  f"default ({row['default_splits']:3d} splits) "
                  f"{row['fused_us'][0]:7.2f} us = {row['sdpa_us'] / row['fused_us'][0]:.2f}x sdpa, "
                  f"{row['default_pct_of_bw']:5.1f}% BW | best {best:3d} splits {row['best_us']:7.2f} us  "
                  + " ".join(f"{k}:{v}" for k, v in row["fused_us"].items()), flush=True)
            del sets
            torch.cuda.empty_cache()
    write_rows_json(args.json, bw, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
