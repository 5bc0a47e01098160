"""One table: which modules of each architecture (keyed by `config.model_type`) get which fused forward.

Data, not code per architecture: the fused forwards in layers.py read an `ArchSpec` to find the
norms, projections and MLP of a decoder layer. Adding an architecture whose layers look like one
of these is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ArchSpec:
    """Where things live in one architecture, and which variant of each fused path it needs.

    Paths are dotted attribute paths: `layers`, `final_norm`, `lm_head` from the top-level model;
    `text_config` from `model.config` ("" = the config itself); norm/attention/MLP names from a
    decoder layer.
    """

    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary: str | None = "model.rotary_emb"  # the model's rotary embedding module (cos/sin), if standard
    text_config: str = ""
    norm: str = "rms"  # "rms" (RMSNorm) | "layer" (LayerNorm with bias)
    sandwich: bool = False  # GLM-4: extra norms after attention and after the MLP, before each residual add
    input_norm: str = "input_layernorm"
    post_attn_norm: str = "post_attention_layernorm"  # the norm in front of the MLP
    post_self_attn_norm: str = "post_self_attn_layernorm"  # sandwich only
    post_mlp_norm: str = "post_mlp_layernorm"  # sandwich only
    attn: str = "self_attn"
    qkv: tuple[str, str, str] = ("q_proj", "k_proj", "v_proj")
    o_proj: str = "o_proj"
    qk_norm: tuple[str, str] | None = None  # Qwen3: per-head RMSNorm of q and k before RoPE
    rope: str | None = "half"  # "half" (Llama) | "interleaved" (GLM, partial) | "mrope" (GLM-4.1V) | None
    mlp: str = "gate_proj+up_proj"  # "gate_proj+up_proj" | "gate_up_proj" (already fused) | "fc1+fc2"
    mlp_module: str = "mlp"  # "" when the MLP's linears sit on the decoder layer itself (OPT)
    activation: str = "hidden_act"  # config attribute naming the MLP activation
    # Why the decode engine (static cache + CUDA graph) cannot serve this architecture, or None.
    no_static_cache: str | None = None
    # The forward derives positions from the 2-D attention mask unless given position_ids (OPT,
    # GLM-4.1V's M-RoPE): the engine graphs only steps that carry position_ids (generate passes them).
    positions_from_mask: bool = False
    # Inputs a decode step that carries position_ids does not use (they only feed the position
    # computation) and that generate may still pass, growing by a column per step.
    decode_unused: tuple[str, ...] = ()

    def engine_options(self) -> dict:
        """What the decode engine (autoglm_kernels.engine.install) needs to know of this architecture."""
        return dict(static_cache_unsupported=self.no_static_cache, step_needs_position_ids=self.positions_from_mask,
                    step_unused=self.decode_unused)


_LLAMA = ArchSpec()
_GLM = ArchSpec(rope="interleaved", mlp="gate_up_proj")
_GLM4 = ArchSpec(rope="interleaved", mlp="gate_up_proj", sandwich=True)

ARCHS: dict[str, ArchSpec] = {
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": ArchSpec(qk_norm=("q_norm", "k_norm")),
    "glm": _GLM,
    "glm4": _GLM4,
    # GLM-4.1V (AutoGLM-Phone): only the text decoder is patched; the vision tower stays stock.
    "glm4v": ArchSpec(layers="model.language_model.layers", final_norm="model.language_model.norm",
                      text_config="text_config", rope="mrope", rotary=None, mlp="gate_up_proj", sandwich=True,
                      positions_from_mask=True, decode_unused=("mm_token_type_ids",)),
    "opt": ArchSpec(layers="model.decoder.layers", final_norm="model.decoder.final_layer_norm", norm="layer",
                    input_norm="self_attn_layer_norm", post_attn_norm="final_layer_norm", o_proj="out_proj",
                    rope=None, rotary=None, mlp="fc1+fc2", mlp_module="", activation="activation_function",
                    positions_from_mask=True),
}

# MLP activation (config value) -> fused_linear activation. Gated MLPs need silu (gated_silu);
# fused_linear's gelu is the tanh approximation, so only the tanh-GELU names map to it.
ACTIVATIONS = {"silu": "silu", "swish": "silu", "relu": "relu", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu"}


def spec_for(model_type: str) -> ArchSpec | None:
    """The table row for `model_type`, or None when the architecture is not supported."""
    return ARCHS.get(model_type)
