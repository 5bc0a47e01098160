"""Tensor-parallel decode, stock vs patched, on several GPUs of one host (issue #10).

    torchrun --nproc_per_node 2 bench/bench_tp.py --models llama3.1-8b,glm4-9b --ckpt-dir /tmp/tp_ckpts \
        --json bench/results/<run>/tp.json

Per model: rank 0 writes a random-weight checkpoint of the reference shape (once), every rank
loads it with transformers' tp_plan="auto" (bf16), and then, in this one run:
- stock TP: greedy tokens (32) and batch-1 decode tok/s (prompt 128, 128 new tokens);
- patched TP (patch_model defaults: fused kernels on this rank's shards, the decode engine's CUDA
  graph with the all-reduces captured): the same, plus patch + first-capture time;
- the all-reduce share of the patched decode: GPU time of the NCCL kernels over all kernels in a
  profiled generate of 32 tokens (mostly decode steps; prefill included; an NCCL kernel's time
  includes waiting for the other rank to arrive);
- accuracy: teacher-forced logits of stock and patched bf16 on the stock greedy tokens, against
  the same checkpoint loaded as a stock TP model in fp32 (and that model's greedy tokens).
Rank 0 writes the JSON (device, versions, commit, per model the figures and whether the greedy
tokens matched, with the first differing position).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import torch
import torch.distributed as dist

from autoglm_kernels import patch_model, unpatch_model
from autoglm_kernels.cli import bench as B
from autoglm_kernels.cli.demo import first_divergence
from autoglm_kernels.demo_model import random_model

PROMPT, NEW, CHECK = 128, 128, 32


def _checkpoint(name: str, root: Path, rank: int, layers: int | None) -> Path:
    path = root / (name if layers is None else f"{name}-{layers}L")
    if rank == 0 and not (path / "config.json").exists():
        cuda = torch.cuda.is_available()
        model = random_model(name, device=f"cuda:{torch.cuda.current_device()}" if cuda else "cpu",
                             dtype=torch.bfloat16 if cuda else torch.float32, num_layers=layers)
        model.save_pretrained(path)
        del model
        torch.cuda.empty_cache()
    dist.barrier()
    return path


def _greedy(model, ids, n: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)[0, ids.shape[1]:].cpu()


def _logits(model, seq) -> torch.Tensor:
    """fp32 logits [CHECK, vocab] predicting the last CHECK tokens of seq (one forward)."""
    with torch.inference_mode():
        return model(seq).logits[0, -CHECK - 1:-1].float()


def _decode_rate(model, ids, repeats: int = 2) -> tuple[float, float]:
    """(decode tok/s excluding the first token, TTFT ms): best of `repeats` timed generates."""
    best = None
    for _ in range(repeats):
        total, first = B.time_generate(model, ids, NEW)
        rate = (NEW - 1) / (total - first)
        best = max(best or (0, 0), (rate, first * 1e3))
    return best


def _allreduce_share(model, ids) -> dict:
    from torch.profiler import ProfilerActivity, profile

    from autoglm_kernels.cli.profile import device_ops

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        _greedy(model, ids, CHECK)
        torch.cuda.synchronize()
    ops = device_ops(prof)  # name -> [count, GPU us]
    total = sum(us for _, us in ops.values())
    nccl = sum(us for name, (_, us) in ops.items() if "nccl" in name.lower())
    return {"nccl_gpu_ms": nccl / 1e3, "all_gpu_ms": total / 1e3, "share": nccl / total if total else None}


def run_model(name: str, root: Path, rank: int, size: int, dtype: torch.dtype, timing: bool = True,
              layers: int | None = None) -> dict:
    """One model's figures (see the module docstring); timing=False: tokens and accuracy only."""
    from transformers import AutoModelForCausalLM

    path = _checkpoint(name, root, rank, layers)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=dtype).eval()
    load_s = time.perf_counter() - t0
    ids = B.prompt_ids(model, 1, PROMPT)
    out = {"model": name, "tp_size": size, "dtype": str(dtype).replace("torch.", ""), "load_s": round(load_s, 1)}

    _greedy(model, ids, 4)  # warm up
    stock_tokens = _greedy(model, ids, CHECK)
    seq = torch.cat([ids, stock_tokens.to(ids.device)[None]], 1)  # teacher forcing on the stock tokens
    stock_logits = _logits(model, seq)
    if timing:
        out["stock_tok_s"], out["stock_ttft_ms"] = _decode_rate(model, ids)

    B._sync(ids.device)
    t0 = time.perf_counter()
    report = patch_model(model)
    _greedy(model, ids, 2)  # first capture of the decode graph
    B._sync(ids.device)
    out["patch_and_capture_s"] = round(time.perf_counter() - t0, 2)
    out["report"] = str(report)
    patched_tokens = _greedy(model, ids, CHECK)
    patched_logits = _logits(model, seq)
    if timing:
        out["patched_tok_s"], out["patched_ttft_ms"] = _decode_rate(model, ids)
        out["allreduce"] = _allreduce_share(model, ids)
    state = model.__dict__.get("_autoglm_patch")
    out["engine"] = state.engine.stats() if state is not None and state.engine is not None else None
    unpatch_model(model)

    out["first_mismatch"] = first_divergence(stock_tokens, patched_tokens)
    out["greedy_match"] = same = out["first_mismatch"] is None
    gap = stock_logits.topk(2, dim=-1).values.diff(dim=-1).neg().squeeze(-1)  # stock top-1 minus top-2
    out["teacher_forced"] = {
        "argmax_agreement": (patched_logits.argmax(-1) == stock_logits.argmax(-1)).float().mean().item(),
        "max_abs_logit_diff": (patched_logits - stock_logits).abs().max().item(),
        "median_abs_logit_diff": (patched_logits - stock_logits).abs().median().item(),
        "stock_top2_gap_median": gap.median().item(),
        "stock_top2_gap_at_first_mismatch": None if same else gap[out["first_mismatch"]].item(),
    }
    if timing:
        out["speedup"] = out["patched_tok_s"] / out["stock_tok_s"]
    w, kv = B.bytes_per_step(model, 1, PROMPT, NEW)
    out["bytes_per_step_per_rank"] = (w + kv) / size
    del model
    torch.cuda.empty_cache()
    if dtype != torch.float32:
        out["vs_fp32"] = _fp32_reference(path, ids, seq, stock_tokens, patched_tokens, stock_logits, patched_logits)
    return out


def _fp32_reference(path, ids, seq, stock_tokens, patched_tokens, stock_logits, patched_logits) -> dict:
    """The same checkpoint as a stock TP model in fp32: its greedy tokens and teacher-forced logits
    against both bf16 models. The accuracy rule of patch_model (patched error <= 2x the stock bf16
    model's error, max and mean) applied to the TP models; greedy tokens of stock bf16 vs fp32 show
    how soon bf16 alone leaves the fp32 path on a random-weight model (near-tied logits)."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(path, tp_plan="auto", dtype=torch.float32).eval()
    ref_tokens = _greedy(ref, ids, CHECK)
    ref_logits = _logits(ref, seq)
    del ref
    torch.cuda.empty_cache()
    err = {k: (x - ref_logits).abs() for k, x in (("stock_bf16", stock_logits), ("patched_bf16", patched_logits))}
    out = {f"{k}_max_err": e.max().item() for k, e in err.items()}
    out.update({f"{k}_mean_err": e.mean().item() for k, e in err.items()})
    out["rule_2x_stock_met"] = (out["patched_bf16_max_err"] <= 2 * out["stock_bf16_max_err"]
                                and out["patched_bf16_mean_err"] <= 2 * out["stock_bf16_mean_err"])
    out["first_mismatch_stock_bf16_vs_fp32"] = first_divergence(stock_tokens, ref_tokens)
    out["first_mismatch_patched_bf16_vs_fp32"] = first_divergence(patched_tokens, ref_tokens)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama3.1-8b,glm4-9b")
    ap.add_argument("--ckpt-dir", default="/tmp/autoglm_tp_ckpts")
    ap.add_argument("--json", default=None)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"], help="on CUDA (CPU: float32)")
    ap.add_argument("--tokens-only", action="store_true", help="greedy tokens and accuracy, no timing")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the model's; fewer for CPU runs)")
    args = ap.parse_args()

    rank = int(os.environ["RANK"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    else:  # the CPU path: gloo, fp32 (no bf16 noise), tokens only: the TP plumbing at the real layer shapes
        args.dtype, args.tokens_only = "float32", True
    dist.init_process_group("nccl" if cuda else "gloo")
    size = dist.get_world_size()
    bandwidth = B.measure_read_bandwidth() if cuda else None
    env = B.environment()
    env.update(commit=os.environ.get("AUTOGLM_GIT_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True).stdout.strip(),
        read_bandwidth_Bps=bandwidth, layers=args.layers)
    if cuda:
        env.update(gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
                   nccl=".".join(map(str, torch.cuda.nccl.version())))
    results = []
    for name in args.models.split(","):
        r = run_model(name, Path(args.ckpt_dir), rank, size, getattr(torch, args.dtype), not args.tokens_only,
                      args.layers)
        results.append(r)
        if rank == 0 and args.tokens_only:
            print(f"{name} TP={size} {args.dtype}: greedy {CHECK} tokens match: {r['greedy_match']} (first mismatch "
                  f"{r['first_mismatch']}; teacher-forced {r['teacher_forced']}); vs fp32 TP: {r.get('vs_fp32')}",
                  flush=True)
        elif rank == 0:
            r["limit_tok_s_per_rank_bw"] = bandwidth / r["bytes_per_step_per_rank"]
            r["patched_pct_of_limit"] = 100 * r["patched_tok_s"] / r["limit_tok_s_per_rank_bw"]
            print(f"{name} TP={size}: stock {r['stock_tok_s']:.1f} tok/s, patched {r['patched_tok_s']:.1f} tok/s "
                  f"({r['speedup']:.2f}x), greedy {CHECK} tokens match: {r['greedy_match']} "
                  f"(first mismatch {r['first_mismatch']}; teacher-forced {r['teacher_forced']}), all-reduce share {r['allreduce']['share']:.1%}, "
                  f"TTFT {r['stock_ttft_ms']:.1f} -> {r['patched_ttft_ms']:.1f} ms, "
                  f"patch+capture {r['patch_and_capture_s']} s, {r['patched_pct_of_limit']:.1f}% of limit; "
                  f"vs fp32 TP: {r['vs_fp32']}", flush=True)
        if rank == 0 and args.json:
            Path(args.json).write_text(json.dumps({"environment": env, "results": results}, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
