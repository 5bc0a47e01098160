"""Decode engine: bucketing, cache reuse, static-buffer replay (eager on CPU, graphs on GPU)."""

import inspect

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer

from autoglm_kernels import engine
from autoglm_kernels.models import reference_config


class _Collect(BaseStreamer):
    """A streamer that keeps every put() as a list."""

    def __init__(self):
        self.tokens = []

    def put(self, value):
        self.tokens.append(value.tolist())

    def end(self):
        pass


def _model(name="llama3.2-1b", device="cpu", dtype=torch.float32):
    torch.manual_seed(0)
    cfg = reference_config(name, tiny=True)
    return AutoModelForCausalLM.from_config(cfg).to(device=device, dtype=dtype).eval()


def test_bucket_len():
    assert engine.bucket_len(1, 256, 4096) == 256
    assert engine.bucket_len(256, 256, 4096) == 256
    assert engine.bucket_len(257, 256, 4096) == 512
    assert engine.bucket_len(5000, 256, 4096) == 4096


@pytest.mark.parametrize("name", ["llama3.2-1b", "glm4-9b"])
def test_static_buffer_path_matches_eager_generate(name):
    """The engine's path (static cache + static-buffer decode step, replayed eagerly on CPU)
    gives exactly the tokens of plain generate, across calls of different lengths."""
    model = _model(name)
    ids = torch.randint(1, 500, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    ref = [model.generate(input_ids=ids[:, :n], attention_mask=mask[:, :n], max_new_tokens=12, do_sample=False)
           for n in (9, 5)]
    eng = engine.install(model, capture=False, min_cache_len=32)
    try:
        for n, r in zip((9, 5, 9), ref + ref[:1]):
            out = model.generate(input_ids=ids[:, :n], attention_mask=mask[:, :n], max_new_tokens=12, do_sample=False)
            torch.testing.assert_close(out, r, rtol=0, atol=0)
        stats = eng.stats()
        assert stats["replays"] >= 3 * 11 - 1, stats  # every decode step went through the engine
        assert stats["caches"] == 1, stats  # one (batch, bucket) cache reused by all three calls
    finally:
        engine.uninstall(model)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__


@pytest.mark.parametrize("name", ["llama3.2-1b", "glm4-9b", "opt-1.3b"])
def test_engine_over_patched_model_matches_stock(name, monkeypatch):
    """Fused layers + static cache + static-buffer decode step: the stock tokens, exactly (fp32).
    Prefill and decode steps append k/v through rope_append_kv_ (RoPE + static-cache write in one
    op), or append_kv_ for OPT (no RoPE)."""
    from autoglm_kernels import ops, patch_model, unpatch_model

    appends = []
    for op_name in ("rope_append_kv_", "append_kv_"):
        real = getattr(ops, op_name)
        monkeypatch.setattr(ops, op_name, lambda *a, _real=real, _name=op_name, **k: (
            appends.append((_name, a[0].shape[1])), _real(*a, **k))[1])

    torch.manual_seed(0)
    cfg = reference_config(name, tiny=True)
    cfg.head_dim = 64  # a head size the attention kernels take, so attention is fused too
    if name.startswith("opt"):  # OPT's head size is hidden / heads
        cfg.hidden_size = cfg.word_embed_proj_dim = 64 * cfg.num_attention_heads
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(1, 500, (2, 7))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
    report = patch_model(model)
    assert report.num_patched("attention") == 2
    eng = engine.install(model, capture=False, min_cache_len=32)
    try:
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
        # The fused attention takes a 2-D mask that grows by one column per step: the engine pads it
        # to the cache capacity, so every step is served by one graph (the H100 run before this
        # fix captured a new graph for every token).
        assert eng.stats()["replays"] == 9 and eng.stats()["captures"] == 1, eng.stats()
        # 2 layers x (the prefill, which initializes the empty cache, + 9 decode steps)
        op_name = "append_kv_" if name == "opt-1.3b" else "rope_append_kv_"  # OPT: learned positions
        assert appends == [(op_name, n) for n in [7] * 2 + [1] * 18], appends
    finally:
        engine.uninstall(model)
        unpatch_model(model)


def test_fallbacks_are_correct_and_logged(caplog):
    model = _model()
    ids = torch.randint(1, 500, (1, 6))
    ref = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, num_beams=2)
    eng = engine.install(model, capture=False)
    with caplog.at_level("WARNING", logger="autoglm_kernels.engine"):
        out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, num_beams=2)
        model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, num_beams=2)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert eng.stats()["fallbacks"] == ["beam search"]
    assert sum("beam search" in r.message for r in caplog.records) == 1  # logged once
    engine.uninstall(model)


def test_length_beyond_cache_falls_back():
    model = _model()
    eng = engine.install(model, capture=False, max_cache_len=16)
    ids = torch.randint(1, 500, (1, 10))
    out = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False)
    assert out.shape == (1, 18)
    assert any("exceeds the static cache limit 16" in f for f in eng.stats()["fallbacks"])
    engine.uninstall(model)


def test_unsupported_architecture_runs_eager():
    model = _model("opt-1.3b")
    ids = torch.randint(1, 500, (1, 6))
    ref = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
    eng = engine.install(model, capture=False, static_cache_unsupported="positions come from the attention mask")
    torch.testing.assert_close(model.generate(input_ids=ids, max_new_tokens=5, do_sample=False), ref, rtol=0, atol=0)
    assert eng.stats()["fallbacks"] == ["positions come from the attention mask"] and eng.stats()["replays"] == 0
    # A static cache the caller passes to forward itself is not graphed either.
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=16)
    model(input_ids=ids, past_key_values=cache, use_cache=True)
    model(input_ids=ids[:, :1], past_key_values=cache, use_cache=True)
    assert eng.stats()["replays"] == 0 and eng.graphs.captures == 0
    engine.uninstall(model)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama3.2-1b", "glm4-9b"])
def test_cuda_graph_decode_matches_eager(name):
    model = _model(name, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(1, 500, (3, 17), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False,
                         cache_implementation="static", disable_compile=True)
    eng = engine.install(model)
    try:
        for _ in range(2):
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False)
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
        st = eng.stats()
        assert st["captures"] == 1 and st["replays"] >= 2 * 23 - 1, st
    finally:
        engine.uninstall(model)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["llama3.2-1b", "glm4-9b", "opt-1.3b"])
def test_patched_cuda_graph_decode_matches_eager_patched(name):
    """patch_model's default on CUDA (fused layers + graph decode): exactly the tokens of the eager
    patched model running the same kernels (graph_step), from one captured graph, in the first
    call (prompt prefilled eagerly) and the repeat (prefill graph) alike (the warm-up ran the
    captured kernels: a capture that failed on a kernel seen first inside it would fall back to
    eager decoding and show here as 0 captures). bench/graph_tokens.py runs this at full size."""
    from autoglm_kernels import patch_model, unpatch_model

    model = _model(name, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(1, 500, (2, 13), device="cuda")
    report = patch_model(model, cuda_graphs=False)
    with engine.graph_step():
        ref = model.generate(input_ids=ids, max_new_tokens=32, do_sample=False, cache_implementation="static",
                             disable_compile=True)
    unpatch_model(model)
    report = patch_model(model)
    assert "cuda_graphs" in str(report)
    for _ in range(2):
        out = model.generate(input_ids=ids, max_new_tokens=32, do_sample=False)
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    st = engine.engine_of(model).stats()
    assert st["captures"] == 1 and st["replays"] == 2 * 31, st
    unpatch_model(model)
    assert engine.engine_of(model) is None


@pytest.mark.gpu
def test_thousand_generates_do_not_grow_memory():
    """1,000 generate calls with varying prompt lengths (patched model, graph decode): after the
    graphs and caches of the first calls exist, allocated memory does not grow."""
    from autoglm_kernels import patch_model, unpatch_model

    model = _model("llama3.2-1b", device="cuda", dtype=torch.bfloat16)
    patch_model(model)
    gen = torch.Generator().manual_seed(0)
    try:
        allocated = []
        for i in range(1000):
            n = int(torch.randint(1, 200, (1,), generator=gen))
            ids = torch.randint(1, 500, (1, n), generator=gen).to("cuda")
            model.generate(input_ids=ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
            if i in (99, 549, 999):
                torch.cuda.synchronize()
                allocated.append(torch.cuda.memory_allocated())
        st = engine.engine_of(model).stats()
        # No per-call growth: a leak of one 512-byte block per call would add 450 KiB over the last
        # 900 calls. (The H100 runs saw +1 KiB once in 900 calls: two 512-byte blocks.)
        assert allocated[2] - allocated[0] <= 4096, f"allocated at calls 100/550/1000: {allocated} bytes; engine {st}"
        print(f"allocated at calls 100/550/1000: {allocated} bytes")
        assert st["captures"] == 1 and st["replays"] >= 3000, st
    finally:
        unpatch_model(model)


def test_opt_step_without_position_ids_runs_eagerly():
    """OPT derives positions from the 2-D mask when a caller's own decode loop passes no
    position_ids; the graph step pads that mask, so those steps must run eagerly (the H100 run
    saw an empty query from the padded mask and a failed capture)."""
    from transformers import StaticCache

    from autoglm_kernels.patch.archs import spec_for

    model = _model("opt-1.3b")
    ids = torch.randint(1, 500, (2, 6))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :2] = 0

    # the forward's own name for the cache (transformers 5.2x renamed past_key_values -> cache)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def loop():
        cache = {name: StaticCache(config=model.config, max_cache_len=32)}
        out = model(input_ids=ids, attention_mask=mask[:, :6], use_cache=True, **cache)
        logits = [out.logits[:, -1]]
        for t in range(6, 9):
            step = logits[-1].argmax(-1, keepdim=True)
            out = model(input_ids=step, attention_mask=mask[:, :t + 1], use_cache=True, **cache)
            logits.append(out.logits[:, -1])
        return torch.stack(logits, 1)

    ref = loop()
    eng = engine.install(model, capture=False, **spec_for("opt").engine_options())
    try:
        torch.testing.assert_close(loop(), ref, rtol=0, atol=0)
        assert eng.stats()["replays"] == 0 and eng.graphs.captures == 0
        out = model.generate(input_ids=ids, attention_mask=mask[:, :6], max_new_tokens=5, do_sample=False)
        assert eng.stats()["replays"] == 4, eng.stats()  # generate passes position_ids: its steps are served
        assert out.shape == (2, 11)
    finally:
        engine.uninstall(model)


@pytest.mark.parametrize("with_image", [False, True])
def test_glm4v_decode_steps_through_the_engine(with_image):
    """GLM-4.1V (AutoGLM-Phone): generate passes M-RoPE position_ids every step, so the patched
    model's decode steps run through the engine's static path with the stock tokens, one graph for
    every step (transformers 5.17 also passes mm_token_type_ids, one column longer per step: the
    engine drops it from steps that carry position_ids)."""
    from test_patch import _model

    from autoglm_kernels import patch_model, unpatch_model
    from autoglm_kernels.patch.archs import spec_for

    model = _model("glm4v")
    cfg = model.config
    cfg.image_token_id, cfg.video_token_id = 511, 510  # inside the tiny vocabulary
    cfg.image_start_token_id, cfg.image_end_token_id, cfg.video_start_token_id, cfg.video_end_token_id = 508, 509, 506, 507
    torch.manual_seed(3)
    ids = torch.randint(1, 500, (1, 12))
    kw = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    if with_image:  # one 4x4-patch image (2x2 merge): 4 image tokens
        ids[:, 3:7] = cfg.image_token_id
        kw.update(pixel_values=torch.randn(16, 12), image_grid_thw=torch.tensor([[1, 4, 4]]))
        if "mm_token_type_ids" in inspect.signature(model.forward).parameters:
            kw["mm_token_type_ids"] = (ids == cfg.image_token_id).int()
    else:  # a left-padded batch of two
        kw = dict(input_ids=ids.repeat(2, 1), attention_mask=torch.ones(2, 12, dtype=torch.long))
        kw["attention_mask"][1, :3] = 0
    gen = dict(max_new_tokens=10, min_new_tokens=10, do_sample=False)
    with torch.no_grad():
        ref = model.generate(**kw, **gen)
        patch_model(model, cuda_graphs=False)
        eng = engine.install(model, capture=False, min_cache_len=32, **spec_for("glm4v").engine_options())
        try:
            out = model.generate(**kw, **gen)
            st = eng.stats()
        finally:
            engine.uninstall(model)
            unpatch_model(model)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert st["captures"] == 1 and st["replays"] == 9, st


def test_engine_cache_is_not_the_users():
    """generate marks caches passed to it as the user's; the engine's own cache ignores the mark
    (so generate does not treat it as returned to the caller)."""
    model = _model()
    eng = engine.install(model)
    try:
        cache = eng.caches.get(1, 40)
        assert isinstance(cache, engine.EngineCache)
        cache._is_user_defined = True
        assert cache._is_user_defined is False
    finally:
        engine.uninstall(model)


def test_deferred_stop_hook_only_covers_engine_caches():
    from transformers import StaticCache
    from transformers.generation.utils import DeferredStopCheck

    from autoglm_kernels.engine import stop

    from transformers.generation import utils as gen_utils

    assert stop.install_hook()
    built = gen_utils.DeferredStopCheck
    hooked = inspect.getattr_static(built, "is_supported")
    assert stop.install_hook() and gen_utils.DeferredStopCheck is built  # idempotent: no second subclass or wrap
    assert inspect.getattr_static(gen_utils.DeferredStopCheck, "is_supported") is hooked
    assert issubclass(built, DeferredStopCheck) or built is DeferredStopCheck
    model = _model()
    cfg = model.config
    cache = engine.EngineCache(config=cfg, max_cache_len=64)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    cache.defer_stop = True
    assert DeferredStopCheck.is_supported(cuda, cache, False, is_assistant=False)
    assert not DeferredStopCheck.is_supported(cuda, cache, True, is_assistant=False)  # returned to the caller
    assert not DeferredStopCheck.is_supported(cuda, cache, False, is_assistant=True)
    assert not DeferredStopCheck.is_supported(cpu, cache, False, is_assistant=False)  # no CPU events
    cache.defer_stop = False
    assert not DeferredStopCheck.is_supported(cuda, cache, False, is_assistant=False)
    # anything else: transformers' own decision (not deferred on CUDA)
    assert not DeferredStopCheck.is_supported(cuda, StaticCache(config=cfg, max_cache_len=64), False, is_assistant=False)
    assert not DeferredStopCheck.is_supported(cuda, None, False, is_assistant=False)


def test_engine_stop_check_streams_the_first_token_at_once(monkeypatch):
    """For the engine's calls the prefill's token is streamed when it is sampled (time to first
    token), every later token one step late as DeferredStopCheck does, each exactly once; other
    deferred calls keep transformers' behaviour. (CPU: the check's events are stubbed.)"""
    from transformers.generation import utils as gen_utils

    from autoglm_kernels.engine import stop

    class Event:  # the CPU has no events: copies are synchronous there anyway
        def __init__(self, **kwargs):
            pass

        def record(self):
            pass

        def synchronize(self):
            pass

    monkeypatch.setattr(torch, "Event", Event)
    assert stop.install_hook()
    model = _model()
    cache = engine.EngineCache(config=model.config, max_cache_len=64)
    cache.defer_stop = True
    ids = torch.ones(1, 4, dtype=torch.long)

    def run(engine_call: bool, tokens: list[int], eos_after: int | None):
        check_cls = gen_utils.DeferredStopCheck
        cuda = torch.device("cuda")  # a device object only: nothing runs there
        assert check_cls.is_supported(cuda, cache if engine_call else None, False, is_assistant=False) is engine_call
        streamer = _Collect()
        check = check_cls(ids, 100, None, False, streamer)
        seen, stopped = [], False
        for step, tok in enumerate(tokens, 1):
            unfinished = torch.tensor([0 if eos_after is not None and step >= eos_after else 1])
            stopped = check(unfinished, torch.tensor([tok]), ids.shape[1] + step)
            seen.append(list(streamer.tokens))
            if stopped:
                break
        undo = check.finish()
        return seen, streamer.tokens, undo

    seen, streamed, undo = run(True, [5, 6, 7], None)
    assert seen == [[[5]], [[5]], [[5], [6]]] and streamed == [[5], [6], [7]] and undo == 0
    seen, streamed, undo = run(True, [5], None)
    assert seen == [[[5]]] and streamed == [[5]] and undo == 0
    seen, streamed, undo = run(True, [5, 6, 7], 2)  # EOS at step 2, known one step late: step 3 undone
    assert streamed == [[5], [6]] and undo == 1
    # a deferred check built without the engine's claim (transformers' own, e.g. on mps): one step late from the first
    seen, streamed, undo = run(False, [5, 6, 7], None)
    assert seen == [[], [[5]], [[5], [6]]] and streamed == [[5], [6], [7]] and undo == 0


def test_generate_plan_defers_only_on_cuda_without_returned_cache():
    model = _model()
    eng = engine.install(model)
    try:
        ids = torch.ones(1, 8, dtype=torch.long)
        plan, _ = eng._generate_plan((ids,), {"max_new_tokens": 8})
        assert plan == (1, 16, False)  # CPU model: no CUDA events to defer with
        eng.model = type("M", (), {"device": torch.device("cuda"), "generation_config": model.generation_config})()
        assert eng._generate_plan((ids,), {"max_new_tokens": 8})[0] == (1, 16, True)
        assert eng._generate_plan((ids,), {"max_new_tokens": 8, "return_dict_in_generate": True})[0] == (1, 16, False)
        eng.defer_stop = False
        assert eng._generate_plan((ids,), {"max_new_tokens": 8})[0] == (1, 16, False)
    finally:
        eng.model = model
        engine.uninstall(model)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 3])
def test_deferred_stop_gives_the_lockstep_tokens(batch, monkeypatch):
    """A stop decided one step late (the extra step undone) returns and streams exactly the
    tokens of the lockstep loop, when EOS ends generation early and at max_new_tokens."""
    from transformers.generation import utils as gen_utils

    from autoglm_kernels import patch_model, unpatch_model

    deferred = []
    init = gen_utils.DeferredStopCheck.__init__
    monkeypatch.setattr(gen_utils.DeferredStopCheck, "__init__",
                        lambda self, *a, **k: (deferred.append(1), init(self, *a, **k))[1])
    model = _model(device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(1, 500, (batch, 11), device="cuda")
    mask = torch.ones_like(ids)
    mask[-1, :3] = 0
    patch_model(model)
    eng = engine.engine_of(model)
    try:
        eng.defer_stop = False
        free = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0)
        assert not deferred
        # EOS = a token every row produces after a few steps: generation ends early
        eos = int(free[0, ids.shape[1] + 4])
        for kwargs in ({}, {"eos_token_id": eos}):
            eng.defer_stop = False
            ref_stream, new_stream = _Collect(), _Collect()
            ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0,
                                 streamer=ref_stream if batch == 1 else None, **kwargs)
            eng.defer_stop = True
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0,
                                 streamer=new_stream if batch == 1 else None, **kwargs)
            torch.testing.assert_close(out, ref, rtol=0, atol=0)
            assert new_stream.tokens == ref_stream.tokens
        assert deferred, "the deferred stop was never used"
        if batch == 1:
            assert ref.shape[1] < ids.shape[1] + 24  # the EOS case did end early
    finally:
        unpatch_model(model)


def test_growing_mask_is_copied_in_place_and_stale_columns_cleared():
    """The step sees a 2-D mask zero-padded to the cache capacity: copied into the static buffer
    column by column as it grows, with columns a longer earlier step left cleared."""
    from autoglm_kernels.engine.graphs import DecodeGraphs

    class Layer:
        max_cache_len = 8

    class Cache:
        layers = [Layer()]

    seen = []

    def forward(input_ids, attention_mask):
        seen.append(attention_mask.clone())
        return {"logits": attention_mask.float()}

    graphs, cache = DecodeGraphs(forward, capture=False), Cache()
    ids = torch.zeros(2, 1, dtype=torch.long)
    for n in (5, 6, 7, 3, 4):
        mask = torch.ones(2, n, dtype=torch.long)
        mask[1, 0] = 0
        out = graphs(cache, {"input_ids": ids, "attention_mask": mask})
        expect = torch.nn.functional.pad(mask, (0, 8 - n))
        assert torch.equal(seen[-1], expect), (n, seen[-1])
        assert torch.equal(out["logits"], expect.float())
    assert len(graphs.slots) == 1 and graphs.captures == 1


def test_engine_cache_reset_zeroes_every_layer_at_once():
    model = _model()
    eng = engine.install(model)
    try:
        cache = eng.caches.get(1, 40)
        cfg = model.config
        k = torch.randn(1, cfg.num_key_value_heads, 5, cfg.hidden_size // cfg.num_attention_heads)
        for _ in range(2):  # the first reset walks the layers, the second uses the kept list
            for i in range(cfg.num_hidden_layers):
                cache.update(k, k + 1, i)
            assert int(cache.get_seq_length()) == 5
            assert eng.caches.get(1, 40) is cache  # reused, reset
            assert int(cache.get_seq_length()) == 0
            for layer in cache.layers:
                assert int(layer.cumulative_length) == 0
                assert not layer.keys.any() and not layer.values.any()
        assert "_reset_plan" in cache.__dict__
    finally:
        engine.uninstall(model)


def test_graph_step_is_marked_so_forwards_pick_the_captured_kernels():
    """The step DecodeGraphs records (its warm-up and capture; capture=False: its one run) runs
    inside graph_step(), where patch/layers.host_bound is False: the warm-up initializes the very
    kernels the capture records, not the eager path's host-cheaper ones."""
    from autoglm_kernels.engine.graphs import DecodeGraphs, graph_step, in_graph_step
    from autoglm_kernels.patch import layers as L

    class Layer:
        cumulative_length = torch.zeros((), dtype=torch.long)

    class Cache:
        layers = [Layer()]

    marks = []

    def forward(input_ids):
        marks.append(in_graph_step())
        return {"logits": input_ids.float()}

    graphs = DecodeGraphs(forward, capture=False)
    graphs(Cache(), {"input_ids": torch.zeros(1, 1, dtype=torch.long)})
    assert marks == [True] and not in_graph_step()

    class CudaLike:  # host_bound reads only .is_cuda before it asks the graph-step mark
        is_cuda = True

    with graph_step():
        assert in_graph_step() and not L.host_bound(CudaLike())


def test_eager_prompt_over_engine_cache_runs_the_graph_kernels():
    """A prompt over the engine's cache that runs eagerly (its shape's first time) runs inside
    graph_step(): it prefills with the kernels its repeats' prefill graph runs, so both give the
    same tokens (host_bound would otherwise pick aten/SDPA in the eager one). Fallbacks, which
    decode eagerly every step, keep the host-cheaper picks."""
    from autoglm_kernels.engine.graphs import in_graph_step

    model = _model()
    ids = torch.randint(1, 500, (1, 6))
    eng = engine.install(model, capture=False)
    marks = []
    eager = eng._eager_forward

    def spy(*args, **kwargs):
        marks.append(in_graph_step())
        return eager(*args, **kwargs)

    eng._eager_forward = spy
    try:
        model.generate(input_ids=ids, max_new_tokens=3, do_sample=False)  # first prefill: eager
        assert marks == [True]
        model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, num_beams=2)  # fallback: every step eager
        assert marks == [True, False, False, False], marks
        assert eng.stats()["fallbacks"] == ["beam search"]
        assert not in_graph_step()
    finally:
        engine.uninstall(model)


def test_replay_hands_out_a_logits_copy_unless_the_caller_copies():
    """A replay overwrites the graph's logits buffer: a caller that keeps a step's logits (a
    hand-written decode loop) gets a copy; inside generate (caller_copies_logits), which copies
    them itself before the next step, the buffer is handed out as is (no copy kernel per step)."""
    from autoglm_kernels.engine.graphs import DecodeGraphs, caller_copies_logits

    class Cache:
        layers = []

    buf = torch.zeros(1, 1, 4)

    def forward(input_ids):  # like a graph: every step writes the same output buffer
        buf.fill_(float(input_ids))
        return {"logits": buf}

    graphs, cache = DecodeGraphs(forward, capture=False), Cache()
    step = lambda v: graphs(cache, {"input_ids": torch.full((1, 1), v)})["logits"]  # noqa: E731
    first, second = step(1), step(2)
    assert first.data_ptr() != buf.data_ptr() and float(first[0, 0, 0]) == 1.0 and float(second[0, 0, 0]) == 2.0
    with caller_copies_logits():
        third = step(3)
    assert third is buf and float(third[0, 0, 0]) == 3.0
    assert float(step(4)[0, 0, 0]) == 4.0 and float(third[0, 0, 0]) == 4.0  # the buffer moved on


def test_masks_per_layer_type_keep_one_graph():
    """Models with `layer_types` (Qwen3) get their masks from generate as a dict per layer type;
    the step flattens it into one static buffer per mask, so one graph serves every step (it used
    to see a new dict object each step and capture again), and the tokens are stock's."""
    cfg = transformers.Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, vocab_size=256, max_position_embeddings=256)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(1, 200, (2, 12))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    gen = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = model.generate(input_ids=ids, attention_mask=mask, **gen)
        eng = engine.install(model, capture=False)
        try:
            got = model.generate(input_ids=ids, attention_mask=mask, **gen)
            again = model.generate(input_ids=ids[:, 2:], attention_mask=mask[:, 2:], **gen)  # shorter prompt
            st = eng.stats()
        finally:
            engine.uninstall(model)
        want_again = model.generate(input_ids=ids[:, 2:], attention_mask=mask[:, 2:], **gen)
    assert torch.equal(got, want) and torch.equal(again, want_again)
    assert st["captures"] == 1 and st["replays"] == 18 and not st["fallbacks"], st


@pytest.mark.parametrize("name", ["llama3.2-1b", "glm4-9b", "opt-1.3b"])
def test_repeated_prompt_shape_runs_as_prefill_graph(name):
    """A prompt shape the cache saw before runs as a prefill graph (static buffers, replayed eagerly
    on CPU); a shape seen once runs eagerly (no capture for varied prompts). Stock tokens either
    way, with left padding and two prompt lengths sharing one cache."""
    model = _model(name)
    ids = torch.randint(1, 500, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding
    ref = {n: model.generate(input_ids=ids[:, :n], attention_mask=mask[:, :n], max_new_tokens=12, do_sample=False)
           for n in (9, 6)}
    eng = engine.install(model, capture=False, min_cache_len=32)
    try:
        for n in (9, 9, 6, 9, 6):
            out = model.generate(input_ids=ids[:, :n], attention_mask=mask[:, :n], max_new_tokens=12, do_sample=False)
            torch.testing.assert_close(out, ref[n], rtol=0, atol=0)
        st = eng.stats()
        # 9: eager, captured, replayed; 6: eager, captured
        assert (st["prefill_captures"], st["prefill_replays"], st["caches"]) == (2, 3, 1), st
        assert not st["fallbacks"], st
    finally:
        engine.uninstall(model)


def test_prefill_graph_limits_and_inputs():
    """Prompts above prefill_graph_tokens, prompts with inputs beyond text (inputs_embeds) and
    prefill_graph_tokens=0 run eagerly every time."""
    model = _model()
    ids = torch.randint(1, 500, (1, 9))
    ref = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    for opts in ({"prefill_graph_tokens": 8}, {"prefill_graph_tokens": 0}):
        eng = engine.install(model, capture=False, min_cache_len=32, **opts)
        try:
            for _ in range(3):
                torch.testing.assert_close(model.generate(input_ids=ids, max_new_tokens=4, do_sample=False), ref,
                                           rtol=0, atol=0)
            assert eng.stats()["prefill_captures"] == 0, (opts, eng.stats())
        finally:
            engine.uninstall(model)
    eng = engine.install(model, capture=False, min_cache_len=32)
    try:
        embeds = model.get_input_embeddings()(ids)
        outs = [model.generate(inputs_embeds=embeds, max_new_tokens=4, do_sample=False) for _ in range(3)]
        assert all(torch.equal(o, outs[0]) for o in outs)
        assert eng.stats()["prefill_captures"] == 0, eng.stats()
    finally:
        engine.uninstall(model)


@pytest.mark.parametrize("name", ["llama3.2-1b", "opt-1.3b"])
def test_patched_prompt_over_fresh_cache_reads_no_device_length(name, monkeypatch):
    """The fused attention of a prompt over the engine's fresh cache takes its length from the
    host (0) instead of reading the device counter: a read would sync with the GPU and could not
    be captured. Tokens stay the stock ones; the second call replays the prefill graph."""
    from autoglm_kernels import patch_model, unpatch_model
    from autoglm_kernels.patch import layers

    torch.manual_seed(0)
    cfg = reference_config(name, tiny=True)
    cfg.head_dim = 64
    if name.startswith("opt"):
        cfg.hidden_size = cfg.word_embed_proj_dim = 64 * cfg.num_attention_heads
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids = torch.randint(1, 500, (1, 20))  # > DECODE_MAX_Q (16): the prompt path, which slices the cache
    ref = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)

    def no_read(*a, **k):
        raise AssertionError("a prompt over a fresh engine cache read the cache length from the device")

    monkeypatch.setattr(layers.Runtime, "_read_device", no_read)
    patch_model(model)
    eng = engine.install(model, capture=False, min_cache_len=64)
    try:
        for _ in range(2):
            torch.testing.assert_close(model.generate(input_ids=ids, max_new_tokens=6, do_sample=False), ref,
                                       rtol=0, atol=0)
        assert eng.stats()["prefill_captures"] == 1, eng.stats()
    finally:
        engine.uninstall(model)
        unpatch_model(model)


def test_prefill_graphs_are_kept_not_churned():
    """With max_prefill_graphs graphs captured, a further repeated prompt shape runs eagerly
    instead of evicting one (varied prompt lengths must not recapture over and over)."""
    model = _model()
    ids = torch.randint(1, 500, (1, 9))
    refs = {n: model.generate(input_ids=ids[:, :n], max_new_tokens=4, do_sample=False) for n in (7, 8, 9)}
    eng = engine.install(model, capture=False, min_cache_len=32, max_prefill_graphs=2)
    try:
        for n in (7, 7, 8, 8, 9, 9, 9, 7, 8):
            torch.testing.assert_close(model.generate(input_ids=ids[:, :n], max_new_tokens=4, do_sample=False),
                                       refs[n], rtol=0, atol=0)
        st = eng.stats()
        assert (st["prefill_captures"], st["prefill_graphs"], st["prefill_replays"]) == (2, 2, 4), st
    finally:
        engine.uninstall(model)
