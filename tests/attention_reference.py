"""The fp32 SDPA reference and the error rule shared by the decode and prefill attention tests."""

import torch


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
