"""fused_linear vs stock (F.linear + the activation ops transformers runs), per shape and M.

Decode (M = 1..16): the handwritten GEMV; the figure of merit is weight bytes / time as GB/s
and % of this GPU's measured read bandwidth (weights rotated over > 8x L2, so they come from
HBM). Prefill (M = 128..8192, a few shapes): cuBLAS(Lt) with the epilogue fused; TFLOP/s.
Shapes: every linear of one layer (and the lm_head) of the reference models, plus a few extras.
Stock and fused of one (shape, M) are timed together in alternating replays (common.paired_case),
so the GPU's clock drift over the run does not land on one side only.
"""

from __future__ import annotations

import pytest
import torch
from common import GraphTimer, copies_for, paired_case, record, stock_linear

from autoglm_kernels import ops
from autoglm_kernels.models import REFERENCE_MODELS, linear_shapes

DECODE_M = (1, 2, 4, 8, 16)
LM_HEAD_M = (1, 16)  # the big lm_head shapes: two M values keep the run short
PREFILL_M = (128, 1024, 8192)
# (K, N, activation, bias) -> name; the reference models' linears first, then the extra shapes.
EXTRA = {
    "4096->14336": (4096, 14336, "none", False),
    "14336->4096": (14336, 4096, "none", False),
    "4096->27392 gated": (4096, 27392, "gated_silu", False),
    "13696->4096": (13696, 4096, "none", False),
    "4096->4608 qkv": (4096, 4608, "none", True),
    "2048->8192 relu": (2048, 8192, "relu", True),
    "8192->2048": (8192, 2048, "none", False),
    "2048->3072": (2048, 3072, "none", False),
    "4096->6144": (4096, 6144, "none", False),
}
PREFILL_SHAPES = ("glm4-9b gate_up_gated", "glm4-9b down_proj", "glm4-9b qkv", "opt-1.3b fc1_relu")


def _shape_table() -> dict[str, tuple[int, int, str, bool]]:
    """name -> (K, N, activation, bias), one entry per distinct (K, N, activation, bias)."""
    table, seen = {}, set()

    def add(name, spec):
        if spec not in seen:
            seen.add(spec)
            table[name] = spec

    for model in REFERENCE_MODELS:
        with_bias = model == "opt-1.3b"
        for lin, (K, N) in linear_shapes(model).items():
            act = "gated_silu" if lin.endswith("gated") else "relu" if lin.endswith("relu") else "none"
            bias = with_bias or (lin == "qkv" and model in ("glm4-9b", "autoglm-phone-9b"))
            add(f"{model} {lin}", (K, N, act, bias and lin != "lm_head"))
    for name, spec in EXTRA.items():
        add(name, spec)
    return table


SHAPES = _shape_table()  # CPU-only work (transformers configs), no GPU at import
DECODE_CASES = [(name, M) for name in SHAPES for M in (LM_HEAD_M if "lm_head" in name else DECODE_M)]
PREFILL_CASES = [(name, M) for name in PREFILL_SHAPES if name in SHAPES for M in PREFILL_M]


_WEIGHTS: dict = {}  # the current shape's rotated weight sets, shared by its (M, impl) cases


def _input_sets(K, N, bias, M):
    """[(x [M, K], W [N, K], b [N] or None)] over enough copies that the weights come from HBM."""
    key = (K, N, bias)
    if key not in _WEIGHTS:
        _WEIGHTS.clear()
        torch.cuda.empty_cache()
        copies = copies_for((N * K + N) * 2)
        _WEIGHTS[key] = [
            (torch.empty(N, K, device="cuda", dtype=torch.bfloat16).normal_(std=K**-0.5),
             torch.empty(N, device="cuda", dtype=torch.bfloat16).normal_() if bias else None)
            for _ in range(copies)
        ]
    return [(torch.randn(M, K, device="cuda", dtype=torch.bfloat16), w, b) for w, b in _WEIGHTS[key]]


IMPLS = {"stock": stock_linear, "fused": ops.fused_linear}


def _timers(name, M):
    """Both impls' graph timers for (name, M), over the shape's rotated weight sets."""
    K, N, act, bias = SHAPES[name]
    sets = _input_sets(K, N, bias, M)
    return {impl: GraphTimer(lambda x, w, b, fn=fn: fn(x, w, b, act), sets) for impl, fn in IMPLS.items()}, None


def _run(benchmark, bandwidth, name, M, impl):
    K, N, act, bias = SHAPES[name]
    timers, us, _ = paired_case(("linear", name, M), lambda: _timers(name, M))
    benchmark.group = f"fused_linear {name} M={M}"
    weight_bytes = (N * K + (N if bias else 0)) * 2
    record(benchmark, timers[impl], impl=impl, bandwidth=bandwidth, bytes_moved=weight_bytes, flops=2 * M * N * K,
           us=us[impl], op="fused_linear", shape=name, M=M, K=K, N=N, activation=act, bias=bias, timing="paired")


@pytest.mark.parametrize("impl", ["stock", "fused"])
@pytest.mark.parametrize("name,M", DECODE_CASES, ids=[f"{n.replace(' ', '_')}-M{m}" for n, m in DECODE_CASES])
def test_fused_linear_decode(benchmark, bandwidth, name, M, impl):
    _run(benchmark, bandwidth, name, M, impl)


@pytest.mark.parametrize("impl", ["stock", "fused"])
@pytest.mark.parametrize("name,M", PREFILL_CASES, ids=[f"{n.replace(' ', '_')}-M{m}" for n, m in PREFILL_CASES])
def test_fused_linear_prefill(benchmark, bandwidth, name, M, impl):
    _run(benchmark, bandwidth, name, M, impl)
