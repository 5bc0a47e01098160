"""Flash attention forward for prefill: a prompt's S queries against L >= S keys.

torch op `autoglm::prefill_attention(q, k, v, kv_mask, scale, causal) -> out`
  q        [B, S, Hq, D]   last dim contiguous (a view into the qkv projection is fine)
  k, v     [B, Hk, L, D]   last dim contiguous; the queries are the last S of the L positions
  kv_mask  [B, M] or None  M >= L, 0 = padding key (left-padded prompts); only the first L are read
  out      [B, S, Hq, D]   contiguous, q's dtype
With causal=True, query i (at position L - S + i) sees keys j <= L - S + i (bottom-right aligned,
as flash-attn does with a KV-cache prefix). A row that sees no key (a left-padding query) is 0.

One program per (batch x query head, block of BLOCK_M queries), online softmax over BLOCK_N-key
tiles in fp32. GQA reads KV head h // (Hq/Hk) directly (K/V are never repeated; the Hq/Hk programs
that share a KV head hit it in L2). Tiles entirely below the causal diagonal run without the
causal/bounds mask; only the diagonal tiles pay for it.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from . import cdiv, launch, pdl_prologue, triton_can_run, triton_op

_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for the running max: never NaN on empty rows
_LOG2E = 1.4426950408889634


def launch_config(head_dim: int, queries: int, device: torch.device) -> dict:
    """Tile sizes and launch options. The interpreter uses small tiles so small test shapes still
    cover several tiles. On the GPU, head_dim 128 (H100, causal bf16, GLM-4 and Llama-3.1-8B heads,
    bench/results/..._0101_.../prefill_sweep.log): 128 x 128 tiles, 8 warps, 3 stages from 2048
    queries (0.93x SDPA at 2048, 0.83x at 8192, against 0.77x / 0.76x with the 128 x 64 tiles and
    grid order before); 64-query blocks with 4 warps below that, where 128-query blocks leave the
    132 SMs short of work (512: 0.93x, against 0.83x with the large tiles and 0.88x before).
    head_dim 64 keeps 128 x 64 tiles, 4 warps."""
    if device.type != "cuda":
        return dict(BLOCK_M=32, BLOCK_N=16, num_warps=4, num_stages=1)
    if head_dim != 128:
        return dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=3)
    if queries <= 1024:
        return dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    return dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3)


@triton.jit
def _tile(acc, l_i, m_i, q, k_base, v_base, MASK_B, start, offs_m, mask_len, L, causal_off, sk_n, sv_n,
          qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, HAS_MASK: tl.constexpr,
          EDGE: tl.constexpr, CAUSAL: tl.constexpr):
    """One BLOCK_N-key tile of online softmax. EDGE: apply the causal and key-bounds masks."""
    n = start + tl.arange(0, BLOCK_N)
    d = tl.arange(0, HEAD_DIM)
    if EDGE:
        col_ok = n < L
        k = tl.load(k_base + n[:, None] * sk_n + d[None, :], mask=col_ok[:, None], other=0.0)
        v = tl.load(v_base + n[:, None] * sv_n + d[None, :], mask=col_ok[:, None], other=0.0)
    else:
        k = tl.load(k_base + n[:, None] * sk_n + d[None, :])
        v = tl.load(v_base + n[:, None] * sv_n + d[None, :])
    s = tl.dot(q, tl.trans(k)) * tl.cast(qk_scale, tl.float32)  # inductor passes Python floats as fp64
    if EDGE:
        ok = col_ok[None, :]
        if CAUSAL:
            ok = ok & (n[None, :] <= (offs_m + causal_off)[:, None])
        s = tl.where(ok, s, float("-inf"))
    if HAS_MASK:
        keep = tl.load(MASK_B + n, mask=n < mask_len, other=0)
        s = tl.where((keep != 0)[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])  # P @ V accumulates inside the MMA
    return acc, l_i, m_new


@triton.jit(do_not_specialize=["sm_b", "S", "L"])  # prompt lengths vary: no recompiles per length
def _prefill_kernel(
    Q, K, V, MASK, O,
    sq_b, sq_s, sq_h,
    sk_b, sk_h, sk_n,
    sv_b, sv_h, sv_n,
    sm_b, so_b, so_s, so_h,
    S, L, Hq, qk_scale,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
    PDL: tl.constexpr = False,
):
    pdl_prologue(PDL)
    # Grid (B * Hq, query blocks), heads fastest and the query blocks in reverse: every head's
    # heaviest (last, causal) block starts before any lighter one, so the light ones fill the tail.
    bh = tl.program_id(0)  # b * Hq + h
    mb = tl.num_programs(1) - 1 - tl.program_id(1)
    b = bh // Hq
    h = bh % Hq
    hk = h // G

    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = offs_m < S
    d = tl.arange(0, HEAD_DIM)
    q_ptrs = Q + b.to(tl.int64) * sq_b + h.to(tl.int64) * sq_h + offs_m[:, None] * sq_s + d[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    k_base = K + b.to(tl.int64) * sk_b + hk.to(tl.int64) * sk_h
    v_base = V + b.to(tl.int64) * sv_b + hk.to(tl.int64) * sv_h
    MASK_B = MASK + b.to(tl.int64) * sm_b

    causal_off = L - S  # query row m sits at key position m + causal_off
    if CAUSAL:
        first_row = mb * BLOCK_M + causal_off
        hi = tl.minimum(L, first_row + BLOCK_M)  # keys any row of this block can see
        full_end = tl.minimum((first_row + 1) // BLOCK_N, L // BLOCK_N) * BLOCK_N  # tiles all rows see
        full_end = tl.maximum(full_end, 0)
    else:
        hi = L
        full_end = (L // BLOCK_N) * BLOCK_N

    m_i = tl.full([BLOCK_M], _NEG, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    for start in range(0, full_end, BLOCK_N):
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k_base, v_base, MASK_B, start, offs_m, L, L, causal_off,
                              sk_n, sv_n, qk_scale, HEAD_DIM, BLOCK_N, HAS_MASK, False, CAUSAL)
    for start in range(full_end, hi, BLOCK_N):
        acc, l_i, m_i = _tile(acc, l_i, m_i, q, k_base, v_base, MASK_B, start, offs_m, L, L, causal_off,
                              sk_n, sv_n, qk_scale, HEAD_DIM, BLOCK_N, HAS_MASK, True, CAUSAL)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # rows with no visible key: acc is 0 -> 0
    o_ptrs = O + b.to(tl.int64) * so_b + h.to(tl.int64) * so_h + offs_m[:, None] * so_s + d[None, :]
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=row_ok[:, None])


def prefill_attention_reference(q, k, v, kv_mask=None, scale=None, causal=True) -> torch.Tensor:
    """Plain-torch fp32 prefill attention with the op's semantics (CPU fallback)."""
    B, S, Hq, D = q.shape
    Hk, L = k.shape[1], k.shape[2]
    scale = D**-0.5 if scale is None else scale
    allowed = torch.ones(B, S, L, dtype=torch.bool, device=q.device)
    if causal:
        pos = torch.arange(S, device=q.device)[:, None] + (L - S)
        allowed = allowed & (torch.arange(L, device=q.device)[None, :] <= pos)
    if kv_mask is not None:
        allowed = allowed & (kv_mask[:, None, :L] != 0)
    kr = k.float().repeat_interleave(Hq // Hk, dim=1)
    vr = v.float().repeat_interleave(Hq // Hk, dim=1)
    s = torch.einsum("bshd,bhld->bhsl", q.float(), kr) * scale
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("bhsl,bhld->bshd", p, vr).to(q.dtype).contiguous()


@triton_op("autoglm::prefill_attention", mutates_args=())
def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv_mask: Optional[torch.Tensor],
    scale: float,
    causal: bool,
) -> torch.Tensor:
    """The Triton flash kernel (see the module docstring). Inputs are validated by
    autoglm_kernels.ops.prefill_attention, which also decides when to use SDPA instead."""
    if not triton_can_run(q.device):
        return prefill_attention_reference(q, k, v, kv_mask, scale, causal)
    B, S, Hq, D = q.shape
    Hk, L = k.shape[1], k.shape[2]
    cfg = launch_config(D, S, q.device)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    if kv_mask is not None:
        mask = kv_mask.view(torch.uint8) if kv_mask.dtype == torch.bool else kv_mask
        sm_b = mask.stride(0)
    else:
        mask, sm_b = q, 0  # unused pointer (HAS_MASK=False)
    grid = (B * Hq, cdiv(S, cfg["BLOCK_M"]))
    launch(_prefill_kernel, grid,
        q, k, v, mask, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        sm_b, out.stride(0), out.stride(1), out.stride(2),
        S, L, Hq, scale * _LOG2E,
        G=Hq // Hk, HEAD_DIM=D, CAUSAL=causal, HAS_MASK=kv_mask is not None, **cfg,
    )
    return out
