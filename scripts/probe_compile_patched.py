"""Probe: does transformers' own torch.compile (generate with a static cache, compile allowed)
run over a patched model? Prints the outcome and the first error lines; for the results notes."""

import traceback

import torch

from autoglm_kernels import patch_model
from autoglm_kernels.demo_model import random_model

model = random_model("llama3.2-1b", num_layers=2)
patch_model(model, cuda_graphs=False)
ids = torch.randint(3, 1000, (1, 32), device="cuda")
try:
    out = model.generate(ids, max_new_tokens=8, do_sample=False, cache_implementation="static", disable_compile=False)
    print("compiled generate over the patched model: OK", out.shape)
except Exception as e:  # noqa: BLE001 - a probe reports whatever happens
    print("compiled generate over the patched model FAILED:", type(e).__name__)
    print("".join(traceback.format_exception(e))[-4000:])
