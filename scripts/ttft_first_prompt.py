"""Time to first token of a prompt length the model has not seen (no prefill graph yet): stock,
patch_model(cuda_graphs=False) (the eager path's host-cheaper kernels) and patch_model (the
engine: that prefill runs eagerly with the graphs' kernels). Each mode warms up on a 64-token
prompt, then prefills fresh lengths 120, 124 and 128 once each (2 new tokens); median reported.

    python scripts/ttft_first_prompt.py --models llama3.2-1b,llama3.1-8b --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics

from autoglm_kernels import patch_model, unpatch_model
from autoglm_kernels.cli.bench import environment, prompt_ids, script_models, time_generate

FRESH = (120, 124, 128)


def first_prompt_ttft_ms(model) -> float:
    time_generate(model, prompt_ids(model, 1, 64, seed=1), 2)  # loads kernels, captures the decode graph
    return round(1e3 * statistics.median(time_generate(model, prompt_ids(model, 1, n), 2)[1] for n in FRESH), 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="llama3.2-1b,opt-1.3b,llama3.1-8b,glm4-9b,autoglm-phone-9b")
    p.add_argument("--json")
    args = p.parse_args()
    rows = []
    for name, model in script_models(args.models, False):
        row = {"model": name, "stock_ms": first_prompt_ttft_ms(model)}
        for mode, kwargs in (("patched_eager_ms", {"cuda_graphs": False}), ("patched_ms", {})):
            patch_model(model, **kwargs)
            try:
                row[mode] = first_prompt_ttft_ms(model)
            finally:
                unpatch_model(model)
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": environment(), "fresh_prompt_lengths": FRESH, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
