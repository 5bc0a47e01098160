"""patch_model / unpatch_model: bind the fused forwards of layers.py to one model's modules.

Per instance, never global: forwards are bound to this model's module instances, the model gets
a private copy of its config before its attention implementation is switched to "autoglm", and
everything changed is recorded in one PatchState (model._autoglm_patch) that unpatch_model
replays backwards. Patching first plans (what can be fused, and why not), so strict=True can
refuse before anything is touched.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import sys
import types
from typing import Callable, Optional

import torch
from torch import nn

from .. import ops
from . import layers as L
from . import sharding
from .archs import ACTIVATIONS, ARCHS, ArchSpec, spec_for
from .report import PatchReport

STATE_ATTR = "_autoglm_patch"
OFF = "disabled by option"  # reasons starting with this are not failures under strict=True


class _MISSING:  # "no instance attribute there": a class, so a deepcopy keeps it the same object
    pass


class PatchState:
    """Everything patch_model changed on one model, and how to undo it (model._autoglm_patch).

    Also the hook for the decode engine: `spec`, `layers`, `runtime` and `engine_options`.
    """

    def __init__(self, report: PatchReport, spec: Optional[ArchSpec], options: dict, engine_options: dict):
        self.report = report
        self.spec = spec
        self.options = options
        self.engine_options = engine_options
        self.runtime = L.Runtime()
        self.layers: list[nn.Module] = []
        self.fused_rows: list = []  # FusedRows / ShardRows, released by undo
        self.memory_pool = None  # autoglm_kernels.memory.MemoryPool each generate() runs in, if any
        self.engine = None  # autoglm_kernels.engine.DecodeEngine when cuda_graphs is on
        # What to undo, newest last, as data (not closures) so that a deepcopy of a patched model
        # gets records naming its own modules: (function, *arguments).
        self._undo: list[tuple] = []

    def bind(self, module: nn.Module, fn: Callable, ctx=None) -> None:
        """module.forward = fn bound to this instance (and module._autoglm = ctx), undoably. A module
        with an accelerate hook (device_map) keeps it: fn replaces the `_old_forward` the hook calls
        after moving the inputs to the module's device."""
        attr = "_old_forward" if hasattr(module, "_hf_hook") and "_old_forward" in module.__dict__ else "forward"
        prev = module.__dict__.get(attr, _MISSING)
        setattr(module, attr, types.MethodType(fn, module))
        if ctx is not None:
            module._autoglm = ctx
        self._undo.append((_unbind, module, attr, prev))

    def set_dict_attr(self, obj, name: str, value) -> None:
        prev = obj.__dict__[name]
        obj.__dict__[name] = value
        self._undo.append((_set_dict, obj, name, prev))

    def undo(self) -> None:
        for fn, *args in reversed(self._undo):
            fn(*args)
        self._undo.clear()
        for rows in self.fused_rows:
            rows.release()
        self.fused_rows.clear()
        self.runtime.pending = None


def _unbind(module: nn.Module, attr: str, prev) -> None:
    module.__dict__.pop(attr, None)
    module.__dict__.pop("_autoglm", None)
    if prev is not _MISSING:
        setattr(module, attr, prev)


def _set_dict(obj, name: str, value) -> None:
    obj.__dict__[name] = value


def state_of(model: nn.Module) -> Optional[PatchState]:
    """The PatchState of a patched model, else None."""
    return model.__dict__.get(STATE_ATTR)


# ---------------------------------------------------------------------------------------------
# planning: what can be fused and why not
# ---------------------------------------------------------------------------------------------
def _get(obj, path: str):
    for name in path.split(".") if path else []:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _device_dtype_reason(device: torch.device, dtype: torch.dtype) -> Optional[str]:
    if device.type == "cuda":
        ok = dtype in (torch.float16, torch.bfloat16)
        return None if ok else f"dtype {_name(dtype)} on CUDA (kernels: bf16, fp16)"
    if device.type == "cpu":
        return None if dtype == torch.float32 else f"dtype {_name(dtype)} on CPU (the CPU path is an fp32 reference)"
    return f"device {device.type} (kernels run on CUDA, and on CPU in fp32)"


def _name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _missing_ops(*names: str) -> Optional[str]:
    missing = [n for n in names if not callable(getattr(ops, n, None))]
    return f"ops.{', ops.'.join(missing)} not available in this build" if missing else None


def _is_linear(m) -> bool:
    return isinstance(m, nn.Linear)


class _Plan:
    """The result of planning: flags per module kind, filled by patch_model's checks."""

    def __init__(self, model, spec: ArchSpec, report: PatchReport):
        self.model, self.spec, self.report = model, spec, report
        self.layers = _get(model, spec.layers)
        self.final_norm = _get(model, spec.final_norm)
        self.lm_head = _get(model, spec.lm_head)
        self.rotary = _get(model, spec.rotary) if spec.rotary else None
        self.text_config = _get(model.config, spec.text_config) if spec.text_config else model.config
        self.attention = self.rope = self.qk_norm = self.mlp = self.norms = self.layer_forward = False
        self.final = self.head = self.rotary_ok = False
        self.activation = "none"
        self.unsupported: Optional[str] = None  # why the whole model stays stock (device, dtype, sharding)
        self.tp: Optional[sharding.TensorParallel] = None  # the TP group of a tensor-parallel model
        self.devices: set = set()  # devices of the model's parameters (several under a device_map)


def _stock(report: PatchReport, kind: str, reason: str, n: int) -> None:
    if n:
        report.add_stock(kind, reason, n)


def _norm_modules(layer, spec: ArchSpec) -> list:
    names = [spec.input_norm, spec.post_attn_norm]
    if spec.sandwich:
        names += [spec.post_self_attn_norm, spec.post_mlp_norm]
    return [getattr(layer, n, None) for n in names]


def _norm_ok(m, kind: str) -> bool:
    if m is None or getattr(m, "weight", None) is None:
        return False
    if kind == "layer":
        return isinstance(m, nn.LayerNorm) and m.bias is not None and len(m.normalized_shape) == 1
    return hasattr(m, "variance_epsilon") or hasattr(m, "eps")


def _plan_norms(p: _Plan, want: bool) -> Optional[str]:
    spec = p.spec
    if not want:
        return f"{OFF} (norm=False)"
    why = _missing_ops(*(("rms_norm", "fused_add_rms_norm") + (("norm_add_norm",) if spec.sandwich else ()))
                       if spec.norm == "rms" else ("layer_norm", "fused_add_layer_norm"))
    if why:
        return why
    mods = [m for layer in p.layers for m in _norm_modules(layer, spec)]
    if not all(_norm_ok(m, spec.norm) for m in mods):
        return "norm modules are not the expected RMSNorm/LayerNorm(elementwise_affine, bias)"
    if len({L._eps(m) for m in mods}) > 1:
        return "norms of one model with different eps"
    return None


def _layer_forward_reason(p: _Plan) -> Optional[str]:
    """Why the decoder-layer forward cannot be replaced at all (its structure differs), else None."""
    if p.spec.norm == "layer" and not getattr(p.text_config, "do_layer_norm_before", True):
        return "post-LayerNorm layers (do_layer_norm_before=False)"
    return None


def _plan_mlp(p: _Plan, want: bool, layer_why: Optional[str]) -> Optional[str]:
    spec = p.spec
    if not want:
        return f"{OFF} (mlp=False)"
    why = _missing_ops("fused_linear")
    if why:
        return why
    act = getattr(p.text_config, spec.activation, None)
    fused_act = ACTIVATIONS.get(act)
    if spec.mlp == "fc1+fc2":
        if layer_why:
            return layer_why
        if fused_act is None:
            return f"activation {act!r} (fused: {', '.join(sorted(set(ACTIVATIONS)))})"
        p.activation = fused_act
        ok = all(_is_linear(getattr(layer, n, None)) for layer in p.layers for n in ("fc1", "fc2"))
    else:
        if fused_act != "silu":
            return f"gated MLP with activation {act!r} (fused: silu)"
        names = ("gate_up_proj", "down_proj") if spec.mlp == "gate_up_proj" else ("gate_proj", "up_proj", "down_proj")
        mlps = [getattr(layer, spec.mlp_module, None) for layer in p.layers]
        ok = all(_is_linear(getattr(m, n, None)) for m in mlps for n in names)
    return None if ok else "MLP modules are not the expected nn.Linear layout"


def _attn_reason(attn, spec: ArchSpec, cfg) -> Optional[str]:
    lins = [getattr(attn, n, None) for n in (*spec.qkv, spec.o_proj)]
    if attn is None or not all(_is_linear(m) for m in lins):
        return "attention module is not the expected q/k/v/o nn.Linear layout"
    hd = getattr(attn, "head_dim", None)
    q, k, v, o = lins
    if not hd or q.out_features % hd or k.out_features % hd or v.out_features != k.out_features:
        return "attention projections do not split into heads of head_dim"
    if (q.out_features // hd) % (k.out_features // hd) or o.in_features != q.out_features:
        return "attention head counts are not grouped-query compatible"
    window = attn.sliding_window if hasattr(attn, "sliding_window") else getattr(cfg, "sliding_window", None)
    if window:
        return f"sliding-window attention (window {window})"
    dims = getattr(ops, "ATTENTION_HEAD_DIMS", (64, 128))
    if hd not in dims:
        return f"head_dim {hd} (attention kernels: {', '.join(map(str, dims))})"
    if spec.qk_norm and not all(_norm_ok(getattr(attn, n, None), "rms") for n in spec.qk_norm):
        return "q/k norm modules are not the expected RMSNorm"
    if spec.rope and getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None) is None:
        return "no apply_rotary_pos_emb next to the attention class"
    return None


def _plan_attention(p: _Plan, want: bool) -> Optional[str]:
    if not want:
        return f"{OFF} (attention=False)"
    why = _missing_ops("fused_linear", "decode_attention", "prefill_attention")
    if why:
        return why
    for layer in p.layers:
        why = _attn_reason(getattr(layer, p.spec.attn, None), p.spec, p.text_config)
        if why:  # one attention implementation per model: if any layer cannot be fused, none is
            return why
    return None


def _hooks_reason(model: nn.Module) -> Optional[str]:
    """None when every accelerate hook only places modules on devices (device_map over GPUs);
    else why not (offloaded weights: the fused forwards read weights the hook would load)."""
    for m in model.modules():
        hook = getattr(m, "_hf_hook", None)
        for h in (getattr(hook, "hooks", None) or [hook]) if hook is not None else []:
            if (type(h).__name__ != "AlignDevicesHook" or getattr(h, "offload", False)
                    or getattr(h, "weights_map", None) is not None):
                return f"accelerate {type(h).__name__} with offloaded weights (device_map to CPU/disk)"
    return None  # (weights left on the meta device: _plan_model's device checks refuse those already)


def _tp_reason(p: _Plan) -> Optional[str]:
    """Tensor-parallel models: tensor_parallel() found p.tp; why its layout is not what the fused
    forwards take (q/k/v and gate/up colwise, o_proj and down_proj rowwise, equal shards, whole
    heads per rank), else None."""
    spec, tp = p.spec, p.tp
    if spec.mlp == "fc1+fc2":
        return "tensor-parallel fc1/fc2 MLPs are not supported"
    for i, layer in enumerate(p.layers):
        attn, mlp = getattr(layer, spec.attn, None), getattr(layer, spec.mlp_module, None)
        want = [(spec.qkv[0], attn, "row"), (spec.qkv[1], attn, "row"), (spec.qkv[2], attn, "row"),
                (spec.o_proj, attn, "col"), ("down_proj", mlp, "col")]
        want += [("gate_up_proj", mlp, "row")] if spec.mlp == "gate_up_proj" else [
            ("gate_proj", mlp, "row"), ("up_proj", mlp, "row")]
        for name, owner, kind in want:
            lin = getattr(owner, name, None)
            if not _is_linear(lin):
                return f"layer {i}: no nn.Linear {name}"
            why = sharding.linear_layout_reason(lin, kind, tp, f"layer {i} {name}")
            if why:
                return why
        hd = getattr(attn, "head_dim", 0) or 1
        nq, nk = (sharding.local(getattr(attn, n).weight).shape[0] for n in spec.qkv[:2])
        if nq % hd or nk % hd or nk == 0 or (nq // hd) % (nk // hd):
            return f"layer {i}: the attention shards do not hold whole, grouped heads ({nq} q / {nk} k rows, head_dim {hd})"
        if spec.mlp == "gate_up_proj" and (mlp.gate_up_proj.weight.shape[0] // 2) % tp.size:
            return f"layer {i}: gate_up_proj's MLP width does not split evenly over {tp.size} ranks"
        norms = _norm_modules(layer, spec) + [getattr(attn, n, None) for n in spec.qk_norm or ()]
        if any(sharding.placement(getattr(m, "weight", None)) not in (None, "replicate") for m in norms if m is not None):
            return f"layer {i}: sharded norm weights"
    return None


def _plan_model(p: _Plan, *, attention: bool, mlp: bool, norm: bool, rope: bool) -> None:
    """Fill p's flags and p.report's rows."""
    spec, report, n = p.spec, p.report, len(p.layers)
    param = next(p.layers.parameters())
    report.device, report.dtype = str(param.device), _name(param.dtype)
    why = _device_dtype_reason(param.device, param.dtype)
    p.devices = {t.device for t in p.model.parameters()}
    if why is None and len({d.type for d in p.devices}) > 1:
        why = f"parameters on several device types ({', '.join(sorted(str(d) for d in p.devices))})"
    why = why or _hooks_reason(p.model)
    if why is None:
        p.tp, why = sharding.tensor_parallel(p.model)
        tp_size = getattr(p.model, "_tp_size", None)
        if why is None and p.tp is None and isinstance(tp_size, int) and tp_size > 1:
            why = "tensor-parallel model without DTensor shards (this transformers' TP layout is not supported)"
        if why is None and p.tp is not None:
            why = _tp_reason(p)
        if why is not None:
            why = f"tensor-parallel layout: {why}"
    p.unsupported = why
    has_final = p.final_norm is not None
    head_ok = _is_linear(p.lm_head)
    if why:
        for kind, count in (("decoder_layer", n), ("attention", n), ("mlp", n), ("final_norm", int(has_final)),
                            ("lm_head", int(head_ok))):
            _stock(report, kind, why, count)
        return

    layer_why = _layer_forward_reason(p)
    norm_why = layer_why or _plan_norms(p, norm)
    p.norms = norm_why is None
    mlp_why = _plan_mlp(p, mlp, layer_why)
    p.mlp = mlp_why is None
    p.layer_forward = p.norms or (p.mlp and not spec.mlp_module)
    attn_why = _plan_attention(p, attention)
    p.attention = attn_why is None

    if p.norms:
        report.add_patched("decoder_layer", n)
    else:
        _stock(report, "decoder_layer", norm_why, n)
    if p.attention:
        report.add_patched("attention", n)
        if spec.rope:
            rope_why = None if rope else f"{OFF} (rope=False: the stock RoPE runs inside the fused attention)"
            rope_why = rope_why or _missing_ops("apply_rope_")
            p.rope = rope_why is None
            if p.rope:
                report.add_patched("rope", n)
            else:
                _stock(report, "rope", rope_why, n)
        if spec.rotary:
            rotary_why = (L.rotary_reason(p.rotary) if p.rope else "RoPE not fused") or _missing_ops("rope_tables")
            if rotary_why is None and os.environ.get("AUTOGLM_ROTARY_TABLES", "1") == "0":
                rotary_why = f"{OFF} (AUTOGLM_ROTARY_TABLES=0)"
            p.rotary_ok = rotary_why is None
            if p.rotary_ok:
                report.add_patched("rotary_emb")
            else:
                _stock(report, "rotary_emb", rotary_why, 1)
        p.qk_norm = bool(spec.qk_norm) and p.norms
    else:
        _stock(report, "attention", attn_why, n)
        if spec.rope:
            _stock(report, "rope", "attention not fused", n)
        if spec.rotary:
            _stock(report, "rotary_emb", "attention not fused", 1)
    if p.mlp:
        report.add_patched("mlp", n)
    else:
        _stock(report, "mlp", mlp_why, n)
    if has_final:
        p.final = p.norms and _norm_ok(p.final_norm, spec.norm) and L._eps(p.final_norm) == L._eps(
            getattr(p.layers[0], spec.input_norm))
        if p.final:
            report.add_patched("final_norm")
        else:
            _stock(report, "final_norm", norm_why or "final norm differs from the layer norms", 1)
    if p.lm_head is not None:
        head_why = None if head_ok else "lm_head is not an nn.Linear"
        if head_ok and p.tp is not None and sharding.placement(p.lm_head.weight) is not None:
            w = p.lm_head.weight
            if sharding.placement(w) != "row" or not sharding.even_shards(w, p.tp) or (
                    p.lm_head.bias is not None and sharding.placement(p.lm_head.bias) != "row"):
                head_why = "tensor-parallel lm_head not sharded by vocab rows in equal shards"
        head_why = head_why or (None if mlp else f"{OFF} (mlp=False)") or _missing_ops("fused_linear")
        p.head = head_why is None
        if p.head:
            report.add_patched("lm_head")
        else:
            _stock(report, "lm_head", head_why, 1)


def _plan_memory_pool(model, report: PatchReport, want) -> Optional[object]:
    """The MemoryPool to run generate() in: `want` itself if it is one, a new one if True, else None."""
    if want is False or want is None:
        return None
    if not isinstance(want, bool):
        return want
    param = next(model.parameters(), None)
    if param is None or param.device.type != "cuda":
        report.add_stock("memory_pool", "the memory pool serves CUDA models only")
        return None
    try:
        from ..memory import MemoryPool

        return MemoryPool(device=param.device)
    except Exception as e:  # not built, or another pool open on this device
        report.add_stock("memory_pool", f"MemoryPool unavailable: {e}")
        return None


def _use_memory_pool(model: nn.Module, state: PatchState, pool, created: bool) -> None:
    """Run each generate() of this model instance inside a `with pool:` region."""
    prev = model.__dict__.get("generate", _MISSING)
    generate = model.generate

    @functools.wraps(generate)
    def pooled_generate(*args, **kwargs):
        with pool:
            return generate(*args, **kwargs)

    model.generate = pooled_generate
    state.memory_pool = pool
    state.report.add_patched("memory_pool")
    state._undo.append((_undo_memory_pool, model, state, pooled_generate, prev, pool if created else None))


def _undo_memory_pool(model: nn.Module, state: PatchState, pooled_generate, prev, created_pool) -> None:
    if model.__dict__.get("generate") is pooled_generate:
        model.__dict__.pop("generate")
        if prev is not _MISSING:
            model.generate = prev
    state.memory_pool = None
    if created_pool is not None:
        created_pool.close()


# ---------------------------------------------------------------------------------------------
# applying a plan
# ---------------------------------------------------------------------------------------------
def _privatize_config(model: nn.Module, state: PatchState) -> dict:
    """Give this model its own copy of its config (and sub-configs), so switching the attention
    implementation cannot leak to other models built from the same config object."""
    old = model.config
    new = copy.deepcopy(old)
    mapping = {id(old): new}
    for key in getattr(old, "sub_configs", None) or {}:
        if getattr(old, key, None) is not None:
            mapping[id(getattr(old, key))] = getattr(new, key)
    for m in model.modules():
        c = m.__dict__.get("config")
        if c is not None and id(c) in mapping:
            state.set_dict_attr(m, "config", mapping[id(c)])
    return mapping


def _fold_norms(p: _Plan) -> bool:
    """Whether decode steps run the input norm and the residual adds inside the projections' GEMVs
    (LayerCtx.fold): pre-norm RMSNorm layers whose attention, MLP and norms are all fused, not
    tensor-parallel, with each layer's qkv, o_proj and down weights taken by the GEMV (on CUDA,
    weights of at most 64 MiB; elsewhere the op would run the norm and add as separate ops around
    cuBLAS, more kernels than the fused add+norm). AUTOGLM_FOLD_NORMS=0 turns it off (a switch
    for benchmarks, read at patch time)."""
    spec = p.spec
    if os.environ.get("AUTOGLM_FOLD_NORMS", "1") == "0":
        return False
    if not (p.attention and p.mlp and p.norms and spec.mlp_module and spec.norm == "rms" and not spec.sandwich
            and p.tp is None):
        return False
    for layer in p.layers:
        attn, mlp = getattr(layer, spec.attn), getattr(layer, spec.mlp_module)
        weights = [attn._autoglm.qkv.get()[0], getattr(attn, spec.o_proj).weight, mlp.down_proj.weight]
        if not all(ops.fuses_prologue(w, 1) for w in weights):
            return False
    return True


def _apply(p: _Plan, state: PatchState) -> None:
    spec, runtime = p.spec, state.runtime
    state.layers = list(p.layers)
    if p.attention:
        mapping = _privatize_config(p.model, state)
        text_config = mapping.get(id(p.text_config), p.text_config)
        text_config._attn_implementation = L.ATTN_NAME
        L.register_attention()
        rope_params = getattr(text_config, "rope_parameters", None) or {}
        mrope = rope_params.get("mrope_section") if spec.rope == "mrope" else None
        for layer in p.layers:
            attn = getattr(layer, spec.attn)
            rows = _rows(p, [getattr(attn, n) for n in spec.qkv])
            state.fused_rows.append(rows)
            hd = attn.head_dim
            n_q, n_kv = (sharding.local(getattr(attn, n).weight).shape[0] // hd for n in spec.qkv[:2])
            ctx = L.AttnCtx(
                runtime=runtime, qkv=rows, n_q=n_q, n_kv=n_kv, head_dim=hd, scale=float(attn.scaling), tp=p.tp,
                rope=spec.rope, fuse_rope=p.rope, mrope_section=list(mrope) if mrope else None,
                stock_rope=getattr(sys.modules[type(attn).__module__], "apply_rotary_pos_emb", None),
                qk_norm=tuple(getattr(attn, n) for n in spec.qk_norm) if spec.qk_norm else None,
                fuse_qk_norm=p.qk_norm, o_proj=spec.o_proj)
            state.bind(attn, L.attention_forward, ctx)
        if p.rotary_ok:
            state.bind(p.rotary, L.rotary_forward)
    if p.mlp and spec.mlp_module:
        for layer in p.layers:
            mlp = getattr(layer, spec.mlp_module)
            if spec.mlp == "gate_up_proj" and p.tp is None:
                rows = None  # already [gate; up]
            elif spec.mlp == "gate_up_proj":
                rows = L.ShardRows(functools.partial(sharding.gate_up_rows, mlp.gate_up_proj, p.tp))
            else:
                rows = _rows(p, [mlp.gate_proj, mlp.up_proj])
            if rows is not None:
                state.fused_rows.append(rows)
            state.bind(mlp, L.mlp_forward, L.MlpCtx(gate_up=rows, tp=p.tp))
    if p.layer_forward:
        n = len(p.layers)
        fold = _fold_norms(p)
        if fold:
            p.report.notes.append("decode steps: the input RMSNorm runs inside the qkv GEMV, the residual adds "
                                  "inside the o_proj and down GEMVs, the post-attention RMSNorm in the o_proj "
                                  "GEMV's last block")
        for i, layer in enumerate(p.layers):
            if not p.norms:
                nxt = None
            elif i + 1 < n:
                nxt = getattr(p.layers[i + 1], spec.input_norm)
            else:
                nxt = p.final_norm if p.final else None
            if nxt is not None and _device(nxt) != _device(layer):  # device_map: the next norm is on
                nxt = None  # another GPU; it runs there, on the hidden states its hook moved
            params = list(inspect.signature(type(layer).forward).parameters)[2:]  # after self, hidden_states
            ctx = L.LayerCtx(spec=spec, runtime=runtime, fuse_norms=p.norms, fuse_mlp=p.mlp, activation=p.activation,
                             next_norm=nxt, arg_names=tuple(params), fold=fold)
            state.bind(layer, L.decoder_layer_forward, ctx)
    if p.final:
        state.bind(p.final_norm, L.final_norm_forward, L.NormCtx(runtime=runtime, kind=spec.norm))
    if p.head:
        tp = p.tp if sharding.placement(p.lm_head.weight) is not None else None
        state.bind(p.lm_head, L.lm_head_forward, tp)
    if p.tp is not None:
        copies = sum(r.weight.nbytes + (r.bias.nbytes if r.bias is not None else 0)
                     for r in state.fused_rows if isinstance(r, L.ShardRows))
        p.report.notes.append(f"tensor parallel: rank {p.tp.rank} of {p.tp.size}, fused forwards on the local shards; "
                              f"stacked q/k/v and gate/up shards take {copies / 2**20:.1f} MiB more on this rank")


def _rows(p: _Plan, linears: list[nn.Linear]):
    """The stacked rows of several linears: views of one tensor (FusedRows), or on a
    tensor-parallel model a copy of this rank's shards (ShardRows)."""
    if p.tp is None:
        return L.FusedRows(linears)
    return L.ShardRows(functools.partial(L.stack_local_rows, linears))


def _device(module: nn.Module) -> Optional[torch.device]:
    return next((t.device for t in module.parameters()), None)


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------
def _use_engine(model: nn.Module, state: PatchState, spec: ArchSpec) -> None:
    """Put the decode engine (static cache + CUDA-graph decode step) on this CUDA model."""
    from .. import engine

    options = {**spec.engine_options(), **state.engine_options}
    if state.memory_pool is not None:
        # Pooled generates stop in lockstep: on the H100 (at 50e8767) a generate that stopped one
        # step late aborted the process when its pool region closed; not understood yet.
        options["defer_stop"] = False
    eng = engine.install(model, **options)
    if spec.no_static_cache:
        state.report.add_stock("cuda_graphs", spec.no_static_cache)
    else:
        state.report.add_patched("cuda_graphs")
    state._undo.append((engine.uninstall, model))
    state.engine = eng


def patch_model(model: nn.Module, attention: bool = True, mlp: bool = True, norm: bool = True, rope: bool = True,
                memory_pool: bool = False, strict: bool = False, cuda_graphs: bool | None = None,
                **engine_options) -> PatchReport:
    """Make this model's unchanged forward / generate run the fused kernels; everything else stays stock.

    attention: one qkv matmul, RoPE, decode/prefill attention kernels, o_proj (all layers or none).
    mlp: the MLP (gated silu or fc1+ReLU fused into one matmul) and the lm_head through fused_linear.
    norm: RMSNorm/LayerNorm fused with the residual adds (GLM-4's sandwich norms included).
    rope: in-place RoPE kernel inside the fused attention (else the architecture's stock RoPE).
    memory_pool: True (or an autoglm_kernels.memory.MemoryPool) runs each generate() of this model
        in the native pool allocator (CUDA only); unpatch_model closes a pool it created.
    cuda_graphs: generate uses a static KV cache and replays the decode step as a CUDA graph
        (autoglm_kernels.engine); default: on for CUDA models.
    **engine_options: options of the decode engine (min_cache_len, max_cache_len, max_batch, max_graphs,
        defer_stop=False to keep generate's stop decision in lockstep with the GPU, prefill_graph_tokens:
        the largest repeated prompt (batch x length) replayed as a graph, 0 for none).
    strict: raise ValueError (touching nothing) if anything requested cannot be fused.
    Returns a PatchReport (print it for a table). Patching a patched model returns its report.
    Training through a patched model raises RuntimeError (the kernels have no backward): unpatch first.
    """
    state = state_of(model)
    if state is not None:
        return state.report
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None) or "?"
    report = PatchReport(model_type=model_type, model_class=type(model).__name__)
    spec = spec_for(model_type)
    plan = None
    if spec is None:
        report.add_stock("model", f"architecture {model_type!r} is not supported (supported: {', '.join(ARCHS)})")
    else:
        plan = _Plan(model, spec, report)
        if not isinstance(plan.layers, nn.ModuleList) or len(plan.layers) == 0:
            report.add_stock("model", f"no decoder layers at model.{spec.layers}")
            plan = None
        else:
            _plan_model(plan, attention=attention, mlp=mlp, norm=norm, rope=rope)
    pool = _plan_memory_pool(model, report, memory_pool) if plan is not None else None
    failures = [r for r in report.reasons() if not r.startswith(OFF)]
    if strict and failures:
        if pool is not None and pool is not memory_pool:
            pool.close()
        raise ValueError(f"patch_model(strict=True) cannot fuse everything requested:\n{report}")
    options = dict(attention=attention, mlp=mlp, norm=norm, rope=rope, memory_pool=memory_pool, cuda_graphs=cuda_graphs)
    state = PatchState(report, spec, options, engine_options)
    if plan is not None:
        try:
            _apply(plan, state)
            if pool is not None:
                _use_memory_pool(model, state, pool, created=pool is not memory_pool)
            param = next(model.parameters(), None)
            on_cuda = param is not None and param.device.type == "cuda"
            if cuda_graphs is None:
                cuda_graphs = on_cuda
            if cuda_graphs and not on_cuda:
                report.add_stock("cuda_graphs", "CUDA graphs need a CUDA model")
            elif cuda_graphs and plan.unsupported:
                report.add_stock("cuda_graphs", plan.unsupported)
            elif cuda_graphs and len(plan.devices) > 1:
                report.add_stock("cuda_graphs", f"the model spans {len(plan.devices)} devices (device_map): "
                                 "decode runs eagerly, a CUDA graph is captured on one device")
            elif cuda_graphs:
                _use_engine(model, state, spec)
        except BaseException:
            state.undo()
            raise
    model.__dict__[STATE_ATTR] = state
    return report


def unpatch_model(model: nn.Module) -> bool:
    """Restore every original forward, attribute and config of a patched model. False if it was not patched."""
    state = model.__dict__.pop(STATE_ATTR, None)
    if state is None:
        return False
    state.undo()
    return True
