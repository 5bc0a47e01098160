"""RMSNorm, residual-add + RMSNorm, and GLM-4's sandwich norm-add-norm: one kernel launch each.

torch ops (x [..., H] with a contiguous last dim; rows may be strided; outputs are contiguous):
  autoglm::rms_norm(x, weight, eps) -> out
      out = weight * (x_f32 * rsqrt(mean(x_f32^2) + eps)).to(x.dtype)        (LlamaRMSNorm / Glm4RMSNorm /
      dtype promote(weight, x), exactly like the transformers modules             Qwen3RMSNorm, incl. q/k_norm)
  autoglm::fused_add_rms_norm(x, residual, weight, eps) -> (out, new_residual)
      new_residual = x + residual (x.dtype); out = rms_norm(new_residual, weight)
  autoglm::norm_add_norm(x, residual, weight1, weight2, eps) -> (out, new_residual)
      new_residual = residual + rms_norm(x, weight1); out = rms_norm(new_residual, weight2)
      (GLM-4: post_self_attn_layernorm -> +residual -> post_attention_layernorm, and
       post_mlp_layernorm -> +residual -> next layer's input_layernorm)

Every intermediate the stock modules round to x.dtype is rounded to x.dtype here too, so bf16
results match stock to within reduction-order differences. One program handles ROWS whole rows
(the row lives in registers: H <= MAX_HIDDEN); rows are addressed as (outer, inner) with one
stride each, which covers contiguous tensors and head views of a fused qkv output alike.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import cdiv, launch, next_power_of_2, pdl_prologue, stock_round, triton_can_run, triton_op, weights_ready

MAX_HIDDEN = 32768  # one row in registers: 32 values per thread at 32 warps
_TILE = 2048  # elements per program when several short rows share one (e.g. Qwen3 q_norm, D=128)

_RMS, _ADD_RMS, _RMS_ADD_RMS = 0, 1, 2  # kernel modes


def row_view(t: torch.Tensor) -> tuple[int, int, torch.Tensor]:
    """(outer stride, inner stride, tensor) addressing row r = (r // shape[-2], r % shape[-2]) of
    `t` [..., I, H]; copies only when the leading dims cannot be folded into one stride."""
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        t = t.contiguous()
    if t.dim() == 1:
        return 0, 0, t
    if t.dim() == 2:
        return 0, t.stride(0), t
    if t.dim() == 3:  # [B, S, H]: already one outer stride
        return t.stride(0), t.stride(1), t
    try:
        v = t.view(-1, t.shape[-2], t.shape[-1])
    except RuntimeError:  # leading dims not foldable into one stride
        t = t.contiguous()
        v = t.view(-1, t.shape[-2], t.shape[-1])
    return v.stride(0), v.stride(1), t


def launch_config(hidden: int) -> tuple[int, int, int]:
    """(BLOCK_H, ROWS, num_warps): a power-of-two row block, enough rows per program to fill
    _TILE elements, and about 16 values per thread (H=4096 -> 8 warps). Depends on H only, so
    a compiled graph does not specialize on the row count."""
    block_h = next_power_of_2(int(hidden))
    rows = max(1, _TILE // block_h)
    num_warps = min(32, max(1, rows * block_h // 512))
    return block_h, rows, num_warps


@triton.jit
def _rms_scale(xf, H, eps):
    """xf [ROWS, BLOCK_H] fp32 with zeros past H -> xf * rsqrt(mean(xf^2) + eps)."""
    var = tl.sum(xf * xf, axis=1) / H
    return xf * tl.rsqrt(var + eps)[:, None]


@triton.jit
def _rms_norm_kernel(
    X, R, W1, W2, OUT, NEW_R,
    n_rows, n_inner, H,
    sx_o, sx_i, sr_o, sr_i,
    eps,
    MODE: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
    EARLY_W: tl.constexpr = False, PDL: tl.constexpr = False,
):
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    # the weights before any reduction, and (EARLY_W: parameters) before the PDL wait (see layernorm.py)
    if not EARLY_W:
        pdl_prologue(PDL)
    w = tl.load(W2 + cols, mask=col_ok, other=0.0).to(tl.float32)
    if MODE == 2:
        w1 = tl.load(W1 + cols, mask=col_ok, other=0.0).to(tl.float32)
    if EARLY_W:
        pdl_prologue(PDL)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    mask = (rows < n_rows)[:, None] & col_ok[None, :]
    outer, inner = rows // n_inner, rows % n_inner
    x = tl.load(X + (outer * sx_o + inner * sx_i)[:, None] + cols[None, :], mask=mask, other=0.0)
    dt = x.dtype
    out_offs = rows[:, None] * H + cols[None, :]  # OUT and NEW_R are contiguous [n_rows, H]
    if MODE == 1:  # new_residual = x + residual, rounded to x.dtype as stock `residual + hidden_states`
        r = tl.load(R + (outer * sr_o + inner * sr_i)[:, None] + cols[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(dt)
        tl.store(NEW_R + out_offs, x, mask=mask)
    if MODE == 2:  # new_residual = residual + rms_norm(x, weight1)   (weight1.dtype == x.dtype)
        r = tl.load(R + (outer * sr_o + inner * sr_i)[:, None] + cols[None, :], mask=mask, other=0.0)
        n1 = _rms_scale(x.to(tl.float32), H, eps).to(dt)
        h1 = stock_round(n1.to(tl.float32) * w1[None, :], dt)  # not fused into the add
        x = (r.to(tl.float32) + h1).to(dt)
        tl.store(NEW_R + out_offs, x, mask=mask)
    n = _rms_scale(x.to(tl.float32), H, eps).to(dt)
    y = n.to(tl.float32) * w[None, :]
    tl.store(OUT + out_offs, y.to(OUT.dtype.element_ty), mask=mask)


def row_launch(x: torch.Tensor, residual: torch.Tensor | None):
    """The launch geometry shared by the row-wise norm kernels, or None for an empty input:
    (grid, row args after the data pointers, x and residual as row views, meta-parameters)."""
    H = x.shape[-1]
    n_rows = x.numel() // H if H else 0
    if n_rows == 0 or H == 0:
        return None
    sx_o, sx_i, x = row_view(x)
    sr_o, sr_i = 0, 0
    if residual is not None:
        sr_o, sr_i, residual = row_view(residual)
    n_inner = x.shape[-2] if x.dim() >= 2 else 1
    if n_rows <= n_inner or (sx_o == n_inner * sx_i and sr_o == n_inner * sr_i):
        # one stride addresses every row (2-D, contiguous, or foldable views): n_inner = 1, which
        # Triton specializes, drops the int64 division and modulo before the first load
        sx_o, sr_o, n_inner = sx_i, sr_i, 1
    block_h, rows, num_warps = launch_config(H)
    args = (n_rows, n_inner, H, sx_o, sx_i, sr_o, sr_i)
    return (cdiv(n_rows, rows),), args, x, residual, dict(ROWS=rows, BLOCK_H=block_h, num_warps=num_warps)


def _launch(mode, x, residual, weight1, weight2, out, new_residual, eps):
    geometry = row_launch(x, residual)
    if geometry is None:
        return
    grid, args, x, residual, meta = geometry
    launch(_rms_norm_kernel, grid,
        x, residual if residual is not None else x, weight1 if weight1 is not None else weight2, weight2,
        out, new_residual if new_residual is not None else out, *args, eps, MODE=mode,
        EARLY_W=weights_ready(weight1, weight2), **meta,
    )


# ---- plain-torch references: the fallback where Triton cannot run (the transformers module math)
def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.to(torch.float32)
    n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * n.to(x.dtype)


def _out_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    return torch.promote_types(weight.dtype, x.dtype)


@triton_op("autoglm::rms_norm", mutates_args={})
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not triton_can_run(x.device):
        return rms_norm_reference(x, weight, eps).contiguous()
    out = torch.empty_like(x, dtype=_out_dtype(x, weight), memory_format=torch.contiguous_format)
    _launch(_RMS, x, None, None, weight, out, None, eps)
    return out


@triton_op("autoglm::fused_add_rms_norm", mutates_args={})
def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if not triton_can_run(x.device):
        h = (residual + x).contiguous()
        return rms_norm_reference(h, weight, eps).contiguous(), h
    out = torch.empty_like(x, dtype=_out_dtype(x, weight), memory_format=torch.contiguous_format)
    new_residual = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(_ADD_RMS, x, residual, None, weight, out, new_residual, eps)
    return out, new_residual


@triton_op("autoglm::norm_add_norm", mutates_args={})
def norm_add_norm(
    x: torch.Tensor, residual: torch.Tensor, weight1: torch.Tensor, weight2: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if not triton_can_run(x.device):
        h = (residual + rms_norm_reference(x, weight1, eps)).contiguous()
        return rms_norm_reference(h, weight2, eps).contiguous(), h
    out = torch.empty_like(x, dtype=_out_dtype(x, weight2), memory_format=torch.contiguous_format)
    new_residual = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(_RMS_ADD_RMS, x, residual, weight1, weight2, out, new_residual, eps)
    return out, new_residual
