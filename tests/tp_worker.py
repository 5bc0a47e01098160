"""Worker for tests/test_tensor_parallel.py, run under torch.distributed.run: loads a checkpoint
with transformers' tp_plan="auto" (DTensor shards), runs greedy generate stock, then patched, then
unpatched, and writes what it saw to OUT.<rank>.json. CPU: gloo, fp32, eager. `--cuda`: NCCL,
bf16, one GPU per rank; the patched generate runs the decode engine (CUDA graphs with the
all-reduces captured) and is also compared with the eager patched path."""

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM

from autoglm_kernels import patch_model, unpatch_model
from autoglm_kernels.patch import sharding, state_of


def _generate(model, ids, **kw):
    return model.generate(input_ids=ids, max_new_tokens=12, do_sample=False, **kw)


def _state(model) -> dict:
    return {k: sharding.local(v).detach().clone() for k, v in model.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main(path: str, out: str, cuda: bool) -> None:
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(0)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=dtype).eval()
    ids = torch.tensor([[5, 17, 3, 99, 42, 7, 250, 11]], device=model.device)
    with torch.no_grad():
        ref_logits = model(input_ids=ids).logits
    ref = _generate(model, ids)
    ref_static = _generate(model, ids, cache_implementation="static", disable_compile=True)
    padded = torch.tensor([[0, 0, 0, 9, 4, 77, 31, 2], [5, 17, 3, 99, 42, 7, 250, 11]], device=model.device)
    pad_mask = (padded != 0).long()
    ref_padded = _generate(model, padded, attention_mask=pad_mask)
    before = _state(model)
    report = patch_model(model)
    same_state = _same_state(before, _state(model))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    got_padded = _generate(model, padded, attention_mask=pad_mask)
    got = _generate(model, ids)
    got_static = _generate(model, ids, cache_implementation="static", disable_compile=True)
    engine = state_of(model).engine  # CUDA: `got` came from it (its static cache, graphs)
    stats = engine.stats() if engine is not None else None
    eager = None
    if cuda:  # the same kernels over the same kind of cache (static), without the graphs
        unpatch_model(model)
        patch_model(model, cuda_graphs=False)
        eager = _generate(model, ids, cache_implementation="static", disable_compile=True)
    unpatch_model(model)
    with torch.no_grad():
        after = model(input_ids=ids).logits

    # a rowwise-sharded weight where colwise is expected is refused with a reason, not run
    tp, _ = sharding.tensor_parallel(model)
    lin = torch.nn.Linear(8, 6, bias=False)
    mesh = model.model.layers[0].self_attn.q_proj.weight.device_mesh
    lin.weight = torch.nn.Parameter(torch.distributed.tensor.distribute_tensor(
        lin.weight.detach(), mesh, [torch.distributed.tensor.Shard(1)]))
    result = {
        "rank": dist.get_rank(),
        "sharded": type(model.model.layers[0].self_attn.q_proj.weight).__name__,
        "tp_size": tp.size if tp else None,
        "report": str(report),
        "patched_layers": report.num_patched("decoder_layer"),
        "patched_attention": report.num_patched("attention"),
        "patched_mlp": report.num_patched("mlp"),
        "patched_lm_head": report.num_patched("lm_head"),
        "tp_note": any("tensor parallel: rank" in n for n in report.notes),
        "stock_tokens": ref.tolist(),
        "same_tokens": torch.equal(ref, got),
        "same_tokens_static": torch.equal(ref_static, got_static) and torch.equal(ref, ref_static),
        "same_tokens_padded_batch": torch.equal(ref_padded, got_padded),
        "state_dict_unchanged": same_state,
        "engine_vs_eager_tokens": None if eager is None else torch.equal(got, eager),
        "engine": stats,
        "logits_max_err": (logits - ref_logits).abs().max().item(),
        "logits_max": ref_logits.abs().max().item(),
        "unpatched_bit_identical": torch.equal(after, ref_logits),
        "wrong_layout_reason": sharding.linear_layout_reason(lin, "row", tp, "test_proj"),
    }
    with open(f"{out}.{dist.get_rank()}.json", "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], "--cuda" in sys.argv[3:])
