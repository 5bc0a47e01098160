"""Worker for tests/test_tensor_parallel.py, run under torch.distributed.run with the gloo backend:
loads a checkpoint with transformers' tp_plan="auto" (DTensor shards), patches it, and checks the
report says why it stayed stock and that the greedy tokens are the unpatched TP model's."""

import json
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from autoglm_kernels import patch_model, unpatch_model


def main(path: str, out: str) -> None:
    dist.init_process_group("gloo")
    model = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=torch.float32).eval()
    ids = torch.arange(1, 9).unsqueeze(0)
    ref = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    report = patch_model(model)
    got = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    unpatch_model(model)
    result = {
        "rank": dist.get_rank(),
        "sharded": type(model.model.layers[0].self_attn.q_proj.weight).__name__,
        "patched_anything": report.supported,
        "report": str(report),
        "same_tokens": torch.equal(ref, got),
    }
    with open(f"{out}.{dist.get_rank()}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
