"""RMSNorm family (bf16): the transformers module sequence vs one autoglm kernel.

ops at hidden 2048 / 4096 (Llama-3.2-1B / GLM-4-9B, Llama-3.1-8B) and rows 1, 16 (decode),
4096, 16384 (prefill):
  rms_norm            stock: Glm4RMSNorm(x)
  fused_add_rms_norm  stock: h = residual + x; Glm4RMSNorm(h)
  norm_add_norm       stock: h = residual + Glm4RMSNorm_1(x); Glm4RMSNorm_2(h)   (GLM-4 sandwich norms)
bytes = what the fused kernel must move (inputs read, outputs written, weights), the same for both
impls, so GB/s and % of read bandwidth are useful bytes per second.
"""

import pytest
import torch

HIDDEN = (2048, 4096)
ROWS = (1, 16, 4096, 16384)
OPS = ("rms_norm", "fused_add_rms_norm", "norm_add_norm")
CASES = [(op, h, n, impl) for op in OPS for h in HIDDEN for n in ROWS for impl in ("stock", "fused")]
EPS = 1e-5


def _norm(hidden, dtype):
    from transformers.models.glm4.modeling_glm4 import Glm4RMSNorm

    m = Glm4RMSNorm(hidden, eps=EPS).to(device="cuda", dtype=dtype)
    with torch.no_grad():
        m.weight.normal_(1.0, 0.1)
    return m


@pytest.mark.parametrize("op,hidden,rows,impl", CASES, ids=[f"{o}-h{h}-rows{n}-{i}" for o, h, n, i in CASES])
def test_rmsnorm(benchmark, bandwidth, op, hidden, rows, impl):
    from common import GraphTimer, copies_for, record

    from autoglm_kernels import ops

    dt = torch.bfloat16
    benchmark.group = f"{op} h={hidden} rows={rows}"
    n1, n2 = _norm(hidden, dt), _norm(hidden, dt)
    w1, w2 = n1.weight, n2.weight
    act = rows * hidden * 2
    bytes_moved = {"rms_norm": 2 * act + hidden * 2,
                   "fused_add_rms_norm": 4 * act + hidden * 2,
                   "norm_add_norm": 4 * act + 2 * hidden * 2}[op]

    sets = [(torch.randn(rows, hidden, device="cuda", dtype=dt), torch.randn(rows, hidden, device="cuda", dtype=dt))
            for _ in range(copies_for(bytes_moved))]

    if impl == "stock":
        def fn(x, r):
            if op == "rms_norm":
                return n1(x)
            if op == "fused_add_rms_norm":
                h = r + x
                return n1(h), h
            h = r + n1(x)
            return n2(h), h
    else:
        def fn(x, r):
            if op == "rms_norm":
                return ops.rms_norm(x, w1, EPS)
            if op == "fused_add_rms_norm":
                return ops.fused_add_rms_norm(x, r, w1, EPS)
            return ops.norm_add_norm(x, r, w1, w2, EPS)

    with torch.no_grad():
        timer = GraphTimer(fn, sets)
        record(benchmark, timer, impl=impl, bandwidth=bandwidth, bytes_moved=bytes_moved, op=op, hidden=hidden,
               rows=rows)
