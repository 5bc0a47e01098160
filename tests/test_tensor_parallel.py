"""patch_model on tensor-parallel models (transformers tp_plan="auto": DTensor shards), run as
2 CPU processes with gloo in fp32: the fused forwards work on each rank's shards (local heads,
this rank's MLP columns, all-reduce after o_proj/down_proj, all-gathered lm_head) and give the
stock TP model's tokens; unpatch restores it bit for bit; wrong layouts are refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch.distributed")


def _checkpoint(directory: Path, name: str) -> Path:
    """A 2-layer fp32 checkpoint of reference model `name` (or qwen3) whose heads split over 2
    ranks: 4 query / 2 KV heads of head_dim 64 (the attention kernels' smallest)."""
    import torch
    import transformers

    from autoglm_kernels.models import reference_config

    small = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=64, initializer_range=0.1)
    if name == "qwen3":
        cfg = transformers.Qwen3Config(hidden_size=128, num_hidden_layers=2, intermediate_size=176, vocab_size=512,
                                       max_position_embeddings=512, **small)
    else:
        cfg = reference_config(name, tiny=True)
        for k, v in small.items():
            setattr(cfg, k, v)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(directory)
    return directory


def _run_worker(tmp_path, name: str, port: int, *flags: str) -> list[dict]:
    ckpt = _checkpoint(tmp_path / "ckpt", name)
    out = tmp_path / "result"
    worker = Path(__file__).with_name("tp_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           str(worker), str(ckpt), str(out), *flags]
    env = dict(os.environ, **({} if "--cuda" in flags else {"CUDA_VISIBLE_DEVICES": ""}))  # CPU run: hide GPUs
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)]


NAMES = [("llama3.2-1b", 29517), ("llama3.1-8b", 29518), ("glm4-9b", 29519), ("qwen3", 29520)]


@pytest.mark.parametrize("name,port", NAMES)
def test_patched_tp2_model_gives_the_stock_tp2_tokens(tmp_path, name, port):
    results = _run_worker(tmp_path, name, port)
    for r in results:
        assert r["sharded"] == "DTensor" and r["tp_size"] == 2, r  # transformers really sharded the weights
        n = r["patched_layers"]
        assert n == 2 and r["patched_attention"] == n and r["patched_mlp"] == n, r["report"]
        assert r["patched_lm_head"] == 1 and r["tp_note"], r["report"]
        assert r["same_tokens"] and r["same_tokens_static"] and r["same_tokens_padded_batch"], r
        assert r["state_dict_unchanged"], r
        assert r["logits_max_err"] < 1e-4, r
        assert r["unpatched_bit_identical"], r
        assert "expected colwise" in r["wrong_layout_reason"], r
    assert results[0]["stock_tokens"] == results[1]["stock_tokens"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("name,port", NAMES[1:3])
def test_patched_tp2_on_two_gpus_engine_and_eager_agree(tmp_path, name, port):
    """NCCL, bf16: the decode engine's CUDA graphs (all-reduces captured) give the eager patched
    path's tokens exactly; logits within bf16 noise of stock TP; greedy agreement with stock printed."""
    results = _run_worker(tmp_path, name, port + 10, "--cuda")
    for r in results:
        assert r["patched_layers"] == 2 and r["patched_attention"] == 2, r["report"]
        assert r["engine"] and r["engine"]["captures"] >= 1 and r["engine"]["replays"] >= 1, r["engine"]
        assert r["engine_vs_eager_tokens"] and r["state_dict_unchanged"], r
        assert r["logits_max_err"] <= 0.05 * r["logits_max"] + 0.05, r
        assert r["unpatched_bit_identical"], r
        print(f"{name} rank {r['rank']}: greedy tokens patched == stock TP: {r['same_tokens']}; "
              f"logits max err {r['logits_max_err']:.3g} (max |logit| {r['logits_max']:.3g})")
