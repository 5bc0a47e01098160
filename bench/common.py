"""GPU timing shared by every benchmark.

Kernel figures are GPU time, not launch overhead: each measured function is captured into a
CUDA graph that calls it once per input set, over enough input sets (rotation) that the
weights/caches are not served from the 50 MB L2; replays are timed with CUDA events and the
median per call is reported. Read bandwidth is measured in the same run by a large read-only
reduction, so "% of bandwidth" compares against this GPU as it is now.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Callable, Sequence

import torch

from autoglm_kernels import ops
from autoglm_kernels.cli.bench import measure_read_bandwidth, median_replay_ms

L2_ROTATE_BYTES = 50 * 2**20 * 8  # rotate over > 8x the L2 so every call reads from HBM


def copies_for(bytes_per_set: int, min_copies: int = 2, max_copies: int = 64) -> int:
    """How many input sets to rotate over so their total exceeds L2_ROTATE_BYTES."""
    need = -(-L2_ROTATE_BYTES // max(1, bytes_per_set))
    return max(min_copies, min(max_copies, need))


class GraphTimer:
    """Captures `fn(*args)` for each args in `arg_sets` into one CUDA graph; times replays."""

    def __init__(self, fn: Callable, arg_sets: Sequence[tuple], warmup: int = 2):
        self.calls = len(arg_sets)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (compiles Triton kernels, creates cuBLAS handles)
            for _ in range(warmup):
                for a in arg_sets:
                    fn(*a)
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for a in arg_sets:
                fn(*a)
        torch.cuda.synchronize()

    def replay(self) -> None:
        self.graph.replay()
        torch.cuda.synchronize()

    def time_us(self, reps: int = 20) -> float:
        """Median GPU time per call, in microseconds."""
        self.graph.replay()
        return median_replay_ms(self.graph, reps) * 1e3 / self.calls


class StockAttnModule:
    """The attributes transformers' sdpa_attention_forward reads from an attention module, so the
    attention benchmarks can time the stock path exactly as a model calls it."""

    def __init__(self, groups: int):
        self.num_key_value_groups = groups
        self.is_causal = True
        self.training = False


def read_only_sum(nbytes: int, copies: int) -> GraphTimer:
    """A GraphTimer of the read-only sum over `nbytes` of bf16 (fp32 accumulation), rotated over
    `copies` buffers (bench_read_floor: the read that defines the read bandwidth, at smaller sizes)."""
    out = torch.empty((), device="cuda", dtype=torch.float32)
    sets = [(torch.randn(nbytes // 2, device="cuda", dtype=torch.bfloat16),) for _ in range(copies)]
    return GraphTimer(lambda x: torch.sum(x, dim=0, dtype=torch.float32, out=out), sets)


# Achievable read bandwidth in bytes/s (a 1 GiB read-only sum, GPU-timed): the one measurement
# `autoglm-kernels bench` makes too.
read_bandwidth = measure_read_bandwidth


def stock_linear(x, w, b, act):
    """What transformers does today: F.linear, then the stock activation ops (GLM4's chunk/silu/mul)."""
    return ops.stock_activation(torch.nn.functional.linear(x, w, b), act)


def paired_us(timers: dict[str, GraphTimer], rounds: int = 21) -> dict[str, float]:
    """Median GPU time per call of each timer, from replays that alternate between them (the order
    flips every round): clock drift over the run (power, heat: a compute-bound GEMM measured
    alone after another ran at other clocks, 0.93-1.10x for one and the same cuBLAS call) then
    falls on every side alike instead of on whichever case ran second."""
    for t in timers.values():
        t.graph.replay()
    times: dict[str, list[float]] = {k: [] for k in timers}
    keys = list(timers)
    for r in range(rounds):
        for k in keys if r % 2 == 0 else keys[::-1]:
            times[k].append(median_replay_ms(timers[k].graph, 1) * 1e3 / timers[k].calls)
    return {k: statistics.median(v) for k, v in times.items()}


_CASE: dict = {}  # the one case whose timers are alive: key -> (timers, GPU us per impl, extra)


def paired_case(key, build: Callable[[], tuple[dict[str, GraphTimer], object]]):
    """(timers, GPU us per impl, extra) of one benchmark case whose impls are timed together:
    build() -> (timers by impl, extra) runs, and paired_us times them, for whichever of the case's
    tests comes first; the others reuse it. One case is kept: a new key frees the last one's
    graphs and rotated inputs first."""
    if key not in _CASE:
        _CASE.clear()
        torch.cuda.empty_cache()
        timers, extra = build()
        _CASE[key] = (timers, paired_us(timers), extra)
    return _CASE[key]


def pct_of_read_bw(nbytes: int, us: float, bandwidth: float) -> float:
    """`nbytes` moved in `us` microseconds, as a percentage (one decimal) of the read bandwidth."""
    return round(100 * nbytes / (us * 1e-6) / bandwidth, 1)


def write_rows_json(path: str | None, bandwidth: float, rows: list[dict]) -> None:
    """A tuning script's rows as JSON at `path` (None: nothing), with the device and the read
    bandwidth measured in the same run."""
    if path:
        payload = {"device": torch.cuda.get_device_name(0), "read_bw_gb_per_s": bandwidth / 1e9, "rows": rows}
        Path(path).write_text(json.dumps(payload, indent=1))


def record(benchmark, timer: GraphTimer, *, impl: str, bandwidth: float, bytes_moved: int = 0,
           flops: int = 0, us: float | None = None, **extra) -> float:
    """Run pytest-benchmark over graph replays and store the GPU-time figures in extra_info
    (`us`: the GPU time per call measured already, e.g. by paired_us; else timer.time_us())."""
    if us is None:
        us = timer.time_us()
    benchmark.extra_info.update(impl=impl, gpu_us=round(us, 3), **extra)
    if bytes_moved:
        gbs = bytes_moved / (us * 1e-6) / 1e9
        benchmark.extra_info.update(bytes=bytes_moved, gb_per_s=round(gbs, 1),
                                    pct_of_read_bw=pct_of_read_bw(bytes_moved, us, bandwidth),
                                    read_bw_gb_per_s=round(bandwidth / 1e9, 1))
    if flops:
        benchmark.extra_info.update(tflop_per_s=round(flops / (us * 1e-6) / 1e12, 1))
    benchmark.pedantic(timer.replay, rounds=10, iterations=1, warmup_rounds=1)
    return us
