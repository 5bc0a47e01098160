"""MemoryPool (autoglm_kernels/memory.py) against torch's CUDA caching allocator ("stock").

1. generate: llama3.2-1b shapes with 4 layers (random weights, bf16, batch 1, prompt 128,
   128 new tokens), each generate in its own `with pool:` region. Targets: tokens identical to
   stock; zero backing cudaMalloc during the decode steps after the first (an untimed region
   with a LogitsProcessor that snapshots the pool's stats once per step); tok/s >= 0.98x stock
   by both the ratio of the medians of PAIRS alternating timed generates (BENCH_MEMORY_PAIRS,
   default 8) and the median of the per-pair ratios (none with a logits processor: the probe's
   host time per step once made only the pool's runs slower).
2. alloc_free: host time of torch.empty + del over the tensor sizes of one decode step, inside
   vs outside the pool. Target: <= 1.5x stock.
3. peak_reserved: 20 generates with prompt lengths 16..4096 (shuffled), each allocator in its
   own fresh process. Stock: torch's max_memory_reserved over the trace minus what the model
   and a warm-up generate hold before it. Pool: the pool's peak reserved bytes, one region per
   generate. Target: pool <= stock.

Figures go to extra_info (the `fused` entry also holds the stock figure measured in the same
test and the ratio) and one summary line per benchmark is printed.
"""

import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

MODEL, NUM_LAYERS = "llama3.2-1b", 4
PROMPT_LEN, NEW_TOKENS = 128, 128
# Tensor sizes (bytes) allocated in one decode step of llama3.2-1b, batch 1, bf16: hidden states,
# fp32 norm temporaries, q/k/v, KV-cache concatenation at ~256 tokens, MLP, logits (bf16, fp32).
DECODE_STEP_SIZES = (4096, 8192, 4096, 4096, 1024, 1024, 262144, 262144, 4096, 4096, 16384, 16384, 16384,
                     16384, 4096, 8192, 4096, 256512, 513024, 8)
TRACE_PROMPTS = [round(16 * 256 ** (i / 19)) for i in range(20)]  # 16 .. 4096, geometric
random.Random(0).shuffle(TRACE_PROMPTS)
TRACE_NEW_TOKENS = 16
PAIRS = int(os.environ.get("BENCH_MEMORY_PAIRS", "8"))  # timed generate pairs (pool, stock) in test_generate
IMPLS = ("stock", "fused")
MiB = 2**20


def _build_model():
    """The reference model with NUM_LAYERS layers, random weights built on the CPU and moved to the
    GPU in one pass, so the weights fill torch's segments without holes. (Built on the GPU, random
    init left about 500 MiB free inside the weights' segments: the stock trace reused that space,
    which no MemoryPool region can, so peak_reserved compared model builds, not allocators.)"""
    from transformers import AutoModelForCausalLM

    from autoglm_kernels.models import reference_config

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(reference_config(MODEL, num_layers=NUM_LAYERS), dtype=torch.bfloat16)
    m.to("cuda").eval()
    m.generation_config.eos_token_id = None  # always generate every token
    m.generation_config.pad_token_id = 0
    return m


@pytest.fixture(scope="module")
def model():
    m = _build_model()
    yield m
    del m
    torch.cuda.empty_cache()


def _prompt(model, length, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randint(1, model.config.vocab_size, (1, length), device="cuda", generator=g)


def _generate(model, ids, new_tokens, processors=None):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                          logits_processor=LogitsProcessorList(processors or []))


def _timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def _summary(capsys, line):
    with capsys.disabled():
        print(f"\n[bench_memory] {line}")


class _BackingAllocsPerStep(LogitsProcessor):
    """A LogitsProcessor (called once per generated token, after that step's forward) that records
    the pool's backing-allocation count: entry 0 follows the prefill, entry 1 the first decode step."""

    def __init__(self, pool):
        self.pool, self.counts = pool, []

    def __call__(self, input_ids, scores):
        self.counts.append(self.pool.stats()["backing_allocs"])
        return scores


def _pool_generate(pool, model, ids, probe=None):
    """One generate in its own region; (seconds, tokens, backing allocs in the region)."""
    start = pool.stats()["backing_allocs"]
    with pool:
        seconds, out = _timed(lambda: _generate(model, ids, NEW_TOKENS, [probe] if probe else None))
        allocs = pool.stats()["backing_allocs"] - start
    return seconds, out, allocs


def _probed_pool_generate(pool, model, ids):
    """One untimed generate in its own region with a per-step probe; (tokens, backing allocs:
    prefill, first decode step, later steps)."""
    probe = _BackingAllocsPerStep(pool)
    start = pool.stats()["backing_allocs"]
    _, out, total = _pool_generate(pool, model, ids, probe)
    c = probe.counts
    return out, (c[0] - start, c[1] - c[0], start + total - c[1])


@pytest.mark.parametrize("impl", IMPLS)
def test_generate(benchmark, model, capsys, impl):
    benchmark.group = f"memory_pool generate {MODEL}x{NUM_LAYERS}L prompt {PROMPT_LEN} new {NEW_TOKENS}"
    ids = _prompt(model, PROMPT_LEN)
    ref_s, ref = _timed(lambda: _generate(model, ids, NEW_TOKENS))  # also the warm-up
    info = dict(impl=impl, model=MODEL, num_layers=NUM_LAYERS, batch=1, prompt_len=PROMPT_LEN, new_tokens=NEW_TOKENS)
    if impl == "stock":
        runs = []
        benchmark.pedantic(lambda: runs.append(_timed(lambda: _generate(model, ids, NEW_TOKENS))[0]),
                           rounds=3, iterations=1)
        info.update(tok_per_s=round(NEW_TOKENS / statistics.median(runs), 1))
        benchmark.extra_info.update(info)
        _summary(capsys, f"generate stock: {info['tok_per_s']} tok/s")
        return

    from autoglm_kernels.memory import MemoryPool

    pool = MemoryPool()
    try:
        # Untimed: the first region (the arena grows here) and one region with the per-step probe
        # (a LogitsProcessor costs host time every step, so the timed runs below have none, in
        # either allocator).
        cold_out, cold = _probed_pool_generate(pool, model, ids)
        warm_out, steady = _probed_pool_generate(pool, model, ids)
        stock_runs, pool_runs, region_allocs = [], [], []

        def one_stock_run():
            stock_runs.append(_timed(lambda: _generate(model, ids, NEW_TOKENS))[0])

        def one_pool_run():
            seconds, out, allocs = _pool_generate(pool, model, ids)
            pool_runs.append(seconds)
            region_allocs.append(allocs)
            assert torch.equal(out, ref), "tokens differ inside the pool"

        def one_pair():  # the allocators alternate, and which goes first alternates too, so that
            first, second = (one_pool_run, one_stock_run) if len(pool_runs) % 2 else (one_stock_run, one_pool_run)
            first()  # drift of a noisy host hits both alike
            second()

        benchmark.pedantic(one_pair, rounds=PAIRS, iterations=1)
        s = pool.stats()
    finally:
        pool.close()
    stock_tps = NEW_TOKENS / statistics.median(stock_runs)
    pool_tps = NEW_TOKENS / statistics.median(pool_runs)
    decode_allocs = steady[2]
    # The same ratio per pair (its two runs are adjacent in time), then the median: drift of the
    # host's speed over the test, which moves both medians unevenly, cancels within a pair.
    pair_ratio = statistics.median(st / pt for st, pt in zip(stock_runs, pool_runs))
    info.update(
        tok_per_s=round(pool_tps, 1), stock_tok_per_s=round(stock_tps, 1), speed_vs_stock=round(pool_tps / stock_tps, 3),
        speed_vs_stock_per_pair=round(pair_ratio, 3),
        pairs=PAIRS, pool_runs_s=[round(x, 4) for x in pool_runs], stock_runs_s=[round(x, 4) for x in stock_runs],
        tokens_identical=bool(torch.equal(cold_out, ref) and torch.equal(warm_out, ref)),
        backing_allocs_decode_after_first_step=decode_allocs,
        backing_allocs_steady_prefill=steady[0], backing_allocs_steady_first_step=steady[1],
        backing_allocs_per_timed_generate=max(region_allocs),
        cold_backing_allocs_prefill=cold[0], cold_backing_allocs_first_step=cold[1],
        cold_backing_allocs_later_steps=cold[2],
        pool_reserved_mib=round(s["reserved_bytes"] / MiB, 1), pool_segments=s["segments"],
    )
    info.update(target_met=bool(decode_allocs == 0 and min(pool_tps / stock_tps, pair_ratio) >= 0.98
                                and info["tokens_identical"]))
    benchmark.extra_info.update(info)
    _summary(capsys, f"generate pool: {info['tok_per_s']} tok/s vs stock {info['stock_tok_per_s']} "
                     f"({info['speed_vs_stock']}x, median of {PAIRS} alternating pairs; median of the per-pair "
                     f"ratios {info['speed_vs_stock_per_pair']}x), tokens identical "
                     f"{info['tokens_identical']}, backing cudaMalloc in decode after step 1: {decode_allocs} "
                     f"(cold run: prefill {cold[0]}, step 1 {cold[1]}, later {cold[2]}), per timed generate "
                     f"{info['backing_allocs_per_timed_generate']}, arena {info['pool_reserved_mib']} MiB in "
                     f"{s['segments']} segments")


def _churn(iterations):
    """torch.empty + del over one decode step's tensor sizes; host seconds per alloc+free pair."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iterations):
        ts = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in DECODE_STEP_SIZES]
        del ts
    return (time.perf_counter() - t0) / (iterations * len(DECODE_STEP_SIZES))


@pytest.mark.parametrize("impl", IMPLS)
def test_alloc_free(benchmark, capsys, impl):
    benchmark.group = f"memory_pool alloc+free decode-step sizes x{len(DECODE_STEP_SIZES)}"
    iterations = 2000
    _churn(200)  # warm torch's cache
    info = dict(impl=impl, tensors_per_step=len(DECODE_STEP_SIZES), iterations=iterations)
    if impl == "stock":
        per_op = []
        benchmark.pedantic(lambda: per_op.append(_churn(iterations)), rounds=5, iterations=1)
        info.update(ns_per_alloc_free=round(1e9 * statistics.median(per_op), 1))
        benchmark.extra_info.update(info)
        _summary(capsys, f"alloc+free stock: {info['ns_per_alloc_free']} ns per pair")
        return

    from autoglm_kernels.memory import MemoryPool

    pool = MemoryPool()
    try:
        stock = [_churn(iterations) for _ in range(5)]
        fused = []
        with pool:
            _churn(200)
            benchmark.pedantic(lambda: fused.append(_churn(iterations)), rounds=5, iterations=1)
            assert pool.stats()["allocs"] > 0
    finally:
        pool.close()
    ratio = statistics.median(fused) / statistics.median(stock)
    info.update(ns_per_alloc_free=round(1e9 * statistics.median(fused), 1),
                stock_ns_per_alloc_free=round(1e9 * statistics.median(stock), 1),
                time_vs_stock=round(ratio, 3), target_met=bool(ratio <= 1.5))
    benchmark.extra_info.update(info)
    _summary(capsys, f"alloc+free pool: {info['ns_per_alloc_free']} ns per pair vs stock "
                     f"{info['stock_ns_per_alloc_free']} ns ({info['time_vs_stock']}x)")


def _trace(model, pool=None):
    for i, length in enumerate(TRACE_PROMPTS):
        ids = _prompt(model, length, seed=i)
        if pool is None:
            _generate(model, ids, TRACE_NEW_TOKENS)
        else:
            with pool:  # the output dies inside the region, so all its memory returns at the exit
                _generate(model, ids, TRACE_NEW_TOKENS)
    torch.cuda.synchronize()


def trace_peak(impl: str) -> dict:
    """What the trace needs above the model and a warm-up generate, for one allocator. Call it in
    a fresh process (see _fresh): in a pytest process, blocks cached or held by earlier tests
    (torch's cache, the pool's device arena) make the stock figure too small or the pool's too big."""
    m = _build_model()
    _generate(m, _prompt(m, 64), 2)  # warm-up (cuBLAS workspaces etc.), outside any pool
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved()
    weights = sum(p.numel() * p.element_size() for p in m.parameters())
    if impl == "stock":
        torch.cuda.reset_peak_memory_stats()
        _trace(m)
        peak = torch.cuda.max_memory_reserved()
        return dict(peak_reserved_bytes=peak - base, reserved_before_bytes=base, weight_bytes=weights,
                    process_peak_bytes=peak)
    from autoglm_kernels.memory import MemoryPool

    pool = MemoryPool()
    try:
        _trace(m, pool)
        s = pool.stats()
        pool.check()
    finally:
        pool.close()
    # the process holds torch's own reserve (the model) plus the arena
    return dict(peak_reserved_bytes=s["peak_reserved_bytes"], reserved_before_bytes=base, weight_bytes=weights,
                process_peak_bytes=base + s["peak_reserved_bytes"], backing_allocs=s["backing_allocs"],
                backing_frees=s["backing_frees"], segments=s["segments"])


def _fresh(impl: str) -> dict:
    """trace_peak(impl) in a new Python process (a clean CUDA context)."""
    code = f"import json, bench_memory; print(json.dumps(bench_memory.trace_peak({impl!r})))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"trace_peak({impl!r}) failed in its process:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("impl", IMPLS)
def test_peak_reserved(benchmark, capsys, impl):
    benchmark.group = f"memory_pool peak reserved, {len(TRACE_PROMPTS)} generates prompt 16..4096"
    info = dict(impl=impl, prompts=TRACE_PROMPTS, new_tokens=TRACE_NEW_TOKENS, fresh_process_each=True)
    out = []
    benchmark.pedantic(lambda: out.append(_fresh(impl)), rounds=1, iterations=1)
    r = out[0]
    info.update(peak_reserved_mib=round(r["peak_reserved_bytes"] / MiB, 1),
                reserved_before_mib=round(r["reserved_before_bytes"] / MiB, 1),
                weight_mib=round(r["weight_bytes"] / MiB, 1), process_peak_mib=round(r["process_peak_bytes"] / MiB, 1))
    if impl == "stock":
        benchmark.extra_info.update(info)
        _summary(capsys, f"peak reserved stock: {info['peak_reserved_mib']} MiB over the trace, own process "
                         f"(reserved before it: {info['reserved_before_mib']} MiB)")
        return
    stock = _fresh("stock")  # the target's comparison, measured in this test too
    info.update(stock_peak_reserved_mib=round(stock["peak_reserved_bytes"] / MiB, 1),
                vs_stock=round(r["peak_reserved_bytes"] / max(1, stock["peak_reserved_bytes"]), 3),
                stock_process_peak_mib=round(stock["process_peak_bytes"] / MiB, 1),
                pool_backing_allocs=r["backing_allocs"], pool_backing_frees=r["backing_frees"],
                pool_segments=r["segments"],
                target_met=bool(r["peak_reserved_bytes"] <= stock["peak_reserved_bytes"]))
    benchmark.extra_info.update(info)
    _summary(capsys, f"peak reserved pool: {info['peak_reserved_mib']} MiB vs stock {info['stock_peak_reserved_mib']} MiB "
                     f"over the same trace, each in its own process ({info['vs_stock']}x), "
                     f"{r['backing_allocs']} cudaMalloc calls; process peak {info['process_peak_mib']} vs "
                     f"{info['stock_process_peak_mib']} MiB")
