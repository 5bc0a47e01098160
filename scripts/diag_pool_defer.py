"""Diagnostic (GPU): a patched generate inside the memory pool with the deferred stop forced on.
Run in a subprocess; an abort shows here with its C++ stack (TORCH_SHOW_CPP_STACKTRACES=1)."""
import sys

import torch

sys.path.insert(0, "tests")
from test_patch_gpu import _build, _inputs  # noqa: E402

from autoglm_kernels import engine, patch_model  # noqa: E402

model = _build("glm4", "cuda").to(torch.bfloat16)
ids, mask = _inputs(2, "cuda")
patch_model(model, memory_pool=True)
eng = engine.engine_of(model)
eng.defer_stop = True
for i in range(2):
    print("generate", i, flush=True)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    print("ok", out.shape, model._autoglm_patch.memory_pool.stats(), flush=True)
