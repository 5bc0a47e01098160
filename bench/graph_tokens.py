"""Greedy tokens of the engine's CUDA-graph decode against the eager patched model (#8's
correctness target), on the full-size reference models with random weights.

    python bench/graph_tokens.py --models llama3.2-1b,opt-1.3b,llama3.1-8b,glm4-9b,autoglm-phone-9b --json out.json

Per model, one random prompt, greedy, exactly `--new-tokens` tokens (min_new_tokens holds EOS off), bf16:
  graph:         patch_model(model) (fused kernels + the engine's captured decode), run twice: the
                 first call prefills eagerly, the repeat through the prefill graph its shape earned
  eager, graph kernels: patch_model(model, cuda_graphs=False) over a static cache, run inside
                 engine.graph_step(), so each op picks the kernel the captured step runs
  eager:         the same without graph_step(): eager forwards pick the kernels with the least
                 host time where the fused one does not pay off (aten linear for plain projections)
Reports, against the graph's tokens, the first position where each differs (null: identical) and,
where the plain eager run differs, the graph's top-2 logit gap at that step (random weights leave
near-ties; `bench/accuracy.py` measures how far any bf16 model drifts from fp32).
--tiny runs tiny fp32 models on the CPU (a smoke run of this script: no graphs there).
"""

from __future__ import annotations

import argparse
import json

import torch

from autoglm_kernels import engine, patch_model, unpatch_model
from autoglm_kernels.cli.bench import environment, prompt_ids, script_models
from autoglm_kernels.cli.demo import first_divergence


def generate(model, ids, new_tokens: int, **kwargs):
    """(new token ids [n], per-step scores [n, vocab]) of a greedy generate that makes exactly new_tokens."""
    out = model.generate(input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         return_dict_in_generate=True, output_scores=True, **kwargs)
    return out.sequences[0, ids.shape[1]:], torch.stack(out.scores, 1)[0]


def top2_gap(scores: torch.Tensor, step: int) -> float:
    top = scores[step].float().topk(2).values
    return round(float(top[0] - top[1]), 5)


def compare(model, name: str, new_tokens: int, prompt_len: int) -> dict:
    ids = prompt_ids(model, 1, prompt_len)
    eager_kwargs = {"cache_implementation": "static", "disable_compile": True}
    patch_model(model, cuda_graphs=False)
    try:
        with engine.graph_step():
            same_kernels, _ = generate(model, ids, new_tokens, **eager_kwargs)
        eager, _ = generate(model, ids, new_tokens, **eager_kwargs)
    finally:
        unpatch_model(model)
    patch_model(model)
    try:
        graph, scores = generate(model, ids, new_tokens)
        graph_again, _ = generate(model, ids, new_tokens)
        eng = engine.engine_of(model)
        stats = eng.stats() if eng is not None else None  # replays > 0: the graph did decode
    finally:
        unpatch_model(model)
    eager_diff = first_divergence(eager, graph)
    return {
        "model": name, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "graph_repeat_first_difference": first_divergence(graph_again, graph),
        "eager_graph_kernels_first_difference": first_divergence(same_kernels, graph),
        "eager_first_difference": eager_diff,
        "graph_top2_gap_there": None if eager_diff is None else top2_gap(scores, eager_diff),
        "engine": stats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="llama3.2-1b,opt-1.3b,llama3.1-8b,glm4-9b,autoglm-phone-9b")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--json")
    p.add_argument("--tiny", action="store_true", help="tiny fp32 models on the CPU (a smoke run of the script)")
    args = p.parse_args()
    rows = []
    for name, model in script_models(args.models, args.tiny):
        row = compare(model, name, args.new_tokens, args.prompt_len)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
