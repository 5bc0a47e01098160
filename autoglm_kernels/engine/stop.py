"""Deferred stop decisions for the engine's generate calls.

After every step transformers' generate asks whether all sequences have finished
(`bool(unfinished.max() == 0)`). That read blocks the host until the device has finished the
step, so the next step's Python work (preparing inputs, launching the graph) runs while the GPU
idles. transformers has the cure, `DeferredStopCheck`: read the flag one step late, run at most
one extra step and undo it, so the tokens and scores returned are the same. It enables that
only on Apple GPUs. `install_hook()` enables it as well for generate calls over an EngineCache
whose `defer_stop` is set and whose cache is not returned to the caller; every other call gets
transformers' own decision.

Streaming: DeferredStopCheck hands every token to the streamer one step late, so the first one
would wait for the second step's Python work. For the engine's calls the first token (the
prefill's) is streamed at once instead: one wait for the prefill, which a streaming caller wants
anyway (time to first token); every later token stays one step late.
"""

from __future__ import annotations

import threading

from .cache import EngineCache

_claimed = threading.local()  # .next: the is_supported check just before a construction was ours


def defers(device, cache, cache_is_returned: bool, is_assistant: bool = False) -> bool:
    """Whether a generate call over `cache` on `device` stops one step late through the engine."""
    return (isinstance(cache, EngineCache) and cache.defer_stop and not cache_is_returned and not is_assistant
            and getattr(device, "type", None) == "cuda")


class _RepeatDropped:
    """The caller's streamer, less the one put that repeats the first token (already streamed)."""

    def __init__(self, streamer):
        self.streamer, self.drop = streamer, False

    def put(self, value) -> None:
        if self.drop:
            self.drop = False
            return
        self.streamer.put(value)

    def end(self) -> None:
        self.streamer.end()


def install_hook() -> bool:
    """Route DeferredStopCheck.is_supported through `defers` and make generate build the engine's
    subclass, which streams the first token at once (idempotent). False when this transformers has
    no DeferredStopCheck (steps then stop in lockstep, as before)."""
    from transformers.generation import utils

    cls = getattr(utils, "DeferredStopCheck", None)
    if cls is None:
        return False
    if getattr(cls, "_autoglm_first_token_now", False):
        return True
    original = cls.__dict__["is_supported"]
    if not getattr(original, "_autoglm_hook", False):
        original_fn = original.__func__ if isinstance(original, staticmethod) else original

        def is_supported(device, cache, cache_is_returned, is_assistant=False, **kwargs):
            _claimed.next = defers(device, cache, cache_is_returned, is_assistant)
            if _claimed.next:
                return True
            return original_fn(device, cache, cache_is_returned, is_assistant=is_assistant, **kwargs)

        hook = staticmethod(is_supported)
        hook._autoglm_hook = True
        cls.is_supported = hook

    class FirstTokenNow(cls):
        """DeferredStopCheck that, for the engine's calls (claimed by the is_supported check that
        generate makes right before building it), streams the prefill's token at once."""

        _autoglm_first_token_now = True

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._now = getattr(_claimed, "next", False) and self.streamer is not None
            _claimed.next = False
            if self._now:
                self.streamer = _RepeatDropped(self.streamer)

        def __call__(self, unfinished_sequences, tokens, length):
            if self._now and self.is_first_step:
                self.streamer.streamer.put(tokens.cpu())  # waits for the prefill: the first token, now
                self.streamer.drop = True  # the deferred put of the same token, one step later
            return super().__call__(unfinished_sequences, tokens, length)

    FirstTokenNow.__name__ = FirstTokenNow.__qualname__ = cls.__name__
    utils.DeferredStopCheck = FirstTokenNow
    return True
