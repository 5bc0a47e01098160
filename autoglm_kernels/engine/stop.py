"""Deferred stop decisions for the engine's generate calls.

After every step transformers' generate asks whether all sequences have finished
(`bool(unfinished.max() == 0)`). That read blocks the host until the device has finished the
step, so the next step's Python work (preparing inputs, launching the graph) runs while the GPU
idles. transformers has the cure, `DeferredStopCheck`: read the flag one step late, run at most
one extra step and undo it, so the tokens and scores returned are the same. It enables that
only on Apple GPUs. `install_hook()` enables it as well for generate calls over an EngineCache
whose `defer_stop` is set and whose cache is not returned to the caller; every other call gets
transformers' own decision.
"""

from __future__ import annotations

from .cache import EngineCache


def defers(device, cache, cache_is_returned: bool, is_assistant: bool = False) -> bool:
    """Whether a generate call over `cache` on `device` stops one step late through the engine."""
    return (isinstance(cache, EngineCache) and cache.defer_stop and not cache_is_returned and not is_assistant
            and getattr(device, "type", None) == "cuda")


def install_hook() -> bool:
    """Route DeferredStopCheck.is_supported through `defers` (idempotent). False when this
    transformers has no DeferredStopCheck (steps then stop in lockstep, as before)."""
    from transformers.generation import utils

    cls = getattr(utils, "DeferredStopCheck", None)
    if cls is None:
        return False
    original = cls.__dict__["is_supported"]
    if getattr(original, "_autoglm_hook", False):
        return True
    original_fn = original.__func__ if isinstance(original, staticmethod) else original

    def is_supported(device, cache, cache_is_returned, is_assistant=False, **kwargs):
        if defers(device, cache, cache_is_returned, is_assistant):
            return True
        return original_fn(device, cache, cache_is_returned, is_assistant=is_assistant, **kwargs)

    hook = staticmethod(is_supported)
    hook._autoglm_hook = True
    cls.is_supported = hook
    return True
