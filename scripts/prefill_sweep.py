"""The Triton prefill kernel's launch shapes against torch SDPA, in one process (GPU).

Each variant replaces `triton.prefill_attention.launch_config` (tiles, warps, stages) or keeps
it ("default"), and is timed with SDPA over the same inputs in alternating CUDA-graph replays
(bench/common.paired_us). Cases: causal bf16 prompts of the GLM-4
(32 / 2 heads) and Llama-3.1-8B (32 / 8) shapes, d 128, batch 1, plus GLM-4 at batch 2 with one
row left-padded by 300 (Triton against SDPA with transformers' 4-D mask, as bench_prefill_attention).

    python scripts/prefill_sweep.py --json out.jsonl [--variants default,bm64] [--cases glm-2048,...]

Appends one JSON line per (case, variant) and prints TFLOP/s (causal half) and the ratio to SDPA.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from common import GraphTimer, paired_us  # noqa: E402

from autoglm_kernels import ops  # noqa: E402
from autoglm_kernels.triton import prefill_attention as pa  # noqa: E402

VARIANTS = {  # name -> launch_config's dict, or None: the package's own launch_config
    "default": None,
    "bm64": dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
    "bm128-bn128": dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    "bm128-bn64": dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
}
CASES = {  # name -> (Hq, Hk, B, S, left padding of row 1)
    "glm-512": (32, 2, 1, 512, 0),
    "glm-1024": (32, 2, 1, 1024, 0),
    "glm-2048": (32, 2, 1, 2048, 0),
    "glm-8192": (32, 2, 1, 8192, 0),
    "llama-2048": (32, 8, 1, 2048, 0),
    "glm-b2-2048-pad300": (32, 2, 2, 2048, 300),
}


def case_timers(Hq, Hk, B, S, pad, variants):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from common import StockAttnModule

    D, dt, scale = 128, torch.bfloat16, 128**-0.5
    module = StockAttnModule(Hq // Hk)
    kv_mask = mask4d = None
    if pad:
        kv_mask = torch.ones(B, S, dtype=torch.int64, device="cuda")
        kv_mask[1, :pad] = 0
        causal = torch.ones(S, S, dtype=torch.bool, device="cuda").tril()
        mask4d = (causal[None] & (kv_mask[:, None, :] != 0))[:, None]
    sets = [(torch.randn(B, S, Hq, D, device="cuda", dtype=dt), torch.randn(B, Hk, S, D, device="cuda", dtype=dt),
             torch.randn(B, Hk, S, D, device="cuda", dtype=dt)) for _ in range(2)]

    def sdpa(q, k, v):
        return sdpa_attention_forward(module, q.transpose(1, 2), k, v, mask4d, scaling=scale, is_causal=True)[0]

    q, k, v = sets[0]
    ref = pa.prefill_attention_reference(q, k, v, kv_mask, scale, True).float()[:, pad:]
    timers = {"sdpa": GraphTimer(sdpa, sets)}
    errors = {}
    original = pa.launch_config
    for name in variants:
        cfg = VARIANTS[name]
        pa.launch_config = original if cfg is None else (lambda head_dim, queries, device, cfg=cfg: dict(cfg))
        fn = lambda q, k, v: ops.prefill_attention(q, k, v, kv_mask, scale, True, impl="triton")  # noqa: E731
        try:
            got = fn(q, k, v).float()[:, pad:]
            timers[name] = GraphTimer(fn, sets)
        except Exception as e:  # a shape that does not fit (shared memory): reported, not timed
            print(f"  {name} {cfg}: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
            continue
        finally:
            pa.launch_config = original
        errors[name] = (got - ref).abs().max().item()
    return timers, errors


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    with open(args.json, "a") as f:
        for case in [c for c in args.cases.split(",") if c]:
            Hq, Hk, B, S, pad = CASES[case]
            timers, errors = case_timers(Hq, Hk, B, S, pad, variants)
            us = paired_us(timers)
            flops = 2 * 2 * B * Hq * 128 * S * S / 2
            print(f"{case}: sdpa {us['sdpa']:.1f} us ({flops / us['sdpa'] / 1e6:.0f} TFLOP/s)")
            for name in variants:
                if name not in us:
                    continue
                cfg = VARIANTS[name] or pa.launch_config(128, S, torch.device("cuda"))
                row = dict(case=case, variant=name, cfg=cfg, us=us[name], sdpa_us=us["sdpa"],
                           tflops=flops / us[name] / 1e6, sdpa_tflops=flops / us["sdpa"] / 1e6,
                           ratio_to_sdpa=us["sdpa"] / us[name], max_err_vs_fp32=errors[name])
                f.write(json.dumps(row) + "\n")
                print(f"  {name:11s} {us[name]:9.1f} us {row['tflops']:6.0f} TFLOP/s {row['ratio_to_sdpa']:.3f}x SDPA "
                      f"err {errors[name]:.4f}  {row['cfg']}")
            del timers
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
