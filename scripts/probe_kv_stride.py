"""Does decode attention's time depend on where each KV head's rows start in memory? (#6)

A contiguous cache [1, Hk, C, D] puts every head's K (and V) at a multiple of C * D * 2 bytes
(2 MiB for Llama-3.1-8B at 8k tokens), so the programs reading split s of every head start at
addresses equal modulo 2 MiB. If HBM channels were picked by those low address bits, the heads
would queue on the same channels. This times the op (default splits, GPU time from CUDA-graph
replays over rotated copies, as bench/tune_decode_attention.py) over caches whose heads are
`pad` key rows further apart (a view of a [1, Hk, C + pad, D] buffer), against the contiguous one.

    python scripts/probe_kv_stride.py [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from common import GraphTimer, copies_for, pct_of_read_bw, read_bandwidth, write_rows_json  # noqa: E402

from autoglm_kernels import ops  # noqa: E402

CASES = {"llama3.1-8b 8k": (32, 8, 8192), "glm4-9b 32k": (32, 2, 32768), "glm4-9b 8k": (32, 2, 8192)}
PADS = (0, 8, 64, 200, 1032)  # key rows between heads (8 rows = 2 KB at d 128)
D = 128


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json")
    args = ap.parse_args()
    bw = read_bandwidth()
    rows = []
    for name, (hq, hk, L) in CASES.items():
        useful = 2 * hk * L * D * 2
        lens = torch.full((1,), L, dtype=torch.int32, device="cuda")
        for pad in PADS:
            sets = []
            for _ in range(copies_for(useful)):
                q = torch.randn(1, 1, hq, D, device="cuda", dtype=torch.bfloat16)
                k, v = (torch.randn(1, hk, L + pad, D, device="cuda", dtype=torch.bfloat16)[:, :, :L] for _ in range(2))
                sets.append((q, k, v))
            counters = torch.zeros(ops.decode_attention_counters(q, sets[0][1]), dtype=torch.int32, device="cuda")
            t = GraphTimer(lambda q, k, v: ops.decode_attention(q, k, v, lens, counters=counters), sets).time_us()
            row = {"case": name, "pad_rows": pad, "head_stride_bytes": (L + pad) * D * 2, "us": round(t, 2),
                   "pct_of_bw": pct_of_read_bw(useful, t, bw)}
            rows.append(row)
            print(f"{name:16s} pad {pad:5d} rows  {t:7.2f} us  {row['pct_of_bw']:5.1f}% of {bw / 1e9:.0f} GB/s", flush=True)
            del sets
            torch.cuda.empty_cache()
    write_rows_json(args.json, bw, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
