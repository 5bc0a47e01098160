"""End-to-end `model.generate`, stock vs patched: llama3.2-1b and glm4-9b shapes, random weights,
bf16, batch 1, prompt 128, 32 new tokens (greedy, no early stop). The CLI `autoglm-kernels bench`
runs the same measurement over more models and modes.

pytest-benchmark times whole generate calls; extra_info holds the decode figures (tok_per_s,
ms_per_token after the first token, ttft_ms, pct_of_bw_limit against the read bandwidth measured
in this run), which bench/report.py puts in its end-to-end table.
"""

import statistics

import pytest
import torch

MODELS = ("llama3.2-1b", "glm4-9b")
CASES = [(m, impl) for m in MODELS for impl in ("stock", "patched")]  # stock first: patching mutates
BATCH, PROMPT_LEN, NEW_TOKENS = 1, 128, 32


@pytest.fixture(scope="module")
def models():
    """Builds each model once (random weights straight on the GPU) and frees it when the next is asked for."""
    held = {}

    def get(name):
        if name not in held:
            held.clear()
            torch.cuda.empty_cache()
            from autoglm_kernels.demo_model import random_model

            held[name] = random_model(name, dtype=torch.bfloat16, device="cuda")
        return held[name]

    yield get
    held.clear()
    torch.cuda.empty_cache()


@pytest.mark.parametrize("name,impl", CASES, ids=[f"{m}-{i}" for m, i in CASES])
def test_generate(benchmark, models, bandwidth, name, impl):
    from autoglm_kernels.cli.bench import bytes_per_step, prompt_ids, time_generate

    benchmark.group = f"generate {name}"
    model = models(name)
    ids = prompt_ids(model, BATCH, PROMPT_LEN)
    if impl == "patched":
        from autoglm_kernels.patch import patch_model, unpatch_model

        patch_model(model)
    try:
        torch.cuda.reset_peak_memory_stats()
        time_generate(model, ids, NEW_TOKENS)  # warm-up: Triton compilation, graph capture
        runs = []
        benchmark.pedantic(lambda: runs.append(time_generate(model, ids, NEW_TOKENS)), rounds=3, iterations=1)
        if any(t is None for _, t in runs):  # generate did not stream: time the prefill on its own
            runs = [(total, time_generate(model, ids, 1)[0]) for total, _ in runs]
    finally:
        if impl == "patched":
            unpatch_model(model)
    decode_s = statistics.median(total - ttft for total, ttft in runs) / (NEW_TOKENS - 1)
    weights, kv = bytes_per_step(model, BATCH, PROMPT_LEN, NEW_TOKENS)
    benchmark.extra_info.update(
        impl=impl, model=name, batch=BATCH, prompt_len=PROMPT_LEN, new_tokens=NEW_TOKENS,
        tok_per_s=round(BATCH / decode_s, 1), ms_per_token=round(1e3 * decode_s, 3),
        ttft_ms=round(1e3 * statistics.median(t for _, t in runs), 2),
        pct_of_bw_limit=round(100 * (weights + kv) / bandwidth / decode_s, 1),
        read_bw_gb_per_s=round(bandwidth / 1e9, 1),
        peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
    )
