"""Where a patched model's time to first token goes before and in the prefill, on the host:
every synchronizing CUDA call of one 2-token generate (torch.cuda.set_sync_debug_mode, with the
caller's stack), the engine's steps before the prefill timed one by one, and a cProfile listing
sorted by cumulative time. Stock first for comparison.

    python scripts/ttft_probe.py llama3.2-1b > probe.txt
"""
import cProfile
import io
import pstats
import sys
import time
import traceback
import warnings

import torch

from autoglm_kernels import engine, patch_model
from autoglm_kernels.cli.bench import prompt_ids, time_generate
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


def cprofile(model, ids) -> str:
    pr = cProfile.Profile()
    pr.enable()
    time_generate(model, ids, 2)
    pr.disable()
    out = io.StringIO()
    pstats.Stats(pr, stream=out).sort_stats("cumulative").print_stats(60)
    return out.getvalue()


name = sys.argv[1] if len(sys.argv) > 1 else "llama3.2-1b"
model = random_model(name)
ids = prompt_ids(model, 1, 128)
for mode in ("stock", "patched"):
    if mode == "patched":
        patch_model(model)
    for _ in range(3):
        time_generate(model, ids, 2)
    ttft = sorted(time_generate(model, ids, 2)[1] for _ in range(5))[2]
    print(f"== {name} {mode}: TTFT {1e3 * ttft:.2f} ms")
    for s in syncs(model, ids):
        print("  sync:", s)
    if mode == "patched":
        print("  engine steps (ms):", engine_steps(model, ids))
        print(cprofile(model, ids)[:12000])
