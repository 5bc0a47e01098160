"""CUDA-graph capture and replay of one decode step (query length 1) of a model's forward, or of
one prompt's forward over a fresh cache (the engine's prefill graphs: same machinery).

The step is whatever the model's forward does (the patched fused layers, or stock modules):
this file knows no architecture. Every tensor argument of the step gets a static buffer; a
replay copies the caller's tensors into them and replays the captured kernels, so the decode
step costs one graph launch instead of hundreds of kernel launches. Positions and cache
lengths live on the device (StaticCache keeps its length in a device tensor), so nothing in
the captured step syncs with the host.

Graphs are keyed by the cache object (the buffers it captured) and the shapes/dtypes of the
tensor arguments; non-tensor arguments must match those at capture. All graphs of one model
share one memory pool.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

log = logging.getLogger("autoglm_kernels.engine")


_GRAPH_STEP = contextvars.ContextVar("autoglm_kernels_graph_step", default=False)
# Set while transformers' generate drives the steps: it copies each step's logits itself
# (`outputs.logits[:, -1].to(copy=True, ...)`) before the next step, so a replay may hand out
# the graph's own logits buffer instead of a clone (one copy kernel and its launch per step).
_CALLER_COPIES_LOGITS = contextvars.ContextVar("autoglm_kernels_caller_copies_logits", default=False)


@contextlib.contextmanager
def _flag_on(var: contextvars.ContextVar):
    """`var` is True inside, back to what it was after."""
    token = var.set(True)
    try:
        yield
    finally:
        var.reset(token)


def caller_copies_logits():
    """Mark the steps run inside as driven by a caller that copies the logits before the next step."""
    return _flag_on(_CALLER_COPIES_LOGITS)


def in_graph_step() -> bool:
    """True while a step for a CUDA graph runs (its warm-up, its capture): forwards that pick
    kernels by cost (patch/layers.host_bound) then pick the captured step's, so the warm-up
    initializes (compiles, loads) exactly the kernels the capture records."""
    return _GRAPH_STEP.get()


def graph_step():
    """Mark the steps run inside as steps of a CUDA graph (see in_graph_step). The engine uses it;
    so should a hand-written torch.cuda.graph capture of a patched model, around its warm-up too."""
    return _flag_on(_GRAPH_STEP)


def cache_counters(cache) -> list[torch.Tensor]:
    """The cache's device-side length counters (StaticCache layers keep `cumulative_length` as a
    0-d tensor that each update advances in place)."""
    counters = []
    for layer in getattr(cache, "layers", ()):
        t = getattr(layer, "cumulative_length", None)
        if torch.is_tensor(t):
            counters.append(t)
    return counters


_SEP = "\x00"  # flattened name of a dict entry: "attention_mask\x00full_attention"


def _flatten(kwargs: dict) -> dict:
    """kwargs with every dict of tensors (masks per layer type) spread into one entry per tensor."""
    if not any(isinstance(v, dict) for v in kwargs.values()):
        return kwargs
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, dict) and v and all(torch.is_tensor(t) for t in v.values()):
            out.update({f"{k}{_SEP}{sub}": t for sub, t in v.items()})
        else:
            out[k] = v
    return out


def _unflatten(kwargs: dict) -> dict:
    if not any(_SEP in k for k in kwargs):
        return kwargs
    out: dict = {}
    for k, v in kwargs.items():
        if _SEP in k:
            base, sub = k.split(_SEP, 1)
            out.setdefault(base, {})[sub] = v
        else:
            out[k] = v
    return out


def _base(name: str) -> str:
    return name.split(_SEP, 1)[0]


def _signature(kwargs: dict, shapes: dict) -> tuple:
    """What must be equal for a captured graph to serve a call: tensor shapes (as `shapes`
    overrides them: the padded mask) and dtypes, other values."""
    items = []
    for k in sorted(kwargs):
        v = kwargs[k]
        if torch.is_tensor(v):
            items.append((k, "T", shapes.get(k) or tuple(v.shape), v.dtype, v.device))
        elif isinstance(v, (int, float, bool, str, type(None))):
            items.append((k, "V", v))
        else:  # the cache object: identity, held in the slot
            items.append((k, "O", id(v)))
    return tuple(items)


def _with_logits(output, logits):
    """A new output object with `output`'s entries and `logits`. A transformers ModelOutput (an
    OrderedDict dataclass) is filled directly: copy.copy re-runs its __post_init__, about 15 us of
    host time in every decode step."""
    if isinstance(output, OrderedDict):
        cls = type(output)
        out = cls.__new__(cls)
        OrderedDict.__init__(out)
        for k, v in output.items():
            OrderedDict.__setitem__(out, k, v)
            object.__setattr__(out, k, v)
    else:
        out = copy.copy(output)
    out["logits"] = logits
    return out


@dataclass
class _Slot:
    graph: torch.cuda.CUDAGraph | None
    inputs: dict  # name -> static tensor
    output: object  # the model output whose tensors the graph writes
    cache_ref: weakref.ref | None
    capture_s: float = 0.0
    mask_cols: dict = field(default_factory=dict)  # mask entry -> valid columns of its static buffer
    replays: int = field(default=0)


class DecodeGraphs:
    """Captures `forward(**kwargs)` once per signature and replays it.

    `capture=False` runs the same static-buffer path eagerly (no graph): used to test the
    buffer logic on machines without a GPU.
    """

    def __init__(self, forward, *, capture: bool = True, max_graphs: int = 8, pool=None, kind: str = "decode",
                 evict: bool = True):
        self.forward = forward
        self.capture = capture
        self.max_graphs = max_graphs
        # When max_graphs live graphs exist, a new signature evicts the oldest (True) or runs
        # eagerly (False: the graphs first captured stay, no capture churn over varied inputs).
        self.evict = evict
        self.kind = kind  # what the graphs run, for the log: "decode" (steps) or "prefill" (prompts)
        self.slots: dict[tuple, _Slot] = {}
        self.pool = pool if pool is not None or not capture else torch.cuda.graph_pool_handle()
        self.captures = 0
        self.disabled: str | None = None  # set when a capture failed: the step then runs eagerly
        self.recapture_reason = ""  # what differed from the previous graph at the latest capture

    def __call__(self, cache, kwargs: dict):
        # Masks per layer type (a dict of tensors, as generate passes them to models with
        # `layer_types`, e.g. Qwen3) are flattened into one entry per tensor, so each gets a static
        # buffer like any tensor argument; the forward sees the dict again (_unflatten).
        kwargs = _flatten(kwargs)
        # A 2-D attention mask grows by one column per step: the step sees it zero-padded to the
        # cache capacity, so it keeps one shape (the padding is beyond every query).
        layers = getattr(cache, "layers", None)
        cap = getattr(layers[0], "max_cache_len", None) if layers else None
        growing = {k: v.shape[1] for k, v in kwargs.items()
                   if _base(k) == "attention_mask" and torch.is_tensor(v) and v.dim() == 2
                   and isinstance(cap, int) and v.shape[1] < cap}
        key = _signature(kwargs, {k: (kwargs[k].shape[0], cap) for k in growing})
        slot = self.slots.get(key)
        if slot is None or (slot.cache_ref is not None and slot.cache_ref() is None):
            if not self.evict and self._live() >= self.max_graphs:
                return self.forward(**_unflatten(kwargs))
            padded = {k: torch.nn.functional.pad(kwargs[k], (0, cap - n)) for k, n in growing.items()}
            slot = self._capture(key, cache, {**kwargs, **padded})
            slot.mask_cols = {k: (v.shape[-1] if torch.is_tensor(v) else 0) for k, v in kwargs.items()
                              if _base(k) == "attention_mask"}
            if self.disabled:
                return slot.output
        else:
            # One multi-tensor copy kernel for every input (generate hands 3-5 small tensors a step).
            dsts, srcs = [], []
            for name, buf in slot.inputs.items():
                if name in growing:
                    # Copy the valid columns in place; zero what an earlier, longer step left.
                    n, was = growing[name], slot.mask_cols.get(name, 0)
                    if n < was:
                        buf[:, n:was].zero_()
                    buf, slot.mask_cols[name] = buf[:, :n], n
                elif name in slot.mask_cols:
                    slot.mask_cols[name] = buf.shape[-1]
                dsts.append(buf)
                srcs.append(kwargs[name])
            if dsts:
                torch._foreach_copy_(dsts, srcs, non_blocking=True)
            if slot.graph is not None:
                slot.graph.replay()
            else:
                slot.output = self.forward(**_unflatten({**kwargs, **slot.inputs}))
        slot.replays += 1
        # The next replay overwrites the logits buffer: a caller that may keep a step's logits
        # across steps gets a copy.
        logits = slot.output["logits"]
        return _with_logits(slot.output, logits if _CALLER_COPIES_LOGITS.get() else logits.clone())

    def _live(self) -> int:
        return sum(1 for s in self.slots.values() if s.cache_ref is None or s.cache_ref() is not None)

    def _evict(self) -> None:
        dead = [k for k, s in self.slots.items() if s.cache_ref is not None and s.cache_ref() is None]
        for k in dead:
            del self.slots[k]
        while len(self.slots) >= self.max_graphs:
            del self.slots[next(iter(self.slots))]

    def _capture(self, key, cache, kwargs) -> _Slot:
        if self.slots:  # say what differs from the newest graph: a step that keeps changing shape shows here
            last = next(reversed(self.slots))
            self.recapture_reason = ", ".join(f"{a[0]}: {a[2:]} -> {b[2:]}" for a, b in zip(last, key) if a != b) or (
                "the cache the graph captured is gone" if last == key else f"argument names {len(last)} -> {len(key)}")
            log.info("autoglm_kernels: new %s graph (%s)", self.kind, self.recapture_reason)
        self._evict()
        start = time.perf_counter()
        inputs = {k: v.clone() for k, v in kwargs.items() if torch.is_tensor(v)}
        static_kwargs = {**kwargs, **inputs}
        cache_ref = weakref.ref(cache) if cache is not None else None
        with graph_step():
            slot = self._record(inputs, static_kwargs, kwargs, cache, cache_ref)
        if slot.graph is None and self.disabled:
            return slot
        slot.capture_s = time.perf_counter() - start
        self.captures += 1
        self.slots[key] = slot
        log.info("captured %s graph #%d in %.3f s (batch %s)", self.kind, self.captures, slot.capture_s,
                 next((v.shape[0] for v in inputs.values()), "?"))
        return slot

    def _record(self, inputs, static_kwargs, kwargs, cache, cache_ref) -> _Slot:
        """Warm up and capture one step (capture=False: run it once); see _capture."""
        if not self.capture:
            slot = _Slot(None, inputs, self.forward(**_unflatten(static_kwargs)), cache_ref)
        else:
            # Warm-up on a side stream (lazy inits, Triton compiles, cuBLAS handles) computes this
            # step for real; the capture records it; the replay recomputes it. Re-running the step
            # writes the same K/V at the same position, but it also advances the cache's length
            # counters: put them back before the replay.
            counters = cache_counters(cache)
            saved = [c.clone() for c in counters]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.forward(**_unflatten(static_kwargs))
            torch.cuda.current_stream().wait_stream(stream)
            for c, s in zip(counters, saved):
                c.copy_(s)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self.pool):
                    output = self.forward(**_unflatten(static_kwargs))
            except Exception as e:  # the step syncs with the host somewhere: run it eagerly from now on
                torch.cuda.synchronize()
                self.disabled = f"{self.kind} step not capturable ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
                log.warning("autoglm_kernels: %s; running it eagerly from now on", self.disabled)
                for c, s in zip(counters, saved):
                    c.copy_(s)
                return _Slot(None, {}, self.forward(**_unflatten(kwargs)), None)
            graph.replay()
            slot = _Slot(graph, inputs, output, cache_ref)
        return slot

    def clear(self) -> None:
        self.slots.clear()
