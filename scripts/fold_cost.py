"""GPU time of one Llama-3.2-1B decode layer's projections with the norms and residual adds
folded into the GEMVs (ops.fused_linear / ops.gated_mlp with norm_weight / residual) against
the unfolded sequence (Triton add+norm kernels around the same GEMVs), each in a CUDA graph of
back-to-back calls over rotated weights (bench/common.GraphTimer), one row (batch-1 decode).

    python scripts/fold_cost.py [--dims H,QKV,I]   (default 2048,3072,8192: Llama-3.2-1B;
                                                   4096,6144,14336: Llama-3.1-8B)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from common import GraphTimer, copies_for  # noqa: E402

from autoglm_kernels import ops  # noqa: E402

EPS = 1e-5


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="2048,3072,8192", help="hidden, q+k+v rows, intermediate")
    H, QKV, I = (int(v) for v in ap.parse_args().dims.split(","))
    dt, dev = torch.bfloat16, "cuda"
    layer_bytes = (QKV * H + H * H + 2 * I * H + H * I) * 2
    n = copies_for(layer_bytes)
    layers = [dict(qkv=torch.randn(QKV, H, device=dev, dtype=dt) * H**-0.5,
                   o=torch.randn(H, H, device=dev, dtype=dt) * H**-0.5,
                   gu=torch.randn(2 * I, H, device=dev, dtype=dt) * H**-0.5,
                   down=torch.randn(H, I, device=dev, dtype=dt) * I**-0.5,
                   n1=1 + 0.1 * torch.randn(H, device=dev, dtype=dt), n2=1 + 0.1 * torch.randn(H, device=dev, dtype=dt))
              for _ in range(n)]
    h = torch.randn(1, H, device=dev, dtype=dt)
    attn = torch.randn(1, H, device=dev, dtype=dt)
    mid = torch.randn(1, I, device=dev, dtype=dt)  # the down projection's input

    def unfolded(L):  # add+norm, qkv, o_proj, add+norm, gate_up + down (what nofold runs)
        x, r = ops.fused_add_rms_norm(attn, h, L["n1"], EPS)
        ops.fused_linear(x, L["qkv"])
        o = ops.fused_linear(attn, L["o"])
        x2, r2 = ops.fused_add_rms_norm(o, r, L["n2"], EPS)
        return ops.gated_mlp(x2, L["gu"], None, L["down"])

    def folded(L):  # qkv(+norm), o_proj(+residual), gate_up(+norm) + down(+residual)
        ops.fused_linear(h, L["qkv"], norm_weight=L["n1"], norm_eps=EPS)
        h2 = ops.fused_linear(attn, L["o"], residual=h)
        return ops.gated_mlp(h2, L["gu"], None, L["down"], norm_weight=L["n2"], norm_eps=EPS, residual=h2)

    def as_patched(L):  # what the patched layer runs (LayerCtx.fold): the post-attention norm a kernel
        ops.fused_linear(h, L["qkv"], norm_weight=L["n1"], norm_eps=EPS)
        h2 = ops.fused_linear(attn, L["o"], residual=h)
        return ops.gated_mlp(ops.rms_norm(h2, L["n2"], EPS), L["gu"], None, L["down"], residual=h2)

    pieces = {
        "qkv plain": lambda L: ops.fused_linear(h, L["qkv"]),
        "qkv + norm prologue": lambda L: ops.fused_linear(h, L["qkv"], norm_weight=L["n1"], norm_eps=EPS),
        "add+norm kernel": lambda L: ops.fused_add_rms_norm(attn, h, L["n1"], EPS),
        "o_proj plain": lambda L: ops.fused_linear(attn, L["o"]),
        "o_proj + residual": lambda L: ops.fused_linear(attn, L["o"], residual=h),
        "gate_up plain (gated)": lambda L: ops.fused_linear(h, L["gu"], None, "gated_silu"),
        "gate_up + norm prologue": lambda L: ops.fused_linear(h, L["gu"], None, "gated_silu", norm_weight=L["n2"],
                                                              norm_eps=EPS),
        "down plain": lambda L: ops.fused_linear(mid, L["down"]),
        "down + residual": lambda L: ops.fused_linear(mid, L["down"], residual=h),
        "gated_mlp": lambda L: ops.gated_mlp(h, L["gu"], None, L["down"]),
        "gated_mlp + norm + residual": lambda L: ops.gated_mlp(h, L["gu"], None, L["down"], norm_weight=L["n2"],
                                                               norm_eps=EPS, residual=h),
        "layer unfolded (2 add+norm + 4 GEMVs)": unfolded,
        "layer folded (4 GEMVs)": folded,
        "layer as patched (1 norm + 4 GEMVs)": as_patched,
    }
    print(f"GPU us per call, {n} rotated weight sets, bf16, 1 row, dims {H},{QKV},{I}")
    for name, fn in pieces.items():
        t = GraphTimer(fn, [(L,) for L in layers])
        print(f"  {name:40s} {t.time_us(20):8.2f}")


if __name__ == "__main__":
    main()
