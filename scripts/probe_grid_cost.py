"""Does a grid's size cost GPU time when the extra programs only read a length and exit?

Decode attention over a static cache sizes its grid from the capacity; with few valid tiles most
programs exit at once, yet Llama-3.1-8B's 16 working splits took 7.82 us in a grid of 128
programs and 8.13 us in 264 (bench/results/..._1316_.../tune_da_c4.log). This times, in CUDA
graphs over rotated buffers (bench/common.GraphTimer), a kernel whose first `work` programs each
stream `kib` KiB and whose others exit after reading the work count, at several grid sizes:
a cost that grows with the grid past one program per SM with no work added is the hardware's.
With --pdl the kernel starts with the package's pdl_prologue and launches as the ops do under
programmatic dependent launch, so each replay's programs are placed on the SMs while the one
before still runs (the decode attention's situation in the benchmarks and the engine's step).

    python scripts/probe_grid_cost.py [--pdl] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from common import GraphTimer  # noqa: E402

from autoglm_kernels.triton import pdl_prologue  # noqa: E402


@triton.jit
def _stream_or_exit(WORK, X, OUT, n_elems, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Programs below WORK[0] sum their n_elems-element slice of X; the others exit."""
    pdl_prologue(PDL)
    pid = tl.program_id(0)
    if pid >= tl.load(WORK):
        return
    acc = tl.zeros([BLOCK], tl.float32)
    base = X + pid.to(tl.int64) * n_elems
    for start in range(0, n_elems, BLOCK):
        acc += tl.load(base + start + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(OUT + pid, tl.sum(acc, 0))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--work", type=int, default=128, help="working programs")
    ap.add_argument("--grids", default="128,132,133,192,264,384,512")
    ap.add_argument("--kib", default="0,32", help="KiB each working program streams (0: none)")
    ap.add_argument("--pdl", action="store_true", help="launch under programmatic dependent launch")
    ap.add_argument("--warps", type=int, default=4, help="warps per program")
    args = ap.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    work = torch.tensor([args.work], dtype=torch.int32, device="cuda")
    out = torch.empty(4096, dtype=torch.float32, device="cuda")
    pdl = dict(PDL=True, launch_pdl=True) if args.pdl else dict(PDL=False)
    rows = []
    for kib in (int(k) for k in args.kib.split(",")):
        n_elems = max(kib * 512, 1024)  # bf16 elements per working program (>= one BLOCK)
        if kib == 0:
            work_now = torch.zeros_like(work)  # nothing streams: every program exits
        else:
            work_now = work
        copies = max(2, min(64, (400 << 20) // (args.work * n_elems * 2)))
        bufs = [torch.randn(args.work * n_elems, device="cuda").to(torch.bfloat16) for _ in range(copies)]
        for grid in (int(g) for g in args.grids.split(",")):
            def call(x, grid=grid):
                _stream_or_exit[(grid,)](work_now, x, out, n_elems, BLOCK=1024, num_warps=args.warps, **pdl)

            timer = GraphTimer(call, [(b,) for b in bufs])
            us = min(timer.time_us() for _ in range(5))
            rows.append(dict(kib=kib, working=int(work_now.item()), grid=grid, sms=sms, us=round(us, 3)))
            print(f"kib={kib:3d} working={int(work_now.item()):4d} grid={grid:4d} ({grid / sms:.2f} per SM): "
                  f"{us:6.2f} us", flush=True)
            del timer
        del bufs
        torch.cuda.empty_cache()
    if args.json:
        meta = {"device": torch.cuda.get_device_name(0), "pdl": args.pdl, "warps": args.warps}
        Path(args.json).write_text(json.dumps({**meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
