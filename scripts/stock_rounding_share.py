"""How far the kernels' outputs are from stock's, element for element (GPU, bf16 and fp16): the
share of output elements that differ from the stock modules' outputs, for the kernels as built
and for the one-rounding forms they replaced (emulated here in fp32 torch: one rounding of the
fp32 result where stock rounds each op's output).

  gated_silu GEMV (M = 1, 16) and cuBLAS + silu_mul (M = 40): GLM-4 MLP widths
  norm_add_norm's new residual (GLM-4's sandwich norm + add)
  RoPE (Llama rotate_half, GLM-4 interleaved), decode shape

Usage: python scripts/stock_rounding_share.py [--json out.json]
"""

import argparse
import json

import torch
import torch.nn.functional as F
from transformers.models.glm4.modeling_glm4 import Glm4RMSNorm
from transformers.models.glm4.modeling_glm4 import apply_rotary_pos_emb as glm4_rope
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb as llama_rope

from autoglm_kernels import ops


def share(a, b) -> float:
    return (a != b).float().mean().item()


def gated(dt, out):
    K, N = 4096, 2 * 13696
    w = (torch.randn(N, K, device="cuda") / K**0.5).to(dt)
    for M in (1, 16, 40):
        x = torch.randn(M, K, device="cuda").to(dt)
        g, u = F.linear(x, w).chunk(2, -1)
        stock = F.silu(g) * u
        g32, u32 = F.linear(x.float(), w.float()).chunk(2, -1)
        out[f"gated_silu M={M}"] = {"kernel": share(ops.fused_linear(x, w, None, "gated_silu"), stock),
                                    "one_rounding": share((F.silu(g32) * u32).to(dt), stock)}


def norm_add_norm(dt, out):
    H, eps = 4096, 1.5625e-07
    n1, n2 = Glm4RMSNorm(H, eps=eps).to("cuda", dt), Glm4RMSNorm(H, eps=eps).to("cuda", dt)
    with torch.no_grad():
        n1.weight.copy_(1 + 0.5 * torch.randn(H))
    for rows in (1, 16):
        x, res = torch.randn(rows, H, device="cuda").to(dt), torch.randn(rows, H, device="cuda").to(dt)
        with torch.no_grad():
            h_stock = res + n1(x)
            xf = x.float()
            normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(dt).float()
            fused = (res.float() + normed * n1.weight.float()).to(dt)  # one rounding of n1 * w + res
        _, h = ops.norm_add_norm(x, res, n1.weight, n2.weight, eps)
        out[f"norm_add_norm residual rows={rows}"] = {"kernel": share(h, h_stock), "one_rounding": share(fused, h_stock)}


def rope(dt, out):
    B, Hq, Hk, D = 1, 32, 2, 128
    for name, fn, interleaved, R in (("llama", llama_rope, False, D), ("glm4", glm4_rope, True, D // 2)):
        qkv = torch.randn(B, 1, (Hq + 2 * Hk) * D, device="cuda").to(dt)
        q = qkv[..., : Hq * D].view(B, 1, Hq, D)
        k = qkv[..., Hq * D: (Hq + Hk) * D].view(B, 1, Hk, D)
        ang = torch.rand(B, 1, R // 2, device="cuda") * 100
        cos, sin = torch.cat([ang, ang], -1).cos().to(dt), torch.cat([ang, ang], -1).sin().to(dt)
        qs, _ = fn(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        q32, _ = fn(q.transpose(1, 2).float(), k.transpose(1, 2).float(), cos.float(), sin.float())
        ops.apply_rope_(q, k, cos, sin, interleaved=interleaved)
        out[f"rope {name}"] = {"kernel": share(q.transpose(1, 2), qs), "one_rounding": share(q32.to(dt), qs)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for dt in (torch.bfloat16, torch.float16):
        out = result[str(dt).replace("torch.", "")] = {}
        gated(dt, out)
        norm_add_norm(dt, out)
        rope(dt, out)
        for case, v in out.items():
            print(f"{str(dt):15s} {case:34s} kernel {v['kernel']:8.4%}   one rounding {v['one_rounding']:8.4%}")
    if a.json:
        json.dump(result, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
