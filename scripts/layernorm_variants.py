"""LayerNorm at 1..16 rows (#6: <= 0.3x stock): the shipped kernel against variants, timed paired
with stock nn.LayerNorm in one run (GPU time, CUDA-graph replay, inputs rotated as bench does).

Variants: the shipped kernel (the weight and bias loaded before the PDL wait where they are
parameters, x with the reduction's other loads, one tuple reduction of the sum and the sum of
squares of x - x[row, 0], a second one only for rows whose mean is far from x[row, 0]) at several
num_warps, and with the weights loaded after the PDL wait (what a non-parameter weight gets).
Earlier versions of this script measured: the kernel of ed6a257 (two passes, the weight and bias
loaded after them: ..._0908_..., ..._0935_...); de9dddc's two-pass kernel with its loads moved up
and the row-stride fold on and off (..._0935_...); 78b8f69's kernel, the two sums joined into one
tensor (one shared-memory barrier instead of two: no faster, ..._0952_...); and probes of
bd21fe5's kernel (..._1104_...): the weights before the PDL wait 1.37 -> 1.13 us at 1 row (shipped
since), no centred second reduction no faster. Prints a table; every variant is checked against
the fp32 reference first.
Usage: python scripts/layernorm_variants.py [--hidden 2048]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from common import GraphTimer, copies_for, paired_us  # noqa: E402

import autoglm_kernels.triton as kt  # noqa: E402
from autoglm_kernels.triton import launch  # noqa: E402
from autoglm_kernels.triton.layernorm import _layer_norm_kernel, layer_norm_reference  # noqa: E402
from autoglm_kernels.triton.rmsnorm import row_launch  # noqa: E402


def run_variant(kernel, num_warps, fold, x, r, w, b, eps, probes=None):
    out = torch.empty_like(x)
    new_r = torch.empty_like(x) if r is not None else None
    grid, args, xv, rv, meta = row_launch(x, r)
    if not fold and x.dim() == 2:  # the geometry before row_launch folded the row strides
        n_rows, _, H, _, sx_i, _, sr_i = args
        args = (n_rows, n_rows, H, 0, sx_i, 0, sr_i)
    meta = dict(meta, num_warps=num_warps)
    launch(kernel, grid, xv, rv if rv is not None else xv, w, b, out, new_r if new_r is not None else out,
           *args, eps, ADD=r is not None, HAS_BIAS=True, **meta, **(probes or {}))
    return (out, new_r) if r is not None else out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--rows", default="1,16,4096")
    ap.add_argument("--warps", default="2,4,8")
    a = ap.parse_args()
    H, dt = a.hidden, torch.bfloat16
    kt._direct.on = True  # the ops' direct path: LaunchCache launches, with PDL where it is on
    ln = torch.nn.LayerNorm(H).to(device="cuda", dtype=dt)
    with torch.no_grad():
        ln.weight.normal_(1.0, 0.1)
        ln.bias.normal_(0.0, 0.1)
    w, b, eps = ln.weight, ln.bias, ln.eps
    variants = {f"shipped-w{nw}": (_layer_norm_kernel, nw, True, {"EARLY_W": True}) for nw in map(int, a.warps.split(","))}
    variants["weights_after_wait-w4"] = (_layer_norm_kernel, 4, True, {"EARLY_W": False})
    print(f"H={H} PDL={kt.PDL}")
    for op in ("layer_norm", "fused_add_layer_norm"):
        add = op != "layer_norm"
        for rows in map(int, a.rows.split(",")):
            # correctness first: a row with a large mean (cancellation) and random rows
            x = torch.randn(rows, H, device="cuda", dtype=dt) * 3 + 40
            r = torch.randn(rows, H, device="cuda", dtype=dt) if add else None
            h = (x + r) if add else x
            ref = layer_norm_reference(h, w, b, eps).float()
            stock_err = (ln(h).float() - ref).abs().max().item()
            errs = {}
            for name, (k, nw, fold, probes) in variants.items():
                got = run_variant(k, nw, fold, x, r, w, b, eps, probes)
                out = got[0] if add else got
                if add:
                    assert torch.equal(got[1], h), name
                errs[name] = (out.float() - ref).abs().max().item()
            act = rows * H * 2
            nbytes = (2 if not add else 4) * act + 2 * H * 2
            sets = [(torch.randn(rows, H, device="cuda", dtype=dt), torch.randn(rows, H, device="cuda", dtype=dt))
                    for _ in range(copies_for(nbytes))]
            timers = {"stock": GraphTimer((lambda x, r: ln(x)) if not add else (lambda x, r: ln(r + x)), sets)}
            for name, (k, nw, fold, probes) in variants.items():
                timers[name] = GraphTimer(
                    lambda x, r, k=k, nw=nw, fold=fold, p=probes: run_variant(k, nw, fold, x, r if add else None, w, b,
                                                                            eps, p), sets)
            us = paired_us(timers)
            line = " ".join(f"{n}={us[n]:.2f}us({us[n] / us['stock']:.2f}x,err {errs[n]:.3g})" for n in variants)
            print(f"{op} rows={rows}: stock={us['stock']:.2f}us (err {stock_err:.3g}) {line}", flush=True)


if __name__ == "__main__":
    main()
