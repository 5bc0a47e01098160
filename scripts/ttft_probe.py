"""Where a patched model's time to first token goes before and in the prefill, on the host:
the host time before, in and after the prefill forward for stock, patched-eager and patched;
for patched also every synchronizing CUDA call of one 2-token generate (torch.cuda.set_sync_debug_mode,
with the caller's stack), the engine's steps before the prefill, and a cProfile listing sorted by
cumulative time.

    python scripts/ttft_probe.py llama3.2-1b llama3.1-8b > probe.txt
"""
import sys
import time
import traceback
import warnings

import torch

from autoglm_kernels import engine
from autoglm_kernels.cli.bench import _setup, cprofile_listing, host_timers, prompt_ids, time_generate
from autoglm_kernels.demo_model import random_model


def syncs(model, ids) -> list[str]:
    """One short stack (our and transformers' frames) per synchronizing CUDA call of a generate."""
    seen = []

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-2] if "site-packages/torch/" not in f.filename]
        seen.append(" <- ".join(f"{f.filename.split('/')[-1]}:{f.lineno}:{f.name}" for f in frames[-4:][::-1]))

    old = warnings.showwarning
    warnings.showwarning = record
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                time_generate(model, ids, 2)
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        warnings.showwarning = old
    return seen


def engine_steps(model, ids) -> dict:
    """Host ms of the engine's plan and cache hand-out, and from generate's start to the prefill forward."""
    eng = engine.engine_of(model)
    spans = {}

    def timed(obj, name):
        fn = getattr(obj, name)

        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spans[name] = spans.get(name, 0.0) + 1e3 * (time.perf_counter() - t)
        setattr(obj, name, wrapper)
        return lambda: delattr(obj, name) if name in obj.__dict__ else None

    undo = [timed(eng, "_generate_plan"), timed(eng.caches, "get")]
    start = {}
    fwd = eng._eager_forward

    def first_forward(*a, **k):
        start.setdefault("t", time.perf_counter())
        return fwd(*a, **k)
    eng._eager_forward = first_forward
    marks = {}
    try:
        time_generate(model, ids, 2, marks=marks)
    finally:
        eng._eager_forward = fwd
        for u in undo:
            u()
    spans["generate start -> prefill forward"] = 1e3 * (start["t"] - marks["start"])
    return {k: round(v, 3) for k, v in spans.items()}


def timeline(model, ids, repeats: int = 5) -> dict:
    """Median host ms from generate's start to the prefill forward, in it, and from it to the first token."""
    rows = []
    for _ in range(repeats):
        marks = {}
        with host_timers(model, "forward") as t:
            time_generate(model, ids, 2, marks=marks)
        a, b = t["forward"].first
        rows.append((a - marks["start"], b - a, marks["first_token"] - b, marks["first_token"] - marks["start"]))
    keys = ("before", "forward", "after", "ttft")
    return {k: round(1e3 * sorted(r[i] for r in rows)[len(rows) // 2], 2) for i, k in enumerate(keys)}


for name in sys.argv[1:] or ["llama3.2-1b"]:
    model = random_model(name)
    ids = prompt_ids(model, 1, 128)
    for mode in ("stock", "patched-eager", "patched"):
        undo = _setup(model, mode)
        for _ in range(3):
            time_generate(model, ids, 2)
        print(f"== {name} {mode}: {timeline(model, ids)}", flush=True)
        if mode == "patched" and engine.engine_of(model) is not None:
            print("  engine steps (ms):", engine_steps(model, ids))
            for s in syncs(model, ids):
                print("  sync:", s)
            print(cprofile_listing(lambda: time_generate(model, ids, 2), sort="cumulative", lines=60)[:9000])
        undo()
    model = None  # freed before the next model is built
    torch.cuda.empty_cache()
