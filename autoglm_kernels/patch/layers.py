"""The fused forwards that patch_model binds to module instances, shared by every architecture.

Each function here is bound with `types.MethodType(fn, module)` to one module instance and reads
what it needs from `module._autoglm` (a context built at patch time from the arch table) - no code
per architecture. Every kernel is reached through autoglm_kernels.ops (or is a stock torch op).

The decode step is free of host syncs (no .item(), no Python branching on tensor values; cache
lengths come from device tensors), so a decode step over a StaticCache can be captured in a CUDA
graph. A prefill over a StaticCache reads the cache length once per forward (Runtime.prefill_len),
or not at all over the engine's fresh cache, whose length the host knows (0): that one can be
captured too.
Two cost models: a captured (or compiled) step pays GPU time only, so it runs the fused kernels;
an eager CUDA forward is bound by the host's launch time (host_bound), so where fusion only saves
GPU time it runs the op with the least host time instead (aten linear, aten LayerNorm, SDPA for
an unpadded decode over a DynamicCache, whose all-ones mask check is one host read per forward).
Tensor-parallel models: the same forwards on each rank's shards, with the collectives of
sharding.py after the row-parallel projections.
Cross-layer fusion: the last residual add of layer i is fused with the norm that follows it
(layer i+1's input norm, or the final norm); layer i hands that normed tensor on through
`Runtime.stash`, and the consumer takes it only if it receives the very tensor object layer i
returned (anything in between that replaces the hidden states just gets a fresh norm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from .. import ops
from ..engine.graphs import in_graph_step
from .archs import ArchSpec
from .sharding import TensorParallel, local

ATTN_NAME = "autoglm"  # key in transformers' AttentionInterface / AttentionMaskInterface
# queries per sequence up to which decode_attention (split-KV) is used; prefill_attention above
DECODE_MAX_Q = getattr(ops, "DECODE_MAX_QUERIES", 16)


# ---------------------------------------------------------------------------------------------
# shared per-model runtime state and per-module contexts
# ---------------------------------------------------------------------------------------------
class Runtime:
    """Per-model state the fused forwards share within one forward pass."""

    def __init__(self):
        self.pending: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # (residual, its next norm)
        self._lens = None  # (length, device, int32 tensor [1]): kv length of a DynamicCache step
        self._prefill = None  # (id of the cache, layer index, valid length): see prefill_len
        self._start = None  # the same, before the layer's update: see prefill_start
        self._full = None  # (mask, whether it is all ones): see full_mask
        self._counters: dict = {}  # device -> zeroed int32 workspace of decode_attention's in-kernel merge
        self._tickets: dict = {}  # device -> zeroed int32 [1] of linear_add_rms_norm (see ticket)
        self._retired: list = []  # outgrown workspaces (see counters)

    def stash(self, residual: torch.Tensor, normed: torch.Tensor) -> None:
        self.pending = (residual, normed)

    def take(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """The stashed norm of `x` if `x` is the tensor the previous layer returned, else None."""
        pending, self.pending = self.pending, None
        return pending[1] if pending is not None and pending[0] is x else None

    def prefill_len(self, cache, layer_idx: int, counter: torch.Tensor, new: int) -> int:
        """A static cache's valid length after this forward's update of `new` positions, for a
        prefill (which slices the cache on the host). The cache's host-known length where it has
        one (the engine's fresh cache: no read at all, so the prefill can be captured); else read
        from the device once per forward, at its first static layer: the later layers (higher
        layer_idx, same cache) advanced their counters by the same count, so they reuse it
        instead of each stalling the host until the GPU catches up."""
        return self._read_once("_prefill", cache, layer_idx, counter, new)

    def prefill_start(self, cache, layer_idx: int, counter: torch.Tensor) -> int:
        """prefill_len's twin read before the layer's update: the positions already cached."""
        return self._read_once("_start", cache, layer_idx, counter, 0)

    def _read_once(self, slot: str, cache, layer_idx: int, counter, new: int) -> int:
        known = getattr(cache, "known_length", None)
        if known is not None:  # the host knows what the counter holds after `new` more positions
            return known + new
        return self._read_device(slot, cache, layer_idx, counter)

    def _read_device(self, slot: str, cache, layer_idx: int, counter) -> int:
        memo = getattr(self, slot)
        if memo is None or memo[0] != id(cache) or layer_idx <= memo[1]:
            n = int(counter)  # the one host sync of a static-cache prefill
        else:
            n = memo[2]
        setattr(self, slot, (id(cache), layer_idx, n))
        return n

    def full_mask(self, mask: torch.Tensor) -> bool:
        """Whether a 2-D padding mask is all ones (no padding): read from the device once per mask
        tensor, i.e. once per forward (every layer gets the same one). Eager paths only."""
        memo = self._full
        if memo is None or memo[0] is not mask:
            memo = self._full = (mask, bool(mask.all()))  # the one host sync of an eager decode step
        return memo[1]

    def counters(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """decode_attention's ticket counters on q's device, one workspace per model and device for
        every layer and step (each call leaves it zeroed; the layers run one after another): made
        at the first decode step, i.e. in the engine's warm-up, before its capture, so the graph
        holds no memset for it."""
        need = ops.decode_attention_counters(q, k)
        buf = self._counters.get(q.device)
        if buf is None or buf.numel() < need:
            if buf is not None:  # graphs captured with it keep its address: it must stay allocated
                self._retired.append(buf)
            buf = self._counters[q.device] = torch.zeros(max(need, 1024), dtype=torch.int32, device=q.device)
        return buf

    def ticket(self, device: torch.device) -> torch.Tensor:
        """linear_add_rms_norm's ticket on `device`: one per model and device for every layer and
        step (each call leaves it zero; the layers run one after another), made at the first decode
        step, before the engine's capture."""
        t = self._tickets.get(device)
        if t is None:
            t = self._tickets[device] = torch.zeros(1, dtype=torch.int32, device=device)
        return t

    def lens(self, n: int, device: torch.device) -> torch.Tensor:
        """`n` as an int32 device tensor [1], built once per decode step (reused by every layer)."""
        c = self._lens
        if c is None or c[0] != n or c[1] != device:
            c = self._lens = (n, device, torch.full((1,), n, dtype=torch.int32, device=device))
        return c[2]


class FusedRows:
    """The weights (and biases) of several nn.Linear stacked along N into one tensor.

    Built once at patch time; each Linear's weight/bias then becomes a view into the stacked
    tensor, so no memory is doubled and state_dict still shows the original keys and values.
    If the parameters get new storage later (model.to(), .half(), load_state_dict(assign=True)),
    `get()` notices and stacks again.
    """

    def __init__(self, linears: list[nn.Linear]):
        self.linears = linears
        self.weight = self.bias = None
        self.build()

    def _ptrs(self):
        return [(lin.weight.data_ptr(), lin.bias.data_ptr() if lin.bias is not None else 0) for lin in self.linears]

    def build(self) -> None:
        with torch.inference_mode(False), torch.no_grad():
            self.weight = self._stack([lin.weight for lin in self.linears])
            biases = [lin.bias for lin in self.linears]
            if all(b is None for b in biases):
                self.bias = None
            elif all(b is not None for b in biases):
                self.bias = self._stack(biases)
            else:  # some Linear has no bias: a small separate bias with zeros there
                w = self.linears[0].weight
                self.bias = torch.cat([b.detach() if b is not None else torch.zeros(lin.out_features, dtype=w.dtype,
                                       device=w.device) for b, lin in zip(biases, self.linears)])
        self.ptrs = self._ptrs()

    @staticmethod
    def _stack(params: list[nn.Parameter]) -> torch.Tensor:
        stacked = torch.cat([p.detach() for p in params], dim=0)
        offset = 0
        for p in params:
            p.data = stacked[offset: offset + p.shape[0]]
            offset += p.shape[0]
        return stacked

    def get(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if self._ptrs() != self.ptrs:
            self.build()
        return self.weight, self.bias

    def release(self) -> None:
        """Give every Linear its own storage again (same values), dropping the stacked tensor."""
        with torch.inference_mode(False), torch.no_grad():
            for lin in self.linears:
                for p in (lin.weight, lin.bias):
                    if p is not None and _shares(p, self.weight, self.bias):
                        p.data = p.data.clone()
        self.weight = self.bias = None


class ShardRows:
    """FusedRows for a tensor-parallel model: this rank's rows, stacked into a new tensor once.

    DTensor shards cannot be re-viewed into one stacked storage as FusedRows does, so this costs
    the memory of the stacked rows a second time (q/k/v and gate/up: reported by patch_model).
    `build()` -> (weight, bias) computes them (sharding.py).
    """

    def __init__(self, build: Callable[[], tuple[torch.Tensor, Optional[torch.Tensor]]]):
        with torch.inference_mode(False), torch.no_grad():
            self.weight, self.bias = build()

    def get(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        return self.weight, self.bias

    def release(self) -> None:
        self.weight = self.bias = None


def stack_local_rows(linears: list[nn.Linear]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The local shards of several colwise-sharded linears stacked along N (bias: zeros where missing)."""
    weight = torch.cat([local(lin.weight).detach() for lin in linears])
    if all(lin.bias is None for lin in linears):
        return weight, None
    bias = torch.cat([local(lin.bias).detach() if lin.bias is not None else weight.new_zeros(local(lin.weight).shape[0])
                      for lin in linears])
    return weight, bias


def _shares(p: torch.Tensor, *tensors) -> bool:
    return any(t is not None and p.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in tensors)


@dataclass
class LayerCtx:
    """What the fused decoder-layer forward needs (one per decoder layer)."""

    spec: ArchSpec
    runtime: Runtime
    fuse_norms: bool  # norms through ops (and fused with the residual adds)
    fuse_mlp: bool  # inline MLP (OPT fc1/fc2) through fused_linear
    activation: str  # fused_linear activation of the inline MLP
    next_norm: Optional[nn.Module] = None  # the norm after this layer, fused into its last residual add
    arg_names: tuple = ()  # names of the stock forward's positional parameters after hidden_states
    # Decode steps (<= LINEAR_GEMV_MAX_ROWS rows) run the input norm and the residual adds inside
    # the projections' GEMVs (see decoder_layer_forward); set where qkv, o_proj and down take the GEMV.
    fold: bool = False


@dataclass
class AttnCtx:
    """What the fused attention forward needs (one per attention module)."""

    runtime: Runtime
    qkv: FusedRows | ShardRows
    n_q: int  # heads of this rank (all of them unless tensor-parallel)
    n_kv: int
    head_dim: int
    scale: float
    rope: Optional[str]  # "half" | "interleaved" | "mrope" | None
    fuse_rope: bool
    stock_rope: Optional[Callable] = None  # the architecture's apply_rotary_pos_emb (rope=False)
    mrope_section: Optional[list] = None
    qk_norm: Optional[tuple[nn.Module, nn.Module]] = None
    fuse_qk_norm: bool = False
    o_proj: str = "o_proj"
    tp: Optional[TensorParallel] = None


@dataclass
class MlpCtx:
    """A gated MLP: [gate; up] rows (None: the module's own gate_up_proj, GLM) and the TP group."""

    gate_up: FusedRows | ShardRows | None = None
    tp: Optional[TensorParallel] = None


@dataclass
class NormCtx:
    runtime: Runtime
    kind: str  # "rms" | "layer"


# ---------------------------------------------------------------------------------------------
# small helpers over ops (every op takes [..., features] with strided rows and a contiguous last dim)
# ---------------------------------------------------------------------------------------------
def _linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str = "none"):
    if activation == "none" and host_bound(x):  # nothing to fuse: aten's linear (cuBLAS) launches with a
        return torch.nn.functional.linear(x, weight, bias)  # fraction of the custom op's host time
    return ops.fused_linear(x, weight, bias, activation=activation)


def _out_linear(x: torch.Tensor, lin: nn.Linear, tp: Optional[TensorParallel], gate_up=None,
                residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """An output projection (o_proj, down_proj). With gate_up = (weight, bias), x is the MLP's
    input and the whole gated MLP runs as one op (ops.gated_mlp). residual (decode steps, never
    tensor-parallel): added to the output inside the op. Tensor-parallel: this rank's input
    columns give a partial sum, all-reduced, then the replicated bias once (what transformers'
    rowwise does)."""
    w, b = local(lin.weight), (lin.bias if tp is None else None)
    if gate_up is not None:
        y = ops.gated_mlp(x, *gate_up, w, b, residual=residual)
    elif residual is not None:
        y = ops.fused_linear(x, w, b, residual=residual)
    else:
        y = _linear(x, w, b)
    if tp is None:
        return y
    y = tp.all_reduce_(y)
    return y if lin.bias is None else y + local(lin.bias)


def host_bound(x: torch.Tensor) -> bool:
    """True for a CUDA forward that is launched op by op (not a step for a CUDA graph, not
    compiled): its time is the host's, so the kernels with the least host time per launch win
    over fused ones that only save GPU time (see _linear, norm, add_norm, attend). A graph's
    warm-up (engine.graphs.graph_step) counts as the graph's step: it must initialize the very
    kernels the capture records."""
    return (x.is_cuda and not in_graph_step() and not torch.compiler.is_compiling()
            and not torch.cuda.is_current_stream_capturing())


def _eps(norm: nn.Module) -> float:
    eps = getattr(norm, "variance_epsilon", None)
    return float(norm.eps if eps is None else eps)


def norm(kind: str, fused: bool, mod: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """mod(x) - through ops when `fused`."""
    if not fused:
        return mod(x)
    if kind == "rms":
        return ops.rms_norm(x, local(mod.weight), _eps(mod))
    if host_bound(x):  # aten's LayerNorm is one kernel too, with a fraction of a Triton launch's host time
        return torch.nn.functional.layer_norm(x, x.shape[-1:], local(mod.weight), local(mod.bias), _eps(mod))
    return ops.layer_norm(x, local(mod.weight), local(mod.bias), _eps(mod))


def add_norm(kind: str, fused: bool, mod: nn.Module, x: torch.Tensor, residual: torch.Tensor):
    """(mod(residual + x), residual + x) - one kernel when `fused`."""
    if not fused:
        residual = residual + x
        return mod(residual), residual
    if kind == "rms":
        return ops.fused_add_rms_norm(x, residual, local(mod.weight), _eps(mod))
    if host_bound(x):  # two aten kernels launch faster than one Triton kernel (see norm)
        residual = residual + x
        return norm(kind, True, mod, residual), residual
    return ops.fused_add_layer_norm(x, residual, local(mod.weight), local(mod.bias), _eps(mod))


def norm_add_norm(fused: bool, mod1: nn.Module, mod2: nn.Module, x: torch.Tensor, residual: torch.Tensor):
    """(mod2(residual + mod1(x)), residual + mod1(x)) - GLM-4's sandwich norms, one kernel when `fused`."""
    if not fused:
        residual = residual + mod1(x)
        return mod2(residual), residual
    return ops.norm_add_norm(x, residual, local(mod1.weight), local(mod2.weight), _eps(mod1))


def no_training(module: nn.Module) -> None:
    """The kernels have no backward: refuse a training forward instead of failing in backward."""
    if module.training and torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters()):
        raise RuntimeError(
            "autoglm_kernels: this model is patched for inference and its fused kernels have no backward. "
            "Call autoglm_kernels.unpatch_model(model) before training (or run the forward under torch.no_grad() "
            "/ torch.inference_mode(), or in model.eval())."
        )


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------
def _cache_layer(cache, layer_idx: int):
    layers = getattr(cache, "layers", None)
    return layers[layer_idx] if layers is not None and layer_idx < len(layers) else None


def _static_length(cache, layer_idx: int, k: torch.Tensor) -> Optional[torch.Tensor]:
    """For a StaticCache layer: its valid length as a 0-d device tensor (after this step's update)."""
    layer = _cache_layer(cache, layer_idx)
    cum = getattr(layer, "cumulative_length", None)
    if isinstance(cum, torch.Tensor) and getattr(layer, "max_cache_len", None) == k.shape[2]:
        return cum
    return None


def _appendable_layer(cache, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
    """The cache layer when this forward's k/v can be appended by rope_append_kv_ (one launch
    instead of RoPE plus the stock update's five): a plain StaticLayer (not a sliding-window or
    other subclass, whose update differs; initialized here if it is not yet) of matching shape
    and dtype; else None (stock update)."""
    layer = _plain_static_layer(cache, layer_idx)
    if layer is None:
        return None
    if not layer.is_initialized:  # allocate as the stock update would ([B, Hk, S, D] views: shapes only), so
        # the first prefill takes this same path (and compiles its kernel) like every later one
        layer.lazy_initialization(k.transpose(1, 2), v.transpose(1, 2))
    B, _, Hk, D = k.shape
    return layer if _layer_fits(layer, B, Hk, D, k) else None


def _plain_static_layer(cache, layer_idx: int):
    """The cache's layer when it is a plain StaticLayer (not a sliding-window or other subclass,
    whose update differs), else None."""
    from transformers.cache_utils import StaticLayer

    layer = _cache_layer(cache, layer_idx) if cache is not None else None
    return layer if type(layer) is StaticLayer else None


def _layer_fits(layer, B: int, Hk: int, D: int, like: torch.Tensor) -> bool:
    """An initialized static layer holds [B, Hk, capacity, D] of like's dtype and device, and a counter."""
    keys, values, cum = layer.keys, layer.values, getattr(layer, "cumulative_length", None)
    return (isinstance(cum, torch.Tensor) and cum.numel() == 1 and cum.device == like.device
            and keys.dim() == 4 and keys.shape[0] == B and keys.shape[1] == Hk and keys.shape[3] == D
            and values.shape == keys.shape and keys.dtype == like.dtype and values.dtype == like.dtype
            and keys.device == like.device and keys.stride(-1) == 1 and values.stride(-1) == 1)


def _decode_step_layer(ctx: "AttnCtx", cache, layer_idx: int, x: torch.Tensor, weight: torch.Tensor, cos):
    """The static layer a decode step's qkv projection appends to from its own kernel
    (ops.qkv_rope_append_, RoPE in the epilogue), or None: x [B, 1, hidden], no q/k norm between
    the projection and RoPE (Qwen3), an initialized plain StaticLayer, a weight the GEMV takes."""
    if x.shape[1] != 1 or ctx.qk_norm is not None or (ctx.rope is not None and not ctx.fuse_rope):
        return None
    layer = _plain_static_layer(cache, layer_idx)
    if layer is None or not layer.is_initialized or not _layer_fits(layer, x.shape[0], ctx.n_kv, ctx.head_dim, x):
        return None
    return layer if ops.qkv_rope_fused(x, weight, cos, ctx.head_dim) else None


def _check_mask(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if mask is not None and mask.dim() != 2:
        raise ValueError(
            f"autoglm_kernels attention takes a 2-D padding mask [batch, kv_len] (0 = padding); got a mask of shape "
            f"{tuple(mask.shape)}. Pass a 2-D attention_mask, or call unpatch_model(model) to use custom 4-D masks."
        )
    return mask


def _check_room(needed: int, capacity: int) -> None:
    """A static-cache prompt must fit: raised before anything is written past the capacity."""
    if needed > capacity:
        raise ValueError(f"the static cache holds {capacity} positions, but this forward needs {needed} "
                         "(cached + new tokens); use a larger max_cache_len")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
           *, runtime: Optional[Runtime] = None, cache=None, layer_idx: int = 0,
           valid_len: Optional[int] = None) -> torch.Tensor:
    """Causal attention of new queries over the cache, bottom-right aligned.

    q [B, S, Hq, D]; k, v [B, Hk, L, D] (for a StaticCache L is its capacity and the valid length
    comes from the cache's device-side counter); mask [B, >= valid length] or None -> [B, S, Hq, D].
    decode_attention for S <= 16 with a cache (graph-capturable), prefill_attention otherwise.
    """
    mask = _check_mask(mask)
    S = q.shape[1]
    static_len = _static_length(cache, layer_idx, k) if cache is not None else None
    if (S == 1 and cache is not None and static_len is None and valid_len is None and runtime is not None
            and host_bound(q) and (mask is None or runtime.full_mask(mask))):
        # eager decode over a cache that holds exactly the valid keys (DynamicCache), no padding:
        # one query sees every key, which torch SDPA computes with a fifth of decode_attention's
        # host time (two Triton launches); this step is host-bound
        return ops.prefill_attention(q, k, v, scale=scale, causal=False)
    if S <= DECODE_MAX_Q and (cache is not None or valid_len is not None):
        if static_len is not None:
            kv_lens = static_len.reshape(1)  # int64 device counter: no copy, no sync
        else:
            n = k.shape[2] if valid_len is None else valid_len
            kv_lens = runtime.lens(n, k.device) if runtime is not None else torch.full(
                (1,), n, dtype=torch.int32, device=k.device)
        counters = runtime.counters(q, k) if runtime is not None else None
        return ops.decode_attention(q, k, v, kv_lens, kv_mask=mask, scale=scale, counters=counters)
    if static_len is not None and valid_len is None:  # prefill into a static cache: the valid prefix only
        valid_len = runtime.prefill_len(cache, layer_idx, static_len, S) if runtime is not None else int(static_len)
        _check_room(valid_len, k.shape[2])
    if valid_len is not None and valid_len < k.shape[2]:
        k, v = k[:, :, :valid_len], v[:, :, :valid_len]
    if mask is not None and runtime is not None and host_bound(q) and runtime.full_mask(mask):
        mask = None  # no padding (one host read per forward): a prompt over no prefix runs torch SDPA,
        # with a fraction of the Triton kernel's host time (ops.prefill_attention's dispatch)
    return ops.prefill_attention(q, k, v, kv_mask=mask, scale=scale, causal=True)


def _project_and_cache(self, ctx: AttnCtx, hidden_states: torch.Tensor, w: torch.Tensor, b: Optional[torch.Tensor],
                        cos, sin, cache, autoglm_fold_norm: Optional[nn.Module]):
    """attention_forward's qkv projection, (q/k norm), RoPE and cache update as separate ops:
    -> (q [B, S, Hq, D], k, v (the cache's, or this forward's [B, Hk, L, D]), valid length or None)."""
    B, S, _ = hidden_states.shape
    hq, hk, d = ctx.n_q, ctx.n_kv, ctx.head_dim
    if autoglm_fold_norm is not None:
        qkv = ops.fused_linear(hidden_states, w, b, norm_weight=local(autoglm_fold_norm.weight),
                               norm_eps=_eps(autoglm_fold_norm))
    else:
        qkv = _linear(hidden_states, w, b)
    qkv = qkv.view(B, S, hq + 2 * hk, d)
    q, k, v = qkv.split((hq, hk, hk), dim=2)  # views, last dim contiguous
    if ctx.qk_norm is not None:
        q = norm("rms", ctx.fuse_qk_norm, ctx.qk_norm[0], q)
        k = norm("rms", ctx.fuse_qk_norm, ctx.qk_norm[1], k)
    layer = _appendable_layer(cache, self.layer_idx, k, v) if ctx.rope is None or ctx.fuse_rope else None
    valid = None
    if layer is not None:  # over a static cache: RoPE + cache append in one launch (no RoPE: append only)
        if S > DECODE_MAX_Q:  # a prompt: the cached length read once per forward, the room checked first
            valid = ctx.runtime.prefill_start(cache, self.layer_idx, layer.cumulative_length) + S
            _check_room(valid, layer.keys.shape[2])
        if ctx.rope is None and valid is not None and host_bound(k):
            # launched op by op: two slice copies and the count cost less host time than a launch
            layer.keys[:, :, valid - S:valid].copy_(k.transpose(1, 2))
            layer.values[:, :, valid - S:valid].copy_(v.transpose(1, 2))
            layer.cumulative_length.add_(S)
        elif ctx.rope is None:
            ops.append_kv_(k, v, layer.keys, layer.values, layer.cumulative_length)
        else:
            ops.rope_append_kv_(q, k, v, cos, sin, layer.keys, layer.values, layer.cumulative_length,
                                interleaved=ctx.rope != "half", mrope_section=ctx.mrope_section)
        k, v = layer.keys, layer.values
    else:
        if ctx.rope is not None:
            if ctx.fuse_rope:
                ops.apply_rope_(q, k, cos, sin, interleaved=ctx.rope != "half", mrope_section=ctx.mrope_section)
            else:
                q, k = ctx.stock_rope(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
                q, k = q.transpose(1, 2), k.transpose(1, 2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
    return q, k, v, valid


def attention_forward(self, hidden_states: torch.Tensor, position_embeddings=None, attention_mask=None,
                      cache=None, past_key_values=None, autoglm_fold_norm: Optional[nn.Module] = None,
                      autoglm_post_norm: Optional[nn.Module] = None, **kwargs):
    """Fused attention: one qkv matmul, (q/k norm), in-place RoPE, cache update, attention, o_proj.

    hidden_states [B, S, hidden] -> ([B, S, hidden], None). The cache gets k/v as [B, Hk, S, D],
    as the stock forward gives them. autoglm_fold_norm (the layer's input norm; decode steps, see
    decoder_layer_forward): hidden_states is the residual stream, normed inside the qkv GEMV, and
    the output is hidden_states + attention (the residual added inside the o_proj GEMV).
    autoglm_post_norm (with autoglm_fold_norm; the layer's post-attention RMSNorm): where one kernel
    can compute it after o_proj (ops.linear_norm_fused), its output is stashed in ctx.runtime for
    the decoder layer to take.
    """
    ctx: AttnCtx = self._autoglm
    no_training(self)
    cache = cache if cache is not None else past_key_values
    B, S, _ = hidden_states.shape
    hq, hk, d = ctx.n_q, ctx.n_kv, ctx.head_dim
    w, b = ctx.qkv.get()
    cos, sin = position_embeddings if ctx.rope is not None else (None, None)
    step_layer = _decode_step_layer(ctx, cache, self.layer_idx, hidden_states, w, cos)
    if step_layer is not None:  # a decode step: projection, RoPE and cache append in one kernel
        fold = {} if autoglm_fold_norm is None else {"norm_weight": local(autoglm_fold_norm.weight),
                                                     "norm_eps": _eps(autoglm_fold_norm)}
        qkv = ops.qkv_rope_append_(hidden_states, w, b, cos, sin, step_layer.keys, step_layer.values,
                                   step_layer.cumulative_length, num_q_heads=hq, interleaved=ctx.rope != "half",
                                   mrope_section=ctx.mrope_section, **fold)
        q = qkv.view(B, S, hq + 2 * hk, d)[:, :, :hq]
        k, v, valid = step_layer.keys, step_layer.values, None
    else:
        q, k, v, valid = _project_and_cache(self, ctx, hidden_states, w, b, cos, sin, cache, autoglm_fold_norm)
    out = attend(q, k, v, attention_mask, ctx.scale, runtime=ctx.runtime, cache=cache, layer_idx=self.layer_idx,
                 valid_len=valid)
    residual = None if autoglm_fold_norm is None else hidden_states
    o_proj, out = getattr(self, ctx.o_proj), out.reshape(B, S, hq * d)
    if (residual is not None and autoglm_post_norm is not None and ctx.tp is None
            and ops.linear_norm_fused(out, o_proj.weight, autoglm_post_norm.weight)):
        h, normed = ops.linear_add_rms_norm(out, o_proj.weight, o_proj.bias, residual, autoglm_post_norm.weight,
                                            _eps(autoglm_post_norm), ticket=ctx.runtime.ticket(out.device))
        ctx.runtime.stash(h, normed)
        return h, None
    return _out_linear(out, o_proj, ctx.tp, residual=residual), None


def attention_interface(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: Optional[torch.Tensor], scaling: Optional[float] = None, dropout: float = 0.0,
                        **kwargs):
    """transformers AttentionInterface entry "autoglm" (used by any stock attention forward).

    query [B, Hq, S, D], key/value [B, Hk, L, D] (after the cache update) -> ([B, S, Hq, D], None).
    With a StaticCache, L is the capacity and the valid length is the 2-D mask's length.
    """
    if kwargs.get("sliding_window"):
        raise NotImplementedError("autoglm attention does not implement sliding-window attention")
    no_training(module)
    q = query.transpose(1, 2)
    mask = _check_mask(attention_mask)
    valid = min(key.shape[2], mask.shape[1]) if mask is not None else key.shape[2]
    return attend(q, key, value, mask, scaling, valid_len=valid), None


def mask_interface(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                   mask_function=None, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """transformers AttentionMaskInterface entry "autoglm": the 2-D padding mask [B, seen + q] or None.

    Like flash_attention_mask the causal part is left to the kernels, but the mask is returned as
    is (no `.all()` check: that would sync with the host inside a decode step).
    """
    from transformers.masking_utils import causal_mask_function

    if mask_function is not None and mask_function is not causal_mask_function:
        raise NotImplementedError(
            "autoglm attention implements causal attention with a 2-D padding mask only; this forward asks for "
            f"another mask pattern ({getattr(mask_function, '__name__', mask_function)}, e.g. packed sequences). "
            "Call autoglm_kernels.unpatch_model(model) for it."
        )
    return attention_mask


def register_attention() -> None:
    """Register "autoglm" with transformers (a name only models patched by us select)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_NAME, attention_interface)
    AttentionMaskInterface.register(ATTN_NAME, mask_interface)


# ---------------------------------------------------------------------------------------------
# MLP, decoder layer, final norm, lm_head
# ---------------------------------------------------------------------------------------------
def mlp_forward(self, x: torch.Tensor, autoglm_residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gated MLP: down_proj(silu(gate) * up) as one op (ops.gated_mlp: two kernels at decode). GLM's
    gate_up_proj as it is; Llama's gate_proj/up_proj stacked once at patch time (ctx.gate_up).
    autoglm_residual (decode steps, see decoder_layer_forward): added inside the down GEMV."""
    no_training(self)
    ctx: MlpCtx = self._autoglm
    w, b = ctx.gate_up.get() if ctx.gate_up is not None else (self.gate_up_proj.weight, self.gate_up_proj.bias)
    return _out_linear(x, self.down_proj, ctx.tp, gate_up=(w, b), residual=autoglm_residual)


def _inline_mlp(layer: nn.Module, ctx: LayerCtx, x: torch.Tensor) -> torch.Tensor:
    """OPT: fc1 + activation in one fused_linear (the headline fused matmul+ReLU), then fc2."""
    if not ctx.fuse_mlp:
        return layer.fc2(layer.activation_fn(layer.fc1(x)))
    h = _linear(x, layer.fc1.weight, layer.fc1.bias, ctx.activation)
    return _linear(h, layer.fc2.weight, layer.fc2.bias)


def decoder_layer_forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """One decoder layer with its norms fused into the residual adds.

    Pre-norm (Llama, OPT):   h += attn(norm1(h));            h += mlp(norm2(h))
    Sandwich (GLM-4):        h += norm2(attn(norm1(h)));     h += norm4(mlp(norm3(h)))
    Each residual add is one kernel together with the norm that follows it; the last one also
    computes the next layer's input norm (or the final norm), handed on through ctx.runtime.
    hidden_states [B, S, hidden] -> [B, S, hidden] (the residual stream, as the stock layer returns).
    """
    ctx: LayerCtx = self._autoglm
    spec = ctx.spec
    no_training(self)
    if args:
        kwargs.update(zip(ctx.arg_names, args))
    if ctx.fold and hidden_states.numel() <= ops.LINEAR_GEMV_MAX_ROWS * hidden_states.shape[-1]:
        # A decode step: the input norm runs inside the qkv GEMV and each residual add inside the
        # GEMV before it (o_proj, down); the post-attention norm runs in the o_proj GEMV's last
        # block (ops.linear_add_rms_norm) where it can, else as a kernel (in the gate_up GEMV's
        # prologue it cost more than the kernel: scripts/fold_cost.py, ..._1246_...). No norm
        # kernel per layer instead of two add+norm kernels, with the unfolded path's rounding.
        post = getattr(self, spec.post_attn_norm)
        h = getattr(self, spec.attn)(hidden_states=hidden_states, autoglm_fold_norm=getattr(self, spec.input_norm),
                                     autoglm_post_norm=post, **kwargs)[0]
        x = ctx.runtime.take(h)
        if x is None:
            x = norm("rms", True, post, h)
        return getattr(self, spec.mlp_module)(x, autoglm_residual=h)
    kind, fused = spec.norm, ctx.fuse_norms
    residual = hidden_states
    x = ctx.runtime.take(hidden_states) if fused else None
    if x is None:
        x = norm(kind, fused, getattr(self, spec.input_norm), hidden_states)
    x = getattr(self, spec.attn)(hidden_states=x, **kwargs)[0]
    post_attn = getattr(self, spec.post_attn_norm)
    if spec.sandwich:
        x, residual = norm_add_norm(fused, getattr(self, spec.post_self_attn_norm), post_attn, x, residual)
    else:
        x, residual = add_norm(kind, fused, post_attn, x, residual)
    x = getattr(self, spec.mlp_module)(x) if spec.mlp_module else _inline_mlp(self, ctx, x)
    nxt = ctx.next_norm
    if spec.sandwich:
        post_mlp = getattr(self, spec.post_mlp_norm)
        if nxt is not None:
            out, residual = norm_add_norm(True, post_mlp, nxt, x, residual)
            ctx.runtime.stash(residual, out)
        else:
            residual = residual + norm(kind, fused, post_mlp, x)
    elif nxt is not None:
        out, residual = add_norm(kind, True, nxt, x, residual)
        ctx.runtime.stash(residual, out)
    else:
        residual = residual + x
    return residual


def final_norm_forward(self, x: torch.Tensor) -> torch.Tensor:
    """The model's final norm: already computed by the last layer's fused add+norm when it can be."""
    no_training(self)
    out = self._autoglm.runtime.take(x)
    return out if out is not None else norm(self._autoglm.kind, True, self, x)


# Rotary embedding modules whose forward is transformers' standard one (cat(f, f).cos() * scaling
# with f = position * inv_freq): ops.rope_tables computes exactly that.
STANDARD_ROTARY = ("LlamaRotaryEmbedding", "MistralRotaryEmbedding", "Qwen2RotaryEmbedding", "Qwen3RotaryEmbedding",
                   "GlmRotaryEmbedding", "Glm4RotaryEmbedding")


def rotary_reason(module: Optional[nn.Module]) -> Optional[str]:
    """Why `module` (the model's rotary embedding) keeps its stock forward, or None."""
    if module is None:
        return "no rotary embedding module where the arch table says"
    if type(module).__name__ not in STANDARD_ROTARY:
        return f"{type(module).__name__} is not a standard rotary embedding"
    rope_type = str(getattr(module, "rope_type", "default"))
    if "dynamic" in rope_type or rope_type == "longrope":
        return f"rope_type {rope_type!r} recomputes its frequencies per forward"
    inv = getattr(module, "inv_freq", None)
    if not torch.is_tensor(inv) or inv.dim() != 1 or not isinstance(getattr(module, "attention_scaling", None), (int, float)):
        return "no 1-D inv_freq and float attention_scaling"
    return None


def rotary_forward(self, x: torch.Tensor, position_ids: torch.Tensor):
    """The model's (cos, sin) in one kernel (ops.rope_tables) in a captured step, where the stock
    module runs six to eight small kernels; the stock forward in an eager (host-bound) forward,
    where its aten ops cost less host time than a Triton launch, and for other position layouts."""
    inv = self.inv_freq
    if (host_bound(x) or not torch.is_tensor(position_ids) or position_ids.dim() != 2 or not x.is_cuda
            or inv.device != position_ids.device or x.dtype not in ops.FLOAT_DTYPES):
        return type(self).forward(self, x, position_ids)
    return ops.rope_tables(inv, position_ids, self.attention_scaling, x.dtype)


def lm_head_forward(self, x: torch.Tensor) -> torch.Tensor:
    """lm_head through fused_linear: [..., hidden] -> [..., vocab]. Tensor-parallel (ctx = the TP
    group): this rank's vocab rows, then the shards all-gathered (transformers' colwise_gather_output)."""
    no_training(self)
    tp: Optional[TensorParallel] = getattr(self, "_autoglm", None)
    if tp is None:
        return _linear(x, self.weight, self.bias)
    return tp.all_gather_last(_linear(x, local(self.weight), local(self.bias)))
