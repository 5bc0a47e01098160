"""The reference model shapes (one table), as transformers configs with random weights.

Used by the benchmarks (kernel shapes are derived from these), the CLI `bench`/`demo`, and the
tests (`tiny=True` shrinks a config to a few-MB model of the same architecture).
"""

from __future__ import annotations

import copy

# name -> (config class name, kwargs). Shapes of the public checkpoints; weights are random.
REFERENCE_MODELS: dict[str, tuple[str, dict]] = {
    "llama3.2-1b": (
        "LlamaConfig",
        dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
             intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rms_norm_eps=1e-5,
             rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, max_position_embeddings=131072),
    ),
    "llama3.1-8b": (
        "LlamaConfig",
        dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
             intermediate_size=14336, vocab_size=128256, tie_word_embeddings=False, rms_norm_eps=1e-5,
             rope_parameters={"rope_type": "default", "rope_theta": 500000.0}, max_position_embeddings=131072),
    ),
    "glm4-9b": (
        "Glm4Config",
        dict(hidden_size=4096, num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=2, head_dim=128,
             intermediate_size=13696, vocab_size=151552, attention_bias=True, rms_norm_eps=1.5625e-07,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
             max_position_embeddings=131072, pad_token_id=151329, eos_token_id=[151329, 151336, 151338]),
    ),
    # GLM-4.1V-9B (AutoGLM-Phone-9B) text decoder; the vision tower is not part of the decode path.
    "autoglm-phone-9b": (
        "Glm4vTextConfig",
        dict(hidden_size=4096, num_hidden_layers=40, num_attention_heads=32, num_key_value_heads=2,
             intermediate_size=13696, vocab_size=151552, attention_bias=True, rms_norm_eps=1e-5,
             rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12],
                              "partial_rotary_factor": 0.5},
             max_position_embeddings=65536, pad_token_id=151329, eos_token_id=[151329, 151336, 151338]),
    ),
    "opt-1.3b": (
        "OPTConfig",
        dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192, vocab_size=50272,
             word_embed_proj_dim=2048, max_position_embeddings=2048, do_layer_norm_before=True,
             activation_function="relu", enable_bias=True),
    ),
}

# Sizes a tiny model of each architecture keeps (small, but odd enough to catch indexing bugs).
_TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
             intermediate_size=176, vocab_size=512, max_position_embeddings=512)
_TINY_OPT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=176, vocab_size=512,
                 word_embed_proj_dim=128, max_position_embeddings=512)


def reference_config(name: str, *, tiny: bool = False, num_layers: int | None = None):
    """A transformers config for reference model `name` (see REFERENCE_MODELS)."""
    import transformers

    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown reference model {name!r}; choose one of: {', '.join(REFERENCE_MODELS)}")
    cls_name, kwargs = REFERENCE_MODELS[name]
    kwargs = copy.deepcopy(kwargs)
    if tiny:
        tiny_kwargs = _TINY_OPT if cls_name == "OPTConfig" else _TINY
        kwargs.update(tiny_kwargs)
        kwargs.update(pad_token_id=0, eos_token_id=None)  # no early stop: tests compare whole sequences
        if "mrope_section" in kwargs.get("rope_parameters", {}):
            kwargs["rope_parameters"]["mrope_section"] = [2, 3, 3]  # sums to rotary_dim/2 = 32*0.5/2
    if num_layers is not None:
        kwargs["num_hidden_layers"] = num_layers
    return getattr(transformers, cls_name)(**kwargs)


def linear_shapes(name: str) -> dict[str, tuple[int, int]]:
    """(K, N) of each linear of one decoder layer (and the lm_head) of reference model `name`."""
    cfg = reference_config(name)
    h = cfg.hidden_size
    if cfg.model_type == "opt":
        return {"qkv": (h, 3 * h), "o_proj": (h, h), "fc1_relu": (h, cfg.ffn_dim), "fc2": (cfg.ffn_dim, h),
                "lm_head": (h, cfg.vocab_size)}
    hd = getattr(cfg, "head_dim", None) or h // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    i = cfg.intermediate_size
    return {"qkv": (h, q + 2 * kv), "o_proj": (q, h), "gate_up_gated": (h, 2 * i), "down_proj": (i, h),
            "lm_head": (h, cfg.vocab_size)}
