"""References and error rules shared by the kernel tests.

The low-precision rule everywhere: the kernel's max error against a high-precision reference is at
most 2x the error of the stock PyTorch path at the same precision (plus one ulp of the output scale).
"""

import torch


def random_qkv(B, S, L, Hq, Hk, D, dtype, device):
    """Random attention inputs: q [B, S, Hq, D], k and v [B, Hk, L, D] (the cache layout)."""
    q = torch.randn(B, S, Hq, D, device=device, dtype=dtype)
    k = torch.randn(B, Hk, L, D, device=device, dtype=dtype)
    v = torch.randn(B, Hk, L, D, device=device, dtype=dtype)
    return q, k, v


def sdpa_reference(q, k, v, allowed, scale, dtype):
    """SDPA in `dtype` with explicit GQA repeat. q [B, S, Hq, D], k/v [B, Hk, L, D], allowed
    [B, S, L] bool (which keys each query sees); rows with no visible key -> 0. Returns fp32."""
    G = q.shape[2] // k.shape[1]
    kr = k.to(dtype).repeat_interleave(G, dim=1)
    vr = v.to(dtype).repeat_interleave(G, dim=1)
    mask = allowed[:, None].to(q.device)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out = sdpa(q.to(dtype).transpose(1, 2), kr, vr, attn_mask=mask, scale=scale)
    out = out.transpose(1, 2).float().nan_to_num(0.0)
    return out.masked_fill(~allowed.any(-1).to(q.device)[:, :, None, None], 0.0)


def assert_within_stock_error(out, q, k, v, allowed, scale):
    """fp32: near-exact. fp16/bf16: error vs the fp32 reference <= 2x stock SDPA's at q's dtype."""
    ref = sdpa_reference(q, k, v, allowed, scale, torch.float32)
    err = (out.float() - ref).abs().max().item()
    if q.dtype == torch.float32:
        assert err < 2e-5, err
    else:
        stock = (sdpa_reference(q, k, v, allowed, scale, q.dtype) - ref).abs().max().item()
        eps = torch.finfo(q.dtype).eps * ref.abs().max().item() + 1e-6
        assert err <= 2 * stock + eps, f"kernel error {err} vs stock {q.dtype} SDPA error {stock}"


def assert_stock_close(out, stock, ref, *, slack=2.0, fp32_tol=2e-5):
    """fp32: tight; fp16/bf16: max error vs the float64 reference <= slack x stock's error (+ eps)."""
    assert out.dtype == stock.dtype and out.shape == stock.shape
    if out.dtype == torch.float32:
        torch.testing.assert_close(out, stock, atol=fp32_tol, rtol=fp32_tol)
        return
    err = (out.double() - ref).abs().max().item()
    stock_err = (stock.double() - ref).abs().max().item()
    tiny = torch.finfo(out.dtype).eps * ref.abs().max().item()
    assert err <= slack * stock_err + tiny, f"kernel error {err:.3g} > {slack} x stock error {stock_err:.3g}"
