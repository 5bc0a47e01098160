"""LayerNorm with bias (bf16, OPT-1.3B hidden 2048): nn.LayerNorm vs one autoglm kernel.

  layer_norm            stock: nn.LayerNorm(x)
  fused_add_layer_norm  stock: h = residual + x; nn.LayerNorm(h)   (OPT's residual add + next norm)
at rows 1, 16 (decode) and 4096 (prefill). bytes = inputs read + outputs written + weight and bias,
the same for both impls.
"""

import pytest
import torch

HIDDEN = 2048
ROWS = (1, 16, 4096)
OPS = ("layer_norm", "fused_add_layer_norm")
CASES = [(op, n, impl) for op in OPS for n in ROWS for impl in ("stock", "fused")]


@pytest.mark.parametrize("op,rows,impl", CASES, ids=[f"{o}-rows{n}-{i}" for o, n, i in CASES])
def test_layernorm(benchmark, bandwidth, op, rows, impl):
    from common import GraphTimer, copies_for, record

    from autoglm_kernels import ops

    dt = torch.bfloat16
    benchmark.group = f"{op} h={HIDDEN} rows={rows}"
    ln = torch.nn.LayerNorm(HIDDEN).to(device="cuda", dtype=dt)
    act = rows * HIDDEN * 2
    bytes_moved = (2 if op == "layer_norm" else 4) * act + 2 * HIDDEN * 2
    sets = [(torch.randn(rows, HIDDEN, device="cuda", dtype=dt), torch.randn(rows, HIDDEN, device="cuda", dtype=dt))
            for _ in range(copies_for(bytes_moved))]

    if impl == "stock":
        def fn(x, r):
            if op == "layer_norm":
                return ln(x)
            h = r + x
            return ln(h), h
    else:
        def fn(x, r):
            if op == "layer_norm":
                return ops.layer_norm(x, ln.weight, ln.bias, ln.eps)
            return ops.fused_add_layer_norm(x, r, ln.weight, ln.bias, ln.eps)

    with torch.no_grad():
        timer = GraphTimer(fn, sets)
        record(benchmark, timer, impl=impl, bandwidth=bandwidth, bytes_moved=bytes_moved, op=op, hidden=HIDDEN, rows=rows)
