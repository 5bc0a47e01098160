"""Rotary position embedding applied to q and k in place, both in one launch.

torch op `autoglm::rope(q!, k!, cos, sin, interleaved, mrope_section) -> ()`
  q    [B, S, Hq, D], k [B, S, Hk, D]: any strides with a contiguous last dim (views into a fused
       qkv projection output are fine); rotated in place, dims R..D-1 are not touched.
  cos, sin: what the model's rotary embedding module returns, R = cos.shape[-1] <= D (even):
       [B or 1, S, R], or [3, B or 1, S, R] (multimodal, transformers 4.x: one slice per
       temporal/height/width position stream, selected per frequency by mrope_section).
With F = R/2 frequencies, frequency f rotates the pair (x1, x2) by (c, s) from cos/sin:
  interleaved=False  (Llama, rotate_half):   x1 = x[f],  x2 = x[f+F];  c1 = cos[f],  c2 = cos[f+F]
  interleaved=True   (GLM-4: cos[..., :R//2].repeat_interleave(2)):
                                             x1 = x[2f], x2 = x[2f+1]; c1 = c2 = cos[f]
  interleaved=True with mrope_section and 3-D cos (GLM-4.1V, transformers 5.x: the module already
       merged the 3 streams and repeat_interleaved them):   c1 = cos[2f], c2 = cos[2f+1]
  y1 = x1*c1 - x2*s1,  y2 = x2*c2 + x1*s2   (fp32, one rounding to q.dtype)
4-D cos (mrope, 4.x): frequency f reads stream 0 for f < m0, 1 for f < m0+m1, else 2, which is
what apply_multimodal_rotary_pos_emb's split/cat of mrope_section*2 selects; done in the kernel's
addressing so it costs no extra launch.

Grid: (B*S tokens, head blocks of q then of k). Each program loads its token's cos/sin once and
rotates BLOCK_H heads. Positions come only from the device tensors: graph-capturable.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

LAYOUT_HALF, LAYOUT_GLM, LAYOUT_PAIRS = 0, 1, 2  # where frequency f's cos/sin sit (see module doc)


def _triton_can_run(device: torch.device) -> bool:
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"


def cos_layout(interleaved: bool, mrope_section: Optional[list[int]], cos_dim: int) -> int:
    if not interleaved:
        return LAYOUT_HALF
    return LAYOUT_PAIRS if (mrope_section is not None and cos_dim == 3) else LAYOUT_GLM


@triton.jit
def _rotate_heads(
    X, sb, ss, sh, n_heads, head0, b, s, c1, s1, c2, s2, F,
    INTERLEAVED: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr,
):
    heads = head0 + tl.arange(0, BLOCK_H)
    f = tl.arange(0, BLOCK_F)
    mask = (heads < n_heads)[:, None] & (f < F)[None, :]
    if INTERLEAVED:
        o1 = 2 * f
        o2 = 2 * f + 1
    else:
        o1 = f
        o2 = f + F
    base = X + b * sb + s * ss + heads.to(tl.int64)[:, None] * sh
    x1 = tl.load(base + o1[None, :], mask=mask, other=0.0)
    x2 = tl.load(base + o2[None, :], mask=mask, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    y1 = x1f * c1[None, :] - x2f * s1[None, :]
    y2 = x2f * c2[None, :] + x1f * s2[None, :]
    tl.store(base + o1[None, :], y1.to(x1.dtype), mask=mask)
    tl.store(base + o2[None, :], y2.to(x2.dtype), mask=mask)


@triton.jit
def _rope_kernel(
    Q, K, COS, SIN,
    S, Hq, Hk, F, sec1, sec2,
    sq_b, sq_s, sq_h, sk_b, sk_s, sk_h,
    sc_m, sc_b, sc_s, sc_r, ss_m, ss_b, ss_s, ss_r,
    INTERLEAVED: tl.constexpr, LAYOUT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    hb = tl.program_id(1)
    b = tok // S
    s = tok % S
    f = tl.arange(0, BLOCK_F)
    fm = f < F
    stream = (f >= sec1).to(tl.int64) + (f >= sec2).to(tl.int64)  # mrope position stream (0 unless 4-D cos)
    if LAYOUT == 0:
        col1 = f
        col2 = f + F
    elif LAYOUT == 1:
        col1 = f
        col2 = f
    else:
        col1 = 2 * f
        col2 = 2 * f + 1
    cos_base = COS + b * sc_b + s * sc_s + stream * sc_m
    sin_base = SIN + b * ss_b + s * ss_s + stream * ss_m
    c1 = tl.load(cos_base + col1 * sc_r, mask=fm, other=0.0).to(tl.float32)
    s1 = tl.load(sin_base + col1 * ss_r, mask=fm, other=0.0).to(tl.float32)
    if LAYOUT == 1:
        c2 = c1
        s2 = s1
    else:
        c2 = tl.load(cos_base + col2 * sc_r, mask=fm, other=0.0).to(tl.float32)
        s2 = tl.load(sin_base + col2 * ss_r, mask=fm, other=0.0).to(tl.float32)
    n_qb = tl.cdiv(Hq, BLOCK_H)
    if hb < n_qb:
        _rotate_heads(Q, sq_b, sq_s, sq_h, Hq, hb * BLOCK_H, b, s, c1, s1, c2, s2, F,
                      INTERLEAVED, BLOCK_H, BLOCK_F)
    else:
        _rotate_heads(K, sk_b, sk_s, sk_h, Hk, (hb - n_qb) * BLOCK_H, b, s, c1, s1, c2, s2, F,
                      INTERLEAVED, BLOCK_H, BLOCK_F)


def _as_4d(t: torch.Tensor, B: int, S: int) -> torch.Tensor:
    """cos/sin as [M, B, S, R] (M = 1 or 3 streams), a broadcast batch of 1 as stride 0."""
    t4 = t if t.dim() == 4 else t.unsqueeze(0)
    return t4.expand(t4.shape[0], B, S, t4.shape[-1])


def rope_reference_(q, k, cos, sin, interleaved: bool, mrope_section: Optional[list[int]]) -> None:
    """Plain-torch version of the kernel (the fallback where Triton cannot run)."""
    B, S = q.shape[:2]
    R = cos.shape[-1]
    F = R // 2
    f = torch.arange(F, device=q.device)
    layout = cos_layout(interleaved, mrope_section, cos.dim())
    col1, col2 = {LAYOUT_HALF: (f, f + F), LAYOUT_GLM: (f, f), LAYOUT_PAIRS: (2 * f, 2 * f + 1)}[layout]
    stream = torch.zeros_like(f)
    if cos.dim() == 4:
        stream = (f >= mrope_section[0]).long() + (f >= mrope_section[0] + mrope_section[1]).long()

    def pick(t, col):  # -> [B, S, 1, F] fp32
        return _as_4d(t, B, S)[stream, :, :, col].permute(1, 2, 0).unsqueeze(2).float()

    c1, s1, c2, s2 = pick(cos, col1), pick(sin, col1), pick(cos, col2), pick(sin, col2)
    for x in (q, k):
        x1, x2 = (x[..., 0:R:2], x[..., 1:R:2]) if interleaved else (x[..., :F], x[..., F:R])
        x1f, x2f = x1.float(), x2.float()
        y1, y2 = x1f * c1 - x2f * s1, x2f * c2 + x1f * s2
        x1.copy_(y1)
        x2.copy_(y2)


@triton_op("autoglm::rope", mutates_args={"q", "k"})
def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    interleaved: bool, mrope_section: Optional[list[int]],
) -> None:
    B, S, Hq, _ = q.shape
    Hk = k.shape[2]
    R = cos.shape[-1]
    F = R // 2
    if B * S == 0 or F == 0:
        return
    if not _triton_can_run(q.device):
        rope_reference_(q, k, cos, sin, interleaved, mrope_section)
        return
    sec1, sec2 = F, F  # every frequency on stream 0
    if cos.dim() == 4:
        sec1, sec2 = mrope_section[0], mrope_section[0] + mrope_section[1]
    c4, s4 = _as_4d(cos, B, S), _as_4d(sin, B, S)
    block_f = triton.next_power_of_2(int(F))
    pairs = 512 if B * S < 64 else 2048  # decode: more, smaller programs; prefill: bigger tiles
    block_h = max(1, min(triton.next_power_of_2(int(max(Hq, Hk))), pairs // block_f))
    grid = (B * S, triton.cdiv(Hq, block_h) + triton.cdiv(Hk, block_h))
    wrap_triton(_rope_kernel)[grid](
        q, k, c4, s4,
        S, Hq, Hk, F, sec1, sec2,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        *c4.stride(), *s4.stride(),
        INTERLEAVED=interleaved, LAYOUT=cos_layout(interleaved, mrope_section, cos.dim()),
        BLOCK_H=block_h, BLOCK_F=block_f, num_warps=4 if block_h * block_f <= 512 else 8,
    )
