"""Where a decode step's time goes under the engine: GPU time of the captured step against the
time generate takes per step, with the stop decided in lockstep (a host sync every step) and one
step late (the engine's default on CUDA), and the host time of the two per-step Python phases
before the graph launch (generate's prepare_inputs_for_generation and the engine's forward).

    python bench/step_breakdown.py --models llama3.2-1b,glm4-9b --modes patched,graph-stock --json out.json

GPU time: the batch-1 graph replayed back to back between CUDA events (weights far beyond the
L2), with the cache's length counters put back afterwards.
"""

from __future__ import annotations

import json
import statistics

import torch

from autoglm_kernels import engine
from autoglm_kernels.cli import bench
from autoglm_kernels.cli.bench import (_setup, environment, host_timers, measure_read_bandwidth, median_replay_ms,
                                       prompt_ids, script_models, script_parser, time_generate)


def graph_gpu_ms(eng, reps: int = 30, length: int = 64) -> float | None:
    """Median GPU ms of one replay of the engine's newest graph, with `length` valid positions."""
    slots = [s for s in eng.graphs.slots.values() if s.graph is not None]
    if not slots:
        return None
    slot = slots[-1]
    cache = slot.cache_ref() if slot.cache_ref else None
    counters = engine.cache_counters(cache) if cache is not None else []
    with torch.inference_mode():  # the counters are inference tensors (generate made them)
        saved = [c.clone() for c in counters]
        for c in counters:  # replay from this valid length (attention time follows it)
            c.fill_(length)
        ms = median_replay_ms(slot.graph, reps)
        for c, s in zip(counters, saved):
            c.copy_(s)
    return ms


def step_ms(model, ids, new_tokens: int, repeats: int) -> float:
    runs = [time_generate(model, ids, new_tokens) for _ in range(repeats)]
    return 1e3 * statistics.median((total - ttft) / (new_tokens - 1) for total, ttft in runs)


def breakdown(model, name: str, mode: str, new_tokens: int, repeats: int, gpu_lengths=()) -> dict:
    ids = prompt_ids(model, 1, 128)
    undo = _setup(model, mode)
    try:
        eng = engine.engine_of(model)
        if eng is None:  # patch_model installs the engine on CUDA only
            raise SystemExit(f"{name} {mode}: no decode engine on this model (the engine needs a CUDA device)")
        row = {"model": name, "mode": mode}
        for defer in (False, True):
            eng.defer_stop = defer
            time_generate(model, ids, new_tokens)  # warm-up (captures)
            row[f"step_ms_{'deferred' if defer else 'lockstep'}"] = round(step_ms(model, ids, new_tokens, repeats), 4)
        gpu = graph_gpu_ms(eng) if ids.is_cuda else None
        row["graph_gpu_ms"] = round(gpu, 4) if gpu else None
        if ids.is_cuda and gpu_lengths:  # the lengths generate steps through (prompt .. prompt + new)
            row["graph_gpu_ms_at_length"] = {n: round(graph_gpu_ms(eng, length=n), 4) for n in gpu_lengths}
        # host time of the phases before each launch, in the lockstep loop
        eng.defer_stop = False
        with host_timers(model, "prepare_inputs_for_generation", "forward") as timers:
            time_generate(model, ids, new_tokens)
        row["host_us_prepare_inputs"] = timers["prepare_inputs_for_generation"].us()
        row["host_us_forward"] = timers["forward"].us()
        row["engine"] = eng.stats()
        return row
    finally:
        undo()


def main() -> None:
    p = script_parser(__doc__, modes="patched,graph-stock", repeats=3)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--gpu-lengths", default="", help="comma list: also the graph's GPU time at these valid lengths")
    args = p.parse_args()
    eos = bench.set_eos_harness(args.stop_at_eos)
    device = "cpu" if args.tiny else "cuda"
    bw = measure_read_bandwidth() if device == "cuda" else None
    lengths = [int(n) for n in args.gpu_lengths.split(",") if n]
    rows = []
    for name, model in script_models(args.models, args.tiny):
        for mode in args.modes.split(","):
            row = breakdown(model, name, mode, args.new_tokens, args.repeats, lengths)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "read_bandwidth_Bps": bw,
                       "eos": eos, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
