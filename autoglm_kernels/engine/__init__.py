"""Decode engine: a static KV cache and a CUDA-graph-captured decode step behind unchanged
`model.generate(...)`.

`install(model)` wraps this model instance's `generate` (to hand it a bucketed StaticCache that is
reused across calls) and `forward` (to replay a captured graph for decode steps, query length 1,
over that cache). Prefill, and everything the engine does not cover (beam search, a cache the user
passed that is not static, output_attentions, batch > max_batch, lengths beyond the cache; each
logged once with the reason), runs the model's eager forward: the patched layers where patch_model
bound them. An eager prompt over the engine's cache runs the kernels the graphs run (graph_step),
so a prompt's first generate gives the same tokens as its repeats from the prefill graph; the
fallbacks keep the eager path's host-cheaper kernels. A prompt (the first forward over a fresh
cache) whose shape was seen before gets a graph of its own (prefill graphs: up to
`prefill_graph_tokens` tokens, text inputs only), so a repeated prompt length costs one graph
launch instead of hundreds of kernel launches before the first token; a length seen once runs
eagerly, so varied prompts never pay a capture, and once `max_prefill_graphs` exist further shapes
run eagerly (no capture churn). On CUDA, generate decides to stop one step late (stop.py), so the
host prepares and launches step n+1 while the GPU runs step n. No architecture is named here.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections import OrderedDict

import torch

from . import stop
from .cache import EngineCache, StaticCachePool, bucket_len
from .graphs import DecodeGraphs, _base, cache_counters, caller_copies_logits, graph_step

__all__ = ["DecodeEngine", "EngineCache", "install", "uninstall", "engine_of", "bucket_len", "cache_counters",
           "graph_step"]

log = logging.getLogger("autoglm_kernels.engine")
_ATTR = "_autoglm_engine"
# The tensor inputs a captured prompt may have (masks per layer type included): text only. Images,
# embeddings and the like run the eager forward (their shapes vary, their encoders may sync).
_PREFILL_INPUTS = frozenset({"input_ids", "attention_mask", "position_ids", "cache_position"})
_PROMPTS_KEPT = 64  # prompt shapes remembered for "seen before" (least recently seen dropped)


class DecodeEngine:
    """Per-model state: the cache pool, the captured graphs, the wrapped methods."""

    def __init__(self, model, *, min_cache_len: int = 256, max_cache_len: int | None = None,
                 max_batch: int = 16, max_graphs: int = 8, capture: bool | None = None,
                 static_cache_unsupported: str | None = None, step_needs_position_ids: bool = False,
                 step_unused: tuple[str, ...] = (), defer_stop: bool = True, prefill_graph_tokens: int = 512,
                 max_prefill_graphs: int = 4):
        self.model = model
        # Let generate stop one step late (and undo that step) instead of syncing every step;
        # only where transformers has DeferredStopCheck, on CUDA, when the cache is not returned.
        self.defer_stop = defer_stop and stop.install_hook()
        # Why this architecture's forward cannot run over a StaticCache (from patch/'s table), or None.
        self.static_cache_unsupported = static_cache_unsupported
        # The forward derives positions from the 2-D mask when position_ids are missing (OPT); the
        # graph step pads that mask to the cache capacity, so such steps must run eagerly.
        self.step_needs_position_ids = step_needs_position_ids
        # Inputs such a step does not use (GLM-4.1V's mm_token_type_ids, which transformers 5.17
        # passes every step, one column longer each time): dropped so one graph serves every step.
        self.step_unused = tuple(step_unused)
        params = inspect.signature(model.forward).parameters
        # transformers renamed the forward/generate argument past_key_values -> cache (5.2x).
        self.cache_name = "cache" if "cache" in params else "past_key_values"
        text_config = model.config.get_text_config(decoder=True)
        self.caches = StaticCachePool(text_config, min_len=min_cache_len, max_len=max_cache_len,
                                      max_slots=max(1, max_graphs // 2))
        self.max_batch = max_batch
        self.capture = model.device.type == "cuda" if capture is None else capture
        # The instance attributes we replace (None: the class method was in use).
        self._saved = {name: model.__dict__.get(name) for name in ("forward", "generate")}
        self._eager_forward = model.forward
        self._generate = model.generate
        self.graphs = DecodeGraphs(self._eager_forward, capture=self.capture, max_graphs=max_graphs)
        # Prompts of at most this many tokens (batch x length) get graphs once their shape repeats;
        # 0: every prompt runs eagerly. Their own graphs (a failed prompt capture leaves the decode
        # graphs alone), in the decode graphs' memory pool.
        self.prefill_graph_tokens = prefill_graph_tokens
        self.prefill_graphs = DecodeGraphs(self._eager_forward, capture=self.capture, max_graphs=max_prefill_graphs,
                                           pool=self.graphs.pool, kind="prefill", evict=False)
        self._prompts: OrderedDict[tuple, int] = OrderedDict()  # (shape, cache id) -> times seen
        self._told: set[str] = set()

    # --- what the engine covers ----------------------------------------------------------------
    def _fallback(self, why: str) -> None:
        if why not in self._told:
            self._told.add(why)
            log.warning("autoglm_kernels: decode engine not used (%s); running the eager patched path", why)

    def _generate_plan(self, args, kwargs):
        """((batch, cache positions needed, defer stop), "") when this generate call can use an
        engine cache, else (None, reason)."""
        if self.static_cache_unsupported:
            return None, self.static_cache_unsupported
        if kwargs.get(self.cache_name) is not None or kwargs.get("past_key_values") is not None:
            return None, "a cache was passed to generate"
        gen_cfg = kwargs.get("generation_config") or self.model.generation_config

        def opt(name, default=None):
            return kwargs[name] if name in kwargs else getattr(gen_cfg, name, default)

        if (opt("num_beams", 1) or 1) > 1:
            return None, "beam search"
        if kwargs.get("assistant_model") is not None or opt("prompt_lookup_num_tokens") is not None:
            return None, "assisted decoding"
        if opt("output_attentions", False) or opt("output_hidden_states", False):
            return None, "output_attentions/output_hidden_states"
        if opt("cache_implementation") is not None or opt("use_cache", True) is False:
            return None, "generate was given its own cache_implementation/use_cache"
        ids = args[0] if args and torch.is_tensor(args[0]) else kwargs.get("input_ids", kwargs.get("inputs"))
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None:
            return None, "no input_ids"
        batch, prompt = ids.shape[0], ids.shape[1]
        batch *= opt("num_return_sequences", 1) or 1
        if batch > self.max_batch:
            return None, f"batch {batch} > max_batch {self.max_batch}"
        new = opt("max_new_tokens")
        if new is None:
            new = max(0, (opt("max_length", 20) or 20) - prompt)
        needed = prompt + new
        if needed > self.caches.max_len:
            return None, f"prompt + new tokens = {needed} exceeds the static cache limit {self.caches.max_len}"
        # The step a deferred stop runs (and undoes) follows an EOS before max_length, so it
        # writes a position below `needed`; a stop at max_length is known on the host.
        defer = self.defer_stop and self.model.device.type == "cuda" and not opt("return_dict_in_generate", False)
        return (batch, needed, defer), ""

    def _is_decode_step(self, args, kwargs) -> bool:
        from transformers import StaticCache

        if args or self.static_cache_unsupported or self.graphs.disabled:
            return False
        if not isinstance(kwargs.get(self.cache_name), StaticCache):
            return False
        ids = kwargs.get("input_ids")
        return (
            torch.is_tensor(ids) and ids.dim() == 2 and ids.shape[1] == 1 and ids.shape[0] <= self.max_batch
            and kwargs.get("inputs_embeds") is None
            and (not self.step_needs_position_ids or kwargs.get("position_ids") is not None)
            and not kwargs.get("output_attentions") and not kwargs.get("output_hidden_states")
            and (not self.capture or ids.is_cuda)
        )

    def _is_graph_prompt(self, args, kwargs, cache) -> bool:
        """Whether this forward, the first over a fresh engine cache, runs as a prefill graph: a
        text prompt of 2..prefill_graph_tokens tokens whose shape this cache saw before."""
        if args or self.prefill_graphs.disabled or not self.prefill_graph_tokens:
            return False
        ids = kwargs.get("input_ids")
        if not (torch.is_tensor(ids) and ids.dim() == 2 and ids.shape[1] > 1 and ids.shape[0] <= self.max_batch
                and ids.numel() <= self.prefill_graph_tokens and (not self.capture or ids.is_cuda)):
            return False
        if kwargs.get("output_attentions") or kwargs.get("output_hidden_states"):
            return False
        if self.step_needs_position_ids and kwargs.get("position_ids") is None:
            return False
        if any(_base(k) not in _PREFILL_INPUTS for k, v in kwargs.items()
               if v is not None and (torch.is_tensor(v) or isinstance(v, dict))):
            return False
        key = (tuple(ids.shape), id(cache))
        seen = self._prompts.pop(key, 0) + 1
        self._prompts[key] = seen
        while len(self._prompts) > _PROMPTS_KEPT:
            self._prompts.popitem(last=False)
        return seen >= 2

    def _drop_step_unused(self, kwargs: dict) -> dict:
        if self.step_unused and kwargs.get("position_ids") is not None:
            return {k: v for k, v in kwargs.items() if k not in self.step_unused}
        return kwargs

    # --- the wrapped methods ---------------------------------------------------------------------
    def generate(self, *args, **kwargs):
        plan, why = self._generate_plan(args, kwargs)
        if plan is None:
            self._fallback(why)
            # the eager patched path: generate would otherwise torch.compile the forward for a
            # static cache of its own; disable_compile=False opts back in
            kwargs.setdefault("disable_compile", True)
            return self._generate(*args, **kwargs)
        batch, needed, defer = plan
        cache = self.caches.get(batch, needed)
        cache.defer_stop = defer
        kwargs[self.cache_name] = cache
        # transformers auto-compiles the forward for static caches; the engine replaces that with
        # its own graph (capturing inside an inductor-compiled call fails).
        kwargs.setdefault("disable_compile", True)
        # generate's sampling loop copies each step's logits before the next step; the beam and
        # assisted loops, which might not, never get here (_generate_plan).
        with caller_copies_logits():
            return self._generate(*args, **kwargs)

    def forward(self, *args, **kwargs):
        cache = kwargs.get(self.cache_name)
        fresh = isinstance(cache, EngineCache) and cache.known_length is not None
        try:
            if self._is_decode_step(args, kwargs):
                return self.graphs(cache, self._drop_step_unused(kwargs))
            if fresh:
                step_kwargs = self._drop_step_unused(kwargs)
                if self._is_graph_prompt(args, step_kwargs, cache):
                    return self.prefill_graphs(cache, step_kwargs)
                # A prompt that runs eagerly (its shape's first time, or too long for a graph)
                # runs the prefill graphs' kernels too, not the eager path's host-cheaper picks
                # (patch/layers.host_bound), so a prompt's first generate and its repeats write
                # the same cache. With the host's picks the first call's cache differed in
                # rounding, and on the H100 its tokens left the repeats' at a near-tie after 12-87
                # of 128 tokens. (Fallbacks keep the host's picks: they decode eagerly every step.)
                with graph_step():
                    return self._eager_forward(*args, **kwargs)
            return self._eager_forward(*args, **kwargs)
        finally:
            if fresh:  # the cache holds what this forward wrote: its length is on the device from now on
                cache.known_length = None

    def stats(self) -> dict:
        """Decode graphs (captures, graphs, replays, capture_s), prefill graphs (prefill_*), caches,
        and why anything ran eagerly (fallbacks)."""
        out = {}
        for prefix, graphs in (("", self.graphs), ("prefill_", self.prefill_graphs)):
            slots = graphs.slots.values()
            out.update({
                f"{prefix}captures": graphs.captures,
                f"{prefix}graphs": len(graphs.slots),
                f"{prefix}replays": sum(s.replays for s in slots),
                f"{prefix}capture_s": round(sum(s.capture_s for s in slots), 4),
            })
        disabled = [g.disabled for g in (self.graphs, self.prefill_graphs) if g.disabled]
        out.update({
            "caches": len(self.caches._caches),
            "last_recapture": self.graphs.recapture_reason,
            "fallbacks": sorted(self._told) + disabled,
        })
        return out


def _with_signature(fn, original):
    """`fn` presenting `original`'s signature: generate inspects forward's parameters to decide
    what to pass (position_ids from the attention mask, attention_mask, logits_to_keep), so the
    wrapper must look like the model's own forward."""

    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    return wrapper


def engine_of(model) -> DecodeEngine | None:
    return model.__dict__.get(_ATTR)


def install(model, **options) -> DecodeEngine:
    """Put the decode engine on this model instance (idempotent)."""
    engine = engine_of(model)
    if engine is None:
        engine = DecodeEngine(model, **options)
        model.__dict__[_ATTR] = engine
        model.__dict__["forward"] = _with_signature(engine.forward, engine._eager_forward)
        model.__dict__["generate"] = _with_signature(engine.generate, engine._generate)
    return engine


def uninstall(model) -> None:
    """Remove the engine: the instance's forward/generate are what they were before install."""
    engine = model.__dict__.pop(_ATTR, None)
    if engine is None:
        return
    for name, saved in engine._saved.items():
        if saved is None:
            model.__dict__.pop(name, None)
        else:
            model.__dict__[name] = saved
    engine.graphs.clear()
    engine.prefill_graphs.clear()
    engine.caches.clear()
