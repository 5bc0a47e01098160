"""RoPE on q and k (bf16): transformers' apply_rotary_pos_emb vs one in-place autoglm launch.

Models: Llama-3.1-8B (32/8 heads x 128, full rotate_half), GLM-4-9B (32/2 x 128, partial 0.5,
interleaved), AutoGLM-Phone-9B / GLM-4.1V (as GLM-4-9B with mrope [8, 12, 12]); at decode (B=1,
S=1) and prefill (B=1, S=4096). cos/sin come from the model's own rotary embedding module.
  stock: the model file's apply_rotary_pos_emb on q/k projections viewed [B, S, H, D] and
         transposed to [B, H, S, D], as the attention forward calls it (returns new tensors)
  fused: ops.apply_rope_ on q/k views of one fused qkv output, in place
bytes = the rotary dims of q and k read and written plus cos/sin read, for both impls.
"""

import importlib

import pytest
import torch

MODELS = ("llama3.1-8b", "glm4-9b", "autoglm-phone-9b")
PHASES = {"decode": (1, 1), "prefill": (1, 4096)}
CASES = [(m, p, impl) for m in MODELS for p in PHASES for impl in ("stock", "fused")]


# name -> (the model file, its rotary embedding class, GLM's interleaved rotation): the one place
# both benchmarks take the stock module and apply_rotary_pos_emb from.
ROTARY = {
    "llama3.1-8b": ("transformers.models.llama.modeling_llama", "LlamaRotaryEmbedding", False),
    "glm4-9b": ("transformers.models.glm4.modeling_glm4", "Glm4RotaryEmbedding", True),
    "autoglm-phone-9b": ("transformers.models.glm4v.modeling_glm4v", "Glm4vTextRotaryEmbedding", True),
}


def _rotary(name, cfg):
    """(the model's rotary embedding module on CUDA, its file's apply_rotary_pos_emb, interleaved)."""
    path, cls, interleaved = ROTARY[name]
    module = importlib.import_module(path)
    return getattr(module, cls)(cfg).to("cuda"), module.apply_rotary_pos_emb, interleaved


def _setup(name, B, S, dt):
    """(Hq, Hk, D, cos, sin, stock apply fn, interleaved, mrope_section)."""
    from autoglm_kernels.models import reference_config

    cfg = reference_config(name)
    Hq, Hk = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    x = torch.empty(1, device="cuda", dtype=dt)
    pos = torch.arange(1000, 1000 + S, device="cuda").view(1, S).expand(B, S)
    rotary, apply, interleaved = _rotary(name, cfg)
    mrope = (cfg.rope_parameters or {}).get("mrope_section")
    if mrope is not None:  # M-RoPE: one position row per section kind (text: all three equal)
        pos = pos.unsqueeze(0).expand(3, B, S)
    cos, sin = rotary(x, pos)
    return Hq, Hk, D, cos, sin, apply, interleaved, None if mrope is None else list(mrope)


@pytest.mark.parametrize("name,phase,impl", CASES, ids=[f"{m}-{p}-{i}" for m, p, i in CASES])
def test_rope(benchmark, bandwidth, name, phase, impl):
    from common import GraphTimer, copies_for, record

    from autoglm_kernels import ops

    dt = torch.bfloat16
    B, S = PHASES[phase]
    Hq, Hk, D, cos, sin, stock_apply, interleaved, mrope = _setup(name, B, S, dt)
    R = cos.shape[-1]
    benchmark.group = f"rope {name} {phase} B={B} S={S}"
    bytes_moved = B * S * (2 * (Hq + Hk) * R * 2 + 2 * R * 2)
    W = (Hq + 2 * Hk) * D

    if impl == "stock":
        sets = [(torch.randn(B, S, Hq * D, device="cuda", dtype=dt), torch.randn(B, S, Hk * D, device="cuda", dtype=dt))
                for _ in range(copies_for(bytes_moved))]

        def fn(q, k):
            return stock_apply(q.view(B, S, Hq, D).transpose(1, 2), k.view(B, S, Hk, D).transpose(1, 2), cos, sin)
    else:
        sets = []
        for _ in range(copies_for(bytes_moved)):
            qkv = torch.randn(B, S, W, device="cuda", dtype=dt)
            sets.append((qkv[..., : Hq * D].view(B, S, Hq, D), qkv[..., Hq * D: (Hq + Hk) * D].view(B, S, Hk, D)))

        def fn(q, k):
            ops.apply_rope_(q, k, cos, sin, interleaved=interleaved, mrope_section=mrope)

    with torch.no_grad():
        timer = GraphTimer(fn, sets)
        record(benchmark, timer, impl=impl, bandwidth=bandwidth, bytes_moved=bytes_moved, model=name, phase=phase,
               tokens=B * S, rotary_dim=R)


TABLE_MODELS = ("llama3.1-8b", "glm4-9b")
TABLE_CASES = [(m, p, impl) for m in TABLE_MODELS for p in PHASES for impl in ("stock", "fused")]


@pytest.mark.parametrize("name,phase,impl", TABLE_CASES, ids=[f"{m}-{p}-{i}" for m, p, i in TABLE_CASES])
def test_rope_tables(benchmark, bandwidth, name, phase, impl):
    """The model's rotary embedding (cos, sin) per forward: the stock module (six to eight small
    kernels) vs ops.rope_tables (one launch); bytes = cos and sin written."""
    from common import GraphTimer, copies_for, record

    from autoglm_kernels import ops
    from autoglm_kernels.models import reference_config

    dt = torch.bfloat16
    B, S = PHASES[phase]
    mod, _, _ = _rotary(name, reference_config(name))
    x = torch.empty(1, device="cuda", dtype=dt)
    R = 2 * mod.inv_freq.shape[0]
    bytes_moved = 2 * B * S * R * 2
    benchmark.group = f"rope tables {name} {phase} B={B} S={S}"
    sets = [(torch.arange(1000 + i, 1000 + i + S, device="cuda").view(1, S).expand(B, S).contiguous(),)
            for i in range(copies_for(bytes_moved))]
    if impl == "stock":
        def fn(pos):
            return mod(x, pos)
    else:
        def fn(pos):
            return ops.rope_tables(mod.inv_freq, pos, mod.attention_scaling, dt)

    with torch.no_grad():
        timer = GraphTimer(fn, sets)
        record(benchmark, timer, impl=impl, bandwidth=bandwidth, bytes_moved=bytes_moved, model=name, phase=phase,
               tokens=B * S, rotary_dim=R)
