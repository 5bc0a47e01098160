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
  y1 = x1*c1 - x2*s1,  y2 = x2*c2 + x1*s2   (with cos in q's dtype: each product and the sum
       rounded to q.dtype, as transformers' `q * cos + rotate_half(q) * sin` rounds them, so the
       result equals stock's bit for bit; with fp32 cos: fp32 math, one rounding)
4-D cos (mrope, 4.x): frequency f reads stream 0 for f < m0, 1 for f < m0+m1, else 2, which is
what apply_multimodal_rotary_pos_emb's split/cat of mrope_section*2 selects; done in the kernel's
addressing so it costs no extra launch.

torch op `autoglm::rope_append_kv(q!, k, v, cos, sin, k_cache!, v_cache!, cache_len!, ...) -> ()`
  a prefill's or decode step's RoPE and static-cache update in one launch (instead of the RoPE
  kernel plus the arange/add/add_/2x index_copy_ of transformers' StaticLayer.update): q rotates in place,
  rotated k and v are written to k_cache/v_cache [B, Hk, C, D] at slots cache_len + [0, S), then
  cache_len (the layer's 0-d device counter) advances by S. Slots >= C are not written. The
  counter advances inside the same launch: every program takes a ticket (an atomic add on a
  per-counter int32 that the last one resets), and the program that takes the last ticket, after
  every program has read the counter, adds S. No separate add kernel per layer and step.

torch op `autoglm::append_kv(k, v, k_cache!, v_cache!, cache_len!) -> ()`
  the same append for a model without RoPE (OPT): rope_append_kv's kernel with no rotary dims
  and no q heads, one launch instead of the stock update's five.

torch op `autoglm::rope_tables(inv_freq, position_ids, scaling, dtype) -> (cos, sin)`
  what a standard rotary embedding module returns (transformers' Llama/Qwen/GLM-4
  `*RotaryEmbedding.forward`: c = cos(position * inv_freq) * attention_scaling in fp32, cat(c, c),
  cast to dtype), [B, S, 2F] each from position_ids [B, S] and inv_freq [F], in one launch
  instead of the module's six to eight small kernels per forward. The fp32 product is exact as the
  module's is, and cos/sin are libdevice's cosf/sinf, the functions torch's own kernels call.
  CUDA only (the interpreter has no libdevice): elsewhere the stock computation.

Grid: (B*S tokens, head blocks of q, then of k, then (append) of v). Each program loads its
token's cos/sin once and handles BLOCK_H heads. Positions and the cache slot come only from
device tensors: graph-capturable.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from . import cdiv, launch, next_power_of_2, pdl_prologue, stock_round, triton_can_run, triton_op

LAYOUT_HALF, LAYOUT_GLM, LAYOUT_PAIRS = 0, 1, 2  # where frequency f's cos/sin sit (see module doc)


def cos_layout(interleaved: bool, mrope_section: Optional[list[int]], cos_dim: int) -> int:
    if not interleaved:
        return LAYOUT_HALF
    return LAYOUT_PAIRS if (mrope_section is not None and cos_dim == 3) else LAYOUT_GLM


@triton.jit
def _rnd(v, dtype: tl.constexpr, ON: tl.constexpr):
    """v (fp32) rounded to dtype and back where ON: the rounding a stock elementwise op in dtype makes."""
    if ON:
        return stock_round(v, dtype)
    return v


@triton.jit
def _rotate_heads(src, dst, row_ok, F, c1, s1, c2, s2, INTERLEAVED: tl.constexpr, BLOCK_F: tl.constexpr,
                  STOCK_ROUND: tl.constexpr):
    """Rotate the first R = 2F dims of BLOCK_H heads: src/dst are [BLOCK_H, 1] pointers to each
    head's element 0 (dst == src: in place)."""
    f = tl.arange(0, BLOCK_F)
    if INTERLEAVED:
        # pairs (2f, 2f + 1): one contiguous [BLOCK_H, 2 BLOCK_F] tile, split in registers (two
        # stride-2 loads and stores of single elements ran GLM-4's prefill at 7% of bandwidth)
        d = tl.arange(0, 2 * BLOCK_F)
        mask2 = row_ok[:, None] & (d < 2 * F)[None, :]
        xx = tl.load(src + d[None, :], mask=mask2, other=0.0)
        x1, x2 = tl.split(tl.reshape(xx, (xx.shape[0], BLOCK_F, 2)))
    else:
        mask = row_ok[:, None] & (f < F)[None, :]
        x1 = tl.load(src + f[None, :], mask=mask, other=0.0)
        x2 = tl.load(src + F + f[None, :], mask=mask, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    # stock's roundings (STOCK_ROUND: cos in q's dtype): `q * cos + rotate_half(q) * sin` rounds
    # each product to q's dtype, then the sum; the same roundings give stock's values bit for bit
    y1 = _rnd(x1f * c1[None, :], x1.dtype, STOCK_ROUND) - _rnd(x2f * s1[None, :], x1.dtype, STOCK_ROUND)
    y2 = _rnd(x2f * c2[None, :], x1.dtype, STOCK_ROUND) + _rnd(x1f * s2[None, :], x1.dtype, STOCK_ROUND)
    if INTERLEAVED:
        yy = tl.reshape(tl.join(y1, y2), (xx.shape[0], 2 * BLOCK_F))
        tl.store(dst + d[None, :], yy.to(xx.dtype), mask=mask2)
    else:
        tl.store(dst + f[None, :], y1.to(x1.dtype), mask=mask)
        tl.store(dst + F + f[None, :], y2.to(x2.dtype), mask=mask)


@triton.jit
def _copy_heads(src, dst, row_ok, lo, D, BLOCK_D: tl.constexpr):
    """Copy dims [lo, D) of BLOCK_H heads (pointers as in _rotate_heads)."""
    d = lo + tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (d < D)[None, :]
    tl.store(dst + d[None, :], tl.load(src + d[None, :], mask=mask), mask=mask)


@triton.jit
def _rope_kernel(
    Q, K, V, COS, SIN, KC, VC, POS, TICKET,
    S, Hq, Hk, F, D, C, sec1, sec2,
    sq_b, sq_s, sq_h, sk_b, sk_s, sk_h, sv_b, sv_s, sv_h,
    skc_b, skc_h, skc_n, svc_b, svc_h, svc_n,
    sc_m, sc_b, sc_s, sc_r, ss_m, ss_b, ss_s, ss_r,
    INTERLEAVED: tl.constexpr, LAYOUT: tl.constexpr, APPEND: tl.constexpr, STOCK_ROUND: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_D: tl.constexpr,
    PDL: tl.constexpr = False,
):
    """Program (token, head block): q head blocks rotate in place; k head blocks rotate in place,
    or (APPEND) into the cache at slot POS + s; then (APPEND only) v head blocks copy to the cache,
    and the program that takes the last ticket advances POS by S (see the module doc)."""
    pdl_prologue(PDL)
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
    n_kb = tl.cdiv(Hk, BLOCK_H)
    h = tl.arange(0, BLOCK_H).to(tl.int64)
    if hb < n_qb:
        heads = hb * BLOCK_H + h
        src = Q + b * sq_b + s * sq_s + heads[:, None] * sq_h
        _rotate_heads(src, src, heads < Hq, F, c1, s1, c2, s2, INTERLEAVED, BLOCK_F, STOCK_ROUND)
    else:
        kv = hb >= n_qb + n_kb  # a v head block (APPEND only)
        heads = (hb - n_qb - kv.to(tl.int32) * n_kb) * BLOCK_H + h
        if APPEND:
            slot = tl.load(POS).to(tl.int64) + s
            ok = (heads < Hk) & (slot < C)  # a full cache takes no write (no out-of-bounds store)
            if kv:
                _copy_heads(V + b * sv_b + s * sv_s + heads[:, None] * sv_h,
                            VC + b * svc_b + slot * svc_n + heads[:, None] * svc_h, ok, 0, D, BLOCK_D)
            else:
                src = K + b * sk_b + s * sk_s + heads[:, None] * sk_h
                dst = KC + b * skc_b + slot * skc_n + heads[:, None] * skc_h
                _rotate_heads(src, dst, ok, F, c1, s1, c2, s2, INTERLEAVED, BLOCK_F, STOCK_ROUND)
                _copy_heads(src, dst, ok, 2 * F, D, BLOCK_D)  # dims past the rotary part pass through
        else:
            src = K + b * sk_b + s * sk_s + heads[:, None] * sk_h
            _rotate_heads(src, src, heads < Hk, F, c1, s1, c2, s2, INTERLEAVED, BLOCK_F, STOCK_ROUND)
    if APPEND:
        # acq_rel: this program's read of POS happens before its ticket; the last ticket's holder
        # therefore advances POS after every program has read it, and resets the ticket for the next launch
        ticket = tl.atomic_add(TICKET, 1)
        if ticket == tl.num_programs(0) * tl.num_programs(1) - 1:
            tl.store(POS, tl.load(POS) + S)
            tl.store(TICKET, 0)


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
    # products and sums in q's dtype where cos has it (stock's roundings), else fp32
    dt = q.dtype if cos.dtype == q.dtype else torch.float32
    c1, s1, c2, s2 = (t.to(dt) for t in (c1, s1, c2, s2))
    for x in (q, k):
        x1, x2 = (x[..., 0:R:2], x[..., 1:R:2]) if interleaved else (x[..., :F], x[..., F:R])
        x1f, x2f = x1.to(dt), x2.to(dt)
        y1, y2 = x1f * c1 - x2f * s1, x2f * c2 + x1f * s2
        x1.copy_(y1)
        x2.copy_(y2)


def ticket_of(cache_len: torch.Tensor) -> torch.Tensor:
    """The counter's int32 ticket (zero between launches), kept on the counter tensor itself so it
    lives exactly as long (a CUDA graph that captured an append holds both addresses). Not a
    WeakKeyDictionary: its lookups compare tensors with ==, a host sync that breaks a capture."""
    t = getattr(cache_len, "_autoglm_ticket", None)
    if t is None or t.device != cache_len.device:
        t = torch.zeros(1, dtype=torch.int32, device=cache_len.device)
        cache_len._autoglm_ticket = t
    return t


def _launch(q, k, cos, sin, interleaved: bool, mrope_section: Optional[list[int]], append=None) -> None:
    """One launch of _rope_kernel; append = (v, k_cache, v_cache, cache_len) or None."""
    B, S, Hq, D = q.shape
    Hk = k.shape[2]
    F = cos.shape[-1] // 2
    sec1, sec2 = F, F  # every frequency on stream 0
    if cos.dim() == 4:
        sec1, sec2 = mrope_section[0], mrope_section[0] + mrope_section[1]
    c4, s4 = _as_4d(cos, B, S), _as_4d(sin, B, S)
    block_f = max(1, next_power_of_2(int(F)))  # F = 0: append_kv (no rotary dims)
    pairs = 512 if B * S < 64 else 2048  # decode: more, smaller programs; prefill: bigger tiles
    block_h = max(1, min(next_power_of_2(int(max(Hq, Hk))), pairs // block_f))
    n_kb = cdiv(Hk, block_h)
    if append is None:
        v, kc, vc, pos, ticket, C = k, k, k, q, q, 0  # unused (APPEND=False)
        v_strides, kc_strides, vc_strides = (0, 0, 0), (0, 0, 0), (0, 0, 0)
    else:
        v, kc, vc, pos = append
        ticket, C = ticket_of(pos), kc.shape[2]
        v_strides = (v.stride(0), v.stride(1), v.stride(2))
        kc_strides = (kc.stride(0), kc.stride(1), kc.stride(2))
        vc_strides = (vc.stride(0), vc.stride(1), vc.stride(2))
    grid = (B * S, cdiv(Hq, block_h) + n_kb * (2 if append is not None else 1))
    launch(_rope_kernel, grid,
        q, k, v, c4, s4, kc, vc, pos, ticket,
        S, Hq, Hk, F, D, C, sec1, sec2,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), *v_strides,
        *kc_strides, *vc_strides,
        *c4.stride(), *s4.stride(),
        INTERLEAVED=interleaved, LAYOUT=cos_layout(interleaved, mrope_section, cos.dim()), APPEND=append is not None,
        STOCK_ROUND=cos.dtype == q.dtype, BLOCK_H=block_h, BLOCK_F=block_f, BLOCK_D=next_power_of_2(int(D)),
        num_warps=4 if block_h * block_f <= 512 else 8,
    )


@triton_op("autoglm::rope", mutates_args={"q", "k"})
def rope(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    interleaved: bool, mrope_section: Optional[list[int]],
) -> None:
    B, S = q.shape[:2]
    if B * S == 0 or cos.shape[-1] // 2 == 0:
        return
    if not triton_can_run(q.device):
        rope_reference_(q, k, cos, sin, interleaved, mrope_section)
        return
    _launch(q, k, cos, sin, interleaved, mrope_section)


def append_kv_reference(k, v, k_cache, v_cache, cache_len) -> None:
    """Plain-torch append_kv (the fallback where Triton cannot run; syncs with the host)."""
    S, C = k.shape[1], k_cache.shape[2]
    slots = torch.arange(S, device=k.device) + cache_len.reshape(()).to(torch.int64)
    keep = slots < C
    k_cache.index_copy_(2, slots[keep], k.transpose(1, 2)[:, :, keep])
    v_cache.index_copy_(2, slots[keep], v.transpose(1, 2)[:, :, keep])
    cache_len.add_(S)


def rope_append_kv_reference(q, k, v, cos, sin, k_cache, v_cache, cache_len, interleaved: bool,
                             mrope_section: Optional[list[int]]) -> None:
    """Plain-torch rope_append_kv (the fallback where Triton cannot run; syncs with the host)."""
    k = k.clone()
    rope_reference_(q, k, cos, sin, interleaved, mrope_section)
    append_kv_reference(k, v, k_cache, v_cache, cache_len)


@triton_op("autoglm::rope_append_kv", mutates_args={"q", "k_cache", "v_cache", "cache_len"})
def rope_append_kv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
    k_cache: torch.Tensor, v_cache: torch.Tensor, cache_len: torch.Tensor,
    interleaved: bool, mrope_section: Optional[list[int]],
) -> None:
    if q.shape[0] * q.shape[1] == 0:
        return
    if not triton_can_run(q.device):
        rope_append_kv_reference(q, k, v, cos, sin, k_cache, v_cache, cache_len, interleaved, mrope_section)
        return
    _launch(q, k, cos, sin, interleaved, mrope_section, append=(v, k_cache, v_cache, cache_len))  # advances cache_len


@triton_op("autoglm::append_kv", mutates_args={"k_cache", "v_cache", "cache_len"})
def append_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              cache_len: torch.Tensor) -> None:
    if k.shape[0] * k.shape[1] == 0:
        return
    if not triton_can_run(k.device):
        append_kv_reference(k, v, k_cache, v_cache, cache_len)
        return
    no_rotary = k[:, :, 0, :0]  # cos/sin of R = 0 [B, S, 0]: the kernel only copies (never read)
    _launch(k[:, :, :0], k, no_rotary, no_rotary, False, None, append=(v, k_cache, v_cache, cache_len))  # advances cache_len


@triton.jit
def _tables_kernel(INV, POS, COS, SIN, F, scaling, BLOCK_F: tl.constexpr, PDL: tl.constexpr = False):
    """Program t (one token): COS[t] = cat(c, c), SIN[t] = cat(s, s) with c = cos(POS[t] * INV) *
    scaling, s likewise, in fp32 and rounded once to the output dtype (see the module doc)."""
    pdl_prologue(PDL)
    t = tl.program_id(0).to(tl.int64)
    f = tl.arange(0, BLOCK_F)
    ok = f < F
    freq = tl.load(POS + t).to(tl.float32) * tl.load(INV + f, mask=ok, other=0.0).to(tl.float32)
    c = (libdevice.cos(freq) * scaling).to(COS.dtype.element_ty)
    s = (libdevice.sin(freq) * scaling).to(SIN.dtype.element_ty)
    row = t * 2 * F
    tl.store(COS + row + f, c, mask=ok)
    tl.store(COS + row + F + f, c, mask=ok)
    tl.store(SIN + row + f, s, mask=ok)
    tl.store(SIN + row + F + f, s, mask=ok)


def rope_tables_reference(inv_freq, position_ids, scaling: float, dtype: torch.dtype):
    """Plain-torch rope_tables: the stock module's computation."""
    freqs = position_ids[..., None].float() * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(dtype), (emb.sin() * scaling).to(dtype)


@triton_op("autoglm::rope_tables", mutates_args=())
def rope_tables(inv_freq: torch.Tensor, position_ids: torch.Tensor, scaling: float,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    F = inv_freq.shape[0]
    if not position_ids.is_cuda or position_ids.numel() == 0:  # the interpreter has no libdevice cos/sin
        return rope_tables_reference(inv_freq, position_ids, scaling, dtype)
    pos = position_ids.contiguous()
    cos = torch.empty((*pos.shape, 2 * F), device=pos.device, dtype=dtype)
    sin = torch.empty_like(cos)
    launch(_tables_kernel, (pos.numel(),), inv_freq, pos, cos, sin, F, float(scaling),
           BLOCK_F=next_power_of_2(F), num_warps=1 if F <= 64 else 2)
    return cos, sin
