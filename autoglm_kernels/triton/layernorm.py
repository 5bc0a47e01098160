"""LayerNorm with bias, and residual-add + LayerNorm (OPT's decoder norms): one launch each.

torch ops (x [..., H] with a contiguous last dim; rows may be strided; outputs contiguous, x.dtype):
  autoglm::layer_norm(x, weight, bias, eps) -> out
      out = (x - mean) * rsqrt(var + eps) * weight + bias, statistics and math in fp32, one
      rounding to x.dtype at the end, as F.layer_norm does on CUDA. bias may be None.
  autoglm::fused_add_layer_norm(x, residual, weight, bias, eps) -> (out, new_residual)
      new_residual = x + residual (x.dtype, as stock `residual + hidden_states`);
      out = layer_norm(new_residual, weight, bias)

Same layout and launch scheme as rmsnorm.py: ROWS whole rows per program, row in registers.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import launch, pdl_prologue, triton_can_run, triton_op, weights_ready
from .rmsnorm import MAX_HIDDEN, row_launch  # noqa: F401  (MAX_HIDDEN re-exported)


@triton.jit
def _add_pair(a, b, c, d):
    return a + c, b + d


@triton.jit
def _layer_norm_kernel(
    X, R, W, B, OUT, NEW_R,
    n_rows, n_inner, H,
    sx_o, sx_i, sr_o, sr_i,
    eps,
    ADD: tl.constexpr, HAS_BIAS: tl.constexpr, ROWS: tl.constexpr, BLOCK_H: tl.constexpr,
    EARLY_W: tl.constexpr = False, PDL: tl.constexpr = False,
):
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    # Every load is issued before the reduction: a load placed after a reduction waits for it (a
    # barrier), and at 1-16 rows that latency is a large part of the kernel. EARLY_W (the weights
    # are parameters: weights_ready): the weight and bias even before the PDL wait, while the
    # kernel before still runs (1 row, H=2048: 1.37 -> 1.13 us, bench/results/..._1104_...).
    if not EARLY_W:
        pdl_prologue(PDL)
    w = tl.load(W + cols, mask=col_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        bias = tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)
    if EARLY_W:
        pdl_prologue(PDL)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    row_ok = rows < n_rows
    mask = row_ok[:, None] & col_ok[None, :]
    outer, inner = rows // n_inner, rows % n_inner
    x_offs = outer * sx_o + inner * sx_i
    x = tl.load(X + x_offs[:, None] + cols[None, :], mask=mask, other=0.0)
    shift = tl.load(X + x_offs, mask=row_ok, other=0.0).to(tl.float32)  # x[row, 0]
    out_offs = rows[:, None] * H + cols[None, :]
    if ADD:
        r_offs = outer * sr_o + inner * sr_i
        r = tl.load(R + r_offs[:, None] + cols[None, :], mask=mask, other=0.0)
        shift = (shift + tl.load(R + r_offs, mask=row_ok, other=0.0).to(tl.float32)).to(x.dtype).to(tl.float32)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)
        tl.store(NEW_R + out_offs, x, mask=mask)
    # Mean and variance from one reduction of the sum and the sum of squares of d = x - x[row, 0]:
    # d, the mean and var = E[d^2] - E[d]^2 lose about sqrt(E[d^2] / var) x fp32 epsilon (relative
    # to the spread) to rounding, so where E[d]^2 > 64 var (x[row, 0] an outlier far from the
    # mean) the row is centred again from x by a second reduction of the same kind, which the
    # first one's mean leaves free of cancellation.
    xf = x.to(tl.float32)
    d = tl.where(mask, xf - shift[:, None], 0.0)
    s1, s2 = tl.reduce((d, d * d), 1, _add_pair)
    dm = s1 / H
    var = s2 / H - dm * dm
    xc = tl.where(mask, d - dm[:, None], 0.0)
    if tl.max(dm * dm - 64.0 * var, axis=0) > 0.0:
        xc = tl.where(mask, xf - (shift + dm)[:, None], 0.0)
        c1, c2 = tl.reduce((xc, xc * xc), 1, _add_pair)
        cm = c1 / H
        var = c2 / H - cm * cm
        xc = tl.where(mask, xc - cm[:, None], 0.0)
    rstd = tl.rsqrt(tl.maximum(var, 0.0) + eps)
    y = xc * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += bias[None, :]
    tl.store(OUT + out_offs, y.to(OUT.dtype.element_ty), mask=mask)


def _launch(x, residual, weight, bias, out, new_residual, eps):
    geometry = row_launch(x, residual)
    if geometry is None:
        return
    grid, args, x, residual, meta = geometry
    launch(_layer_norm_kernel, grid,
        x, residual if residual is not None else x, weight, bias if bias is not None else weight,
        out, new_residual if new_residual is not None else out, *args, eps,
        ADD=residual is not None, HAS_BIAS=bias is not None, EARLY_W=weights_ready(weight, bias), **meta,
    )


def layer_norm_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    """fp32 math, one rounding to x.dtype (what F.layer_norm does on CUDA for half types)."""
    b = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), (x.shape[-1],), weight.float(), b, eps).to(x.dtype)


@triton_op("autoglm::layer_norm", mutates_args={})
def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float) -> torch.Tensor:
    if not triton_can_run(x.device):
        return layer_norm_reference(x, weight, bias, eps).contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(x, None, weight, bias, out, None, eps)
    return out


@triton_op("autoglm::fused_add_layer_norm", mutates_args={})
def fused_add_layer_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if not triton_can_run(x.device):
        h = (residual + x).contiguous()
        return layer_norm_reference(h, weight, bias, eps).contiguous(), h
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    new_residual = torch.empty_like(x, memory_format=torch.contiguous_format)
    _launch(x, residual, weight, bias, out, new_residual, eps)
    return out, new_residual
