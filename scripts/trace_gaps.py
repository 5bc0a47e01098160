"""Where the GPU idles in a profiled generate: reads a Chrome trace written by
`python -m autoglm_kernels profile --trace DIR` and prints the GPU's busy and idle time between
its first and last activity, the device time by the host call that launched it (graph replays,
single kernels, copies), the idle gaps by the device activity that ends them, and the host calls
(CUDA runtime) that were running while the GPU idled longest. With CUDA-graph replays in the
trace, only the span from the first replay on is read (the decode steps; the eager prefill
before it is host-bound and would dominate); --whole reads everything.

    python scripts/trace_gaps.py DIR/llama3.2-1b_patched.json [--top 15] [--whole]
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trace")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--min-gap-us", type=float, default=2.0)
    p.add_argument("--whole", action="store_true", help="the whole trace, prefill included")
    args = p.parse_args()
    opener = gzip.open if args.trace.endswith(".gz") else open
    events = json.load(opener(args.trace))["traceEvents"]
    replays = [e["ts"] for e in events if e.get("name") == "cudaGraphLaunch"]
    start = min(replays) if replays and not args.whole else float("-inf")
    gpu = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")
                  and e["ts"] >= start), key=lambda e: e["ts"])
    host = [e for e in events if e.get("ph") == "X" and e.get("cat") == "cuda_runtime"]
    if not gpu:
        raise SystemExit("no device activity in the trace")
    busy = sum(e["dur"] for e in gpu)
    span = gpu[-1]["ts"] + gpu[-1]["dur"] - gpu[0]["ts"]
    gaps = []
    end = gpu[0]["ts"] + gpu[0]["dur"]
    for e in gpu[1:]:
        if e["ts"] - end >= args.min_gap_us:
            gaps.append((e["ts"] - end, end, e["name"]))
        end = max(end, e["ts"] + e["dur"])
    idle = sum(g for g, _, _ in gaps)
    print(f"{'whole trace' if start == float('-inf') else f'from the first of {len(replays)} graph replays'}: "
          f"device activities {len(gpu)}; span {span / 1e3:.2f} ms; busy {busy / 1e3:.2f} ms; "
          f"idle in gaps >= {args.min_gap_us} us: {idle / 1e3:.2f} ms in {len(gaps)} gaps")
    launcher = {e["args"].get("correlation"): e["name"] for e in host if "correlation" in e.get("args", {})}
    by_launcher = defaultdict(lambda: [0, 0.0])
    for e in gpu:
        name = launcher.get(e.get("args", {}).get("correlation"), "?")
        by_launcher[name][0] += 1
        by_launcher[name][1] += e["dur"]
    print("\ndevice time by the host call that launched it:")
    for name, (n, us) in sorted(by_launcher.items(), key=lambda kv: -kv[1][1]):
        print(f"  {us:9.1f} us  {n:5d} activities  {name}")
    by_next = defaultdict(lambda: [0, 0.0])
    for g, _, name in gaps:
        by_next[name[:70]][0] += 1
        by_next[name[:70]][1] += g
    print("\nidle time by the activity that ends the gap:")
    for name, (n, us) in sorted(by_next.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"  {us:9.1f} us  {n:5d} gaps  {name}")
    print("\nlongest gaps: host runtime calls overlapping them")
    for g, start, name in sorted(gaps, reverse=True)[:args.top]:
        over = defaultdict(float)
        for h in host:
            lo, hi = max(h["ts"], start), min(h["ts"] + h["dur"], start + g)
            if hi > lo:
                over[h["name"]] += hi - lo
        calls = ", ".join(f"{k} {v:.0f}" for k, v in sorted(over.items(), key=lambda kv: -kv[1])[:4])
        print(f"  {g:8.1f} us before {name[:50]:50s} | {calls}")


if __name__ == "__main__":
    main()
