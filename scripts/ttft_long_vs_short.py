"""Time to first token of a patched model (engine on) in generates of 2 and of 128 new tokens,
alternating, with the host time before / in / after the prefill forward of each.

    python scripts/ttft_long_vs_short.py llama3.1-8b
"""
import sys

from autoglm_kernels import patch_model
from autoglm_kernels.cli.bench import host_timers, prompt_ids, time_generate
from autoglm_kernels.demo_model import random_model

model = random_model(sys.argv[1] if len(sys.argv) > 1 else "llama3.1-8b")
ids = prompt_ids(model, 1, 128)
patch_model(model)
time_generate(model, ids, 128)
time_generate(model, ids, 2)
for new in (2, 128, 2, 128, 128, 2, 2):
    marks = {}
    with host_timers(model, "forward") as t:
        total, ttft = time_generate(model, ids, new, marks=marks)
    a, b = t["forward"].first
    print(f"new={new:3d} ttft {1e3 * ttft:6.2f} ms  before {1e3 * (a - marks['start']):5.2f}  "
          f"forward {1e3 * (b - a):6.2f}  after {1e3 * (marks['first_token'] - b):6.2f}  total {total:.3f} s", flush=True)
