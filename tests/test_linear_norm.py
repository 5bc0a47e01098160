"""linear_add_rms_norm: an output projection, the residual add and the RMSNorm after it, one launch.

Against transformers itself: F.linear + `residual + out` + the model's LlamaRMSNorm module, by the
2x-stock-error rule against a float64 reference (3x for the normed output, whose input h may
differ from stock's in the last place). Shapes: rows 1..16 (both MMA column tiles), N not a
multiple of 16, bias or not, and the shapes the GEMV does not take (N % 8 != 0, 17 rows), which
run the separate ops with the same contract. Also: the ticket is zero after every call,
CUDA-graph replays, opcheck, input errors. CPU: the op's CPU kernel in fp32 / fp16; GPU: bf16 / fp16.
"""

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from autoglm_kernels import ops

from test_rope import CPU_DTYPES, CPU_OPCHECK, DEV, assert_stock_close

DTYPES = CPU_DTYPES if DEV == "cpu" else [torch.bfloat16, torch.float16]
pytestmark = [pytest.mark.gpu] if DEV == "cuda" else []


def stock_norm(h, nw, eps):
    """transformers' LlamaRMSNorm module with weight nw, applied to h (in h's dtype)."""
    norm = LlamaRMSNorm(h.shape[-1], eps=eps).to(device=h.device, dtype=h.dtype)
    norm.weight.data.copy_(nw)
    return norm(h)


def stock(x, w, b, r, nw, eps, dtype):
    """transformers' o_proj + residual + post-attention norm in `dtype`: (h, normed)."""
    h = r.to(dtype) + torch.nn.functional.linear(x.to(dtype), w.to(dtype), None if b is None else b.to(dtype))
    return h, stock_norm(h, nw, eps)


def make(M, N, K, bias, dtype, seed=0):
    torch.manual_seed(seed * 7919 + M * 131 + N + K)
    x = torch.randn(M, 1, K, device=DEV, dtype=dtype)
    w = (torch.randn(N, K, device=DEV) / K ** 0.5).to(dtype)
    b = torch.randn(N, device=DEV, dtype=dtype) if bias else None
    r = torch.randn(M, 1, N, device=DEV, dtype=dtype)
    nw = (1 + 0.1 * torch.randn(N, device=DEV)).to(dtype)
    return x, w, b, r, nw


CASES = [(1, 2048, 2048, False), (3, 136, 200, True), (8, 512, 64, False), (9, 64, 96, True),
         (16, 4096, 256, False), (2, 100, 64, True), (17, 256, 64, False)]  # (rows, N, K, bias)


@pytest.mark.parametrize("M,N,K,bias", CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_transformers(M, N, K, bias, dtype):
    x, w, b, r, nw = make(M, N, K, bias, dtype)
    ticket = torch.zeros(1, dtype=torch.int32, device=DEV)
    h, out = ops.linear_add_rms_norm(x, w, b, r, nw, 1e-5, ticket=ticket)
    fused = ops.linear_norm_fused(x, w, nw)
    assert fused == (N % 8 == 0 and (DEV == "cpu" or M <= 16))
    assert h.shape == out.shape == (M, 1, N) and int(ticket) == 0
    h_st, out_st = stock(x, w, b, r, nw, 1e-5, dtype)
    h_ref, out_ref = stock(x.double(), w.double(), None if b is None else b.double(), r.double(), nw.double(), 1e-5,
                           torch.float64)
    assert_stock_close(h, h_st, h_ref)
    assert_stock_close(out, out_st, out_ref, slack=3.0)
    # out is the stock norm of the h it returns, up to the fp32 sum order of the statistics
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out, stock_norm(h, nw, 1e-5), rtol=2 * eps, atol=2 * eps)


def test_default_ticket_and_repeated_calls():
    """Back-to-back calls share the per-device ticket (zero after each) and agree with each other."""
    dtype = DTYPES[-1]
    x, w, b, r, nw = make(4, 1024, 128, True, dtype, seed=1)
    first = ops.linear_add_rms_norm(x, w, b, r, nw)
    for _ in range(3):
        again = ops.linear_add_rms_norm(x, w, b, r, nw)
        assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


def test_errors():
    x, w, b, r, nw = make(2, 64, 32, True, torch.float32)
    call = ops.linear_add_rms_norm
    with pytest.raises(ValueError, match="residual is required"):
        call(x, w, b, None, nw)
    with pytest.raises(ValueError, match=r"residual must have the output's shape \(2, 1, 64\)"):
        call(x, w, b, r[..., :32], nw)
    with pytest.raises(ValueError, match=r"norm_weight must be \[N\] = \[64\]"):
        call(x, w, b, r, nw[:32])
    with pytest.raises(ValueError, match="norm_eps must be a number > 0"):
        call(x, w, b, r, nw, 0.0)
    with pytest.raises(TypeError, match="share one dtype"):
        call(x, w, b, r, nw.half())
    with pytest.raises(ValueError, match="x has K=32"):
        call(x, torch.randn(64, 40, device=DEV), b, r, nw)
    with pytest.raises(TypeError, match="ticket has dtype"):
        call(x, w, b, r, nw, ticket=torch.zeros(1, device=DEV))


@pytest.mark.skipif(DEV != "cpu", reason="the CPU subset of opcheck; the GPU test runs the full one")
def test_opcheck_cpu():
    x, w, b, r, nw = make(3, 64, 32, True, torch.float32)
    args = (x, w, b, r, nw, 1e-6, torch.zeros(1, dtype=torch.int32))
    torch.library.opcheck(torch.ops.autoglm.linear_add_rms_norm, args, test_utils=CPU_OPCHECK)


@pytest.mark.gpu
def test_gpu_opcheck_full():
    x, w, b, r, nw = make(3, 256, 128, True, torch.bfloat16)
    args = (x, w, b, r, nw, 1e-6, torch.zeros(1, dtype=torch.int32, device="cuda"))
    torch.library.opcheck(torch.ops.autoglm.linear_add_rms_norm, args)


@pytest.mark.gpu
def test_gpu_graph_replays():
    """Captured once, replayed with new inputs copied in: each replay gives the eager result."""
    dt = torch.bfloat16
    x, w, b, r, nw = make(1, 4096, 4096, False, dt, seed=2)
    ticket = torch.zeros(1, dtype=torch.int32, device="cuda")
    run = lambda: ops.linear_add_rms_norm(x, w, b, r, nw, 1e-5, ticket=ticket)  # noqa: E731
    run()  # warm-up
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        h, out = run()
    for seed in range(3):
        torch.manual_seed(seed)
        x.copy_(torch.randn_like(x))
        r.copy_(torch.randn_like(r))
        g.replay()
        want = ops.linear_add_rms_norm(x, w, b, r, nw, 1e-5, ticket=ticket)
        torch.cuda.synchronize()
        assert int(ticket) == 0
        assert torch.equal(h, want[0]) and torch.equal(out, want[1])
