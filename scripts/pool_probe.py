"""Where a generate inside a MemoryPool region loses host time (bench_memory's generate runs
0.92-0.97x torch's allocator on the arena): host time of the small host<->device operations a
stock generate makes every step, on tensors from torch's own allocator vs from a pool region,
then torch.profiler's CPU self time per op over one generate of each kind, largest differences
first. Run it once with the arena (default) and once with AUTOGLM_POOL_VMM=0.

    python scripts/pool_probe.py [--top 15]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def per_call_us(fn, n=2000) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return 1e6 * (time.perf_counter() - t0) / n


def micro(label: str) -> dict:
    """Host us per call of the operations generate makes on small tensors each step."""
    flag = torch.ones(1, dtype=torch.bool, device="cuda")
    ids = torch.zeros(1, 8, dtype=torch.long, device="cuda")
    big = torch.empty(64 << 20, dtype=torch.uint8, device="cuda")
    out = {
        "item (D2H 1 byte + sync)": per_call_us(lambda: flag.item()),
        "tensor from host (H2D 16 bytes)": per_call_us(lambda: torch.tensor([1, 2], device="cuda")),
        "cat + del (small)": per_call_us(lambda: torch.cat([ids, ids], dim=-1)),
        "add_ (launch only)": per_call_us(lambda: ids.add_(0)),
        "empty 4 KiB + del": per_call_us(lambda: torch.empty(4096, dtype=torch.uint8, device="cuda")),
        "item of a 64 MiB tensor's byte": per_call_us(lambda: big[:1].item()),
    }
    print(f"\n{label}: host us per call")
    for k, v in out.items():
        print(f"  {k:40s} {v:8.2f}")
    return out


def profile_generate(model, ids, pool=None) -> dict:
    from torch.profiler import ProfilerActivity, profile

    import bench_memory as bm

    ctx = pool if pool is not None else torch.autograd.profiler.record_function("stock")
    bm._generate(model, ids, 16)
    with ctx:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            bm._generate(model, ids, bm.NEW_TOKENS)
    return {e.key: e.self_cpu_time_total for e in prof.key_averages()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    import bench_memory as bm

    from autoglm_kernels.memory import MemoryPool

    model = bm._build_model()
    ids = bm._prompt(model, bm.PROMPT_LEN)
    pool = MemoryPool()
    try:
        stock = micro("torch's allocator")
        with pool:
            inside = micro("inside a pool region")
        print("\nratio inside / outside:", {k: round(inside[k] / stock[k], 2) for k in stock})
        runs = {"stock": [], "pool": []}
        for _ in range(3):
            for name in ("stock", "pool"):
                t0 = time.perf_counter()
                if name == "pool":
                    with pool:
                        bm._generate(model, ids, bm.NEW_TOKENS)
                else:
                    bm._generate(model, ids, bm.NEW_TOKENS)
                torch.cuda.synchronize()
                runs[name].append(time.perf_counter() - t0)
        print("\ngenerate seconds:", {k: [round(x, 4) for x in v] for k, v in runs.items()})
        a = profile_generate(model, ids)
        b = profile_generate(model, ids, pool)
        keys = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, 0) - a.get(k, 0)))
        print(f"\nCPU self time over one generate (ms): op, stock, pool, pool - stock (top {args.top})")
        for k in keys[: args.top]:
            sa, sb = a.get(k, 0) / 1e3, b.get(k, 0) / 1e3
            print(f"  {k[:60]:60s} {sa:9.2f} {sb:9.2f} {sb - sa:+9.2f}")
        print("\npool stats:", {k: v for k, v in pool.stats().items() if k in ("allocs", "frees", "backing_allocs",
                                                                          "segments", "stream_waits")})
    finally:
        pool.close()


if __name__ == "__main__":
    main()
