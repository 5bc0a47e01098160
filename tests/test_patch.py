"""patch_model / unpatch_model on tiny random-weight models of every supported architecture (CPU, fp32).

The patched model must give exactly the stock greedy tokens and logits within 1e-4, and
unpatch_model must restore bit-identical behaviour. Attention kernels take head_dim 64/128, so
the tiny configs here use head_dim 64 (models.reference_config's tiny head_dim 32 is tested as a
reported, stock-attention case).

Speed: on CPU the ops take their plain-torch reference path here (TRITON_INTERPRET=0 per test),
which checks the patching itself; the tests taking the `interpreted` fixture run the Triton
kernels through the interpreter end to end (prefill and decode kernels, every code path of the
arch table: half/interleaved/M-RoPE, q/k norms, sandwich norms, LayerNorm + fused ReLU).
"""

import copy

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

from autoglm_kernels import PatchReport, ops, patch_model, unpatch_model
from autoglm_kernels.models import reference_config
from autoglm_kernels.patch import ARCHS, state_of
from autoglm_kernels.patch import layers as L

ARCH_NAMES = ["llama", "mistral", "qwen2", "qwen3", "glm", "glm4", "glm4v", "opt"]
_SMALL = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
              intermediate_size=176, vocab_size=512, max_position_embeddings=512, pad_token_id=0, eos_token_id=None,
              initializer_range=0.1)


@pytest.fixture(autouse=True)
def _reference_ops(monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture
def interpreted(monkeypatch, _reference_ops):
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _config(arch: str):
    """A 2-layer fp32 config of `arch` with head_dim 64 and weights spread enough for clear argmaxes."""
    if arch == "llama":
        cfg = reference_config("llama3.2-1b", tiny=True)
    elif arch == "glm4":
        cfg = reference_config("glm4-9b", tiny=True)
    elif arch == "opt":
        cfg = reference_config("opt-1.3b", tiny=True)
        cfg.num_attention_heads = 2  # head_dim 64
        cfg.init_std = 0.1
        return cfg
    elif arch == "glm4v":
        text = dict(_SMALL, model_type="glm4v_text", attention_bias=True, rms_norm_eps=1e-5,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6],
                                     "partial_rotary_factor": 0.5})
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=128, patch_size=2,
                      spatial_merge_size=2, temporal_patch_size=1)
        return transformers.Glm4vConfig(text_config=text, vision_config=vision)
    else:
        cls = {"mistral": "MistralConfig", "qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "glm": "GlmConfig"}[arch]
        extra = {"mistral": dict(sliding_window=None), "qwen2": dict(attention_bias=True),
                 "glm": dict(partial_rotary_factor=0.5)}.get(arch, {})
        return getattr(transformers, cls)(**_SMALL, **extra)
    for k, v in _SMALL.items():
        if k != "num_attention_heads" or arch != "llama":
            setattr(cfg, k, v)
    return cfg


def _model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = _config(arch)
    if arch == "glm4v":
        return transformers.Glm4vForConditionalGeneration(cfg).eval()
    return AutoModelForCausalLM.from_config(cfg).eval()


def _prompt(batch: int = 1, length: int = 9, pad: tuple = ()):
    torch.manual_seed(1)
    ids = torch.randint(1, 500, (batch, length))
    mask = torch.ones_like(ids)
    for row, n in enumerate(pad):  # left padding
        ids[row, :n] = 0
        mask[row, :n] = 0
    return ids, mask


def _generate(model, ids, mask, n=32, **kw):
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
                              min_new_tokens=n, **kw)


def _logits(model, ids, mask=None):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _sd(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_sd(a, b):
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("arch", ARCH_NAMES)
def test_patched_generate_matches_stock(arch):
    """Greedy 32 tokens exactly as stock, logits within 1e-4, everything fused, unpatch bit-exact."""
    model = _model(arch)
    ids, mask = _prompt()
    ref_tokens = _generate(model, ids, mask)
    ref_logits = _logits(model, ref_tokens)
    sd = _sd(model)

    report = patch_model(model, strict=True)
    assert report.supported and not report.reasons(), str(report)
    assert report.num_patched("attention") == report.num_patched("mlp") == 2
    _assert_same_sd(sd, _sd(model))
    torch.testing.assert_close(_logits(model, ref_tokens), ref_logits, rtol=0, atol=1e-4)
    assert torch.equal(_generate(model, ids, mask), ref_tokens)

    assert unpatch_model(model)
    assert torch.equal(_logits(model, ref_tokens), ref_logits)  # bit-identical
    _assert_same_sd(sd, _sd(model))


@pytest.mark.parametrize("arch", ["qwen3", "glm4v", "opt"])
def test_kernels_end_to_end(arch, interpreted):
    """The Triton kernels (interpreted on CPU): a 20-token left-padded prompt (prefill kernel) then decode steps."""
    model = _model(arch)
    ids, mask = _prompt(batch=2, length=20, pad=(0, 5))
    ref = _generate(model, ids, mask, n=5)
    ref_logits = _logits(model, ref)
    patch_model(model)
    assert torch.equal(_generate(model, ids, mask, n=5), ref)
    torch.testing.assert_close(_logits(model, ref), ref_logits, rtol=0, atol=1e-4)
    with torch.no_grad():  # no cache: k/v reach the prefill kernel as strided views of the qkv output
        torch.testing.assert_close(model(input_ids=ref, use_cache=False).logits, ref_logits, rtol=0, atol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "glm4", "opt"])
def test_left_padded_batch(arch):
    model = _model(arch)
    ids, mask = _prompt(batch=3, length=11, pad=(0, 4, 7))
    ref = _generate(model, ids, mask, n=12)
    patch_model(model)
    assert torch.equal(_generate(model, ids, mask, n=12), ref)
    valid = mask.bool()
    torch.testing.assert_close(_logits(model, ids, mask)[valid], _logits(_unpatched(model), ids, mask)[valid],
                               rtol=0, atol=1e-4)


def _unpatched(model):
    stock = copy.deepcopy(model)
    unpatch_model(stock)
    return stock


@pytest.mark.parametrize("arch", ["llama", "glm4", "opt"])
def test_static_cache(arch):
    model = _model(arch)
    ids, mask = _prompt(batch=2, length=20, pad=(0, 3))  # 20-token prompt: prefill kernel into the static cache
    ref = _generate(model, ids, mask, n=10, cache_implementation="static")
    patch_model(model)
    assert torch.equal(_generate(model, ids, mask, n=10, cache_implementation="static"), ref)
    assert torch.equal(_generate(model, ids[:, -5:], mask[:, -5:], n=10, cache_implementation="static"),
                       _generate(_unpatched(model), ids[:, -5:], mask[:, -5:], n=10, cache_implementation="static"))


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_host_bound_static_prefill(monkeypatch, arch):
    """An eager (host-bound) prompt over a StaticCache: OPT's K/V go in by two slice copies instead
    of the append kernel (decode steps still append with it); the stock tokens, chunked prompts
    included; a prompt the cache cannot hold is refused before anything is written."""
    from transformers import StaticCache

    monkeypatch.setattr(L, "host_bound", lambda x: True)
    model = _model(arch)
    ids, mask = _prompt(batch=2, length=20, pad=(0, 3))
    ref = _generate(model, ids, mask, n=10, cache_implementation="static")
    patch_model(model, strict=True)
    appends = []
    real = L.ops.append_kv_
    monkeypatch.setattr(L.ops, "append_kv_", lambda k, *a: appends.append(k.shape[1]) or real(k, *a))
    assert torch.equal(_generate(model, ids, mask, n=10, cache_implementation="static"), ref)
    if arch == "opt":
        assert appends and set(appends) == {1}  # decode steps only
    full, _ = _prompt(batch=1, length=40)
    stock = _logits(_unpatched(model), full)
    cache = StaticCache(config=model.config, max_cache_len=48)
    with torch.no_grad():
        first = model(input_ids=full[:, :20], past_key_values=cache).logits
        second = model(input_ids=full[:, 20:], past_key_values=cache).logits
        torch.testing.assert_close(torch.cat([first, second], 1), stock, atol=1e-4, rtol=1e-4)
        if arch != "opt":  # (on the CPU, Llama's RoPE and so its cache update stay stock)
            return
        counters = [layer.cumulative_length.clone() for layer in cache.layers]
        with pytest.raises(ValueError, match="static cache holds 48 positions, but this forward needs 57"):
            model(input_ids=full[:, :17], past_key_values=cache)
    assert all(torch.equal(layer.cumulative_length, c) for layer, c in zip(cache.layers, counters))


def test_static_cache_prefill_reads_the_length_once_per_forward(monkeypatch):
    """A prefill over a StaticCache reads the cache length from the device at its first layer only
    (every read is a host sync that idles the GPU); chunked prefills give the stock logits."""
    from transformers import StaticCache

    model = _model("llama")
    model.config.num_hidden_layers = 4
    model = AutoModelForCausalLM.from_config(model.config).eval()
    ids, _ = _prompt(batch=1, length=40)
    stock = _logits(model, ids)
    patch_model(model)
    reads = []
    to_int = torch.Tensor.__int__

    def counting_int(t):
        reads.append(__import__("sys")._getframe(1).f_code.co_filename)
        return to_int(t)

    monkeypatch.setattr(torch.Tensor, "__int__", counting_int)
    cache = StaticCache(config=model.config, max_cache_len=64)
    with torch.no_grad():
        first = model(input_ids=ids[:, :20], past_key_values=cache).logits
        second = model(input_ids=ids[:, 20:], past_key_values=cache).logits
    assert sum(f.endswith("layers.py") for f in reads) == 2  # one per forward, not one per layer
    torch.testing.assert_close(torch.cat([first, second], 1), stock, atol=1e-4, rtol=1e-4)


def test_runtime_prefill_len_reuses_the_first_layers_read():
    class Counter:
        reads = 0

        def __int__(self):
            Counter.reads += 1
            return 7

    rt, cache, other = L.Runtime(), object(), object()
    assert [rt.prefill_len(cache, i, Counter(), 3) for i in range(3)] == [7, 7, 7] and Counter.reads == 1
    rt.prefill_len(cache, 0, Counter(), 3)  # a new forward starts at layer 0 again
    rt.prefill_len(other, 1, Counter(), 3)  # another cache
    rt.prefill_len(other, 1, Counter(), 3)  # the same layer twice: not one forward
    assert Counter.reads == 4


def test_runtime_prefill_lengths_of_a_fresh_engine_cache_are_not_read():
    """A cache whose length the host knows (the engine's fresh cache: known_length 0) is never read."""
    class Fresh:
        known_length = 0

    class Counter:
        def __int__(self):
            raise AssertionError("read the device counter")

    rt = L.Runtime()
    assert rt.prefill_start(Fresh(), 0, Counter()) == 0 and rt.prefill_len(Fresh(), 0, Counter(), 5) == 5


def test_runtime_full_mask_reads_each_mask_once():
    class Mask:
        reads = 0

        def __init__(self, value):
            self.value = value

        def all(self):
            Mask.reads += 1
            return self.value

    rt, full, padded = L.Runtime(), Mask(True), Mask(False)
    assert [rt.full_mask(full) for _ in range(4)] == [True] * 4 and Mask.reads == 1  # one forward, 4 layers
    assert not rt.full_mask(padded) and rt.full_mask(full) and Mask.reads == 3  # a new mask object: read again


@pytest.mark.parametrize("arch", ["llama", "glm4", "opt"])
def test_host_bound_paths_give_the_stock_tokens(monkeypatch, arch):
    """The eager CUDA path's host-time choices (aten linear without an activation, aten LayerNorm,
    SDPA for an unpadded decode over a DynamicCache, no mask for an unpadded prompt), forced on
    here on CPU: stock tokens; a left-padded batch keeps its mask."""
    monkeypatch.setattr(L, "host_bound", lambda x: True)
    model = _model(arch)
    ids = torch.randint(1, 500, (1, 20))  # > 16 tokens: the prefill kernel's path
    ref = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    patch_model(model, strict=True)
    calls = []
    real = L.ops.prefill_attention
    monkeypatch.setattr(L.ops, "prefill_attention",
                        lambda *a, **k: calls.append((a[0].shape[1], k.get("kv_mask") is None)) or real(*a, **k))
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert torch.equal(out, ref)
    assert calls.count((1, True)) == 11 * 2  # every decode step of both layers: the SDPA branch
    assert calls.count((20, True)) == 2  # the unpadded prompt: no mask
    unpatch_model(model)
    ids2, mask2 = _prompt(batch=2, length=20, pad=(0, 3))
    ref2 = model.generate(input_ids=ids2, attention_mask=mask2, max_new_tokens=6, do_sample=False)
    patch_model(model, strict=True)
    calls.clear()
    out2 = model.generate(input_ids=ids2, attention_mask=mask2, max_new_tokens=6, do_sample=False)
    assert torch.equal(out2, ref2)
    assert calls and not any(no_mask for S, no_mask in calls if S > 1)  # padded prompt: its mask is kept


def test_sampling_and_inference_mode():
    model = _model("glm4")
    ids, mask = _prompt(batch=2)
    torch.manual_seed(5)
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=True, top_k=50)
    patch_model(model)
    torch.manual_seed(5)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=True, top_k=50)
    assert torch.equal(out, ref)
    unpatch_model(model)  # weights were re-viewed under inference_mode: they must still work for autograd
    model.train()
    model(input_ids=ids).logits.sum().backward()


def test_unpatching_a_deepcopy_leaves_the_original_patched():
    """A deepcopy of a patched model is patched on its own modules: unpatching the copy restores
    the copy only (the undo records name the copy's modules, not the original's)."""
    from autoglm_kernels.patch import state_of

    model = _model("opt")
    ids, _ = _prompt()
    ref = _logits(model, ids)
    patch_model(model, strict=True)
    layer = model.model.decoder.layers[0]
    copy_ = copy.deepcopy(model)
    assert unpatch_model(copy_)
    assert "forward" in layer.__dict__ and state_of(model) is not None  # the original is still patched
    assert "forward" not in copy_.model.decoder.layers[0].__dict__
    torch.testing.assert_close(_logits(copy_, ids), ref, rtol=0, atol=1e-4)
    torch.testing.assert_close(_logits(model, ids), ref, rtol=0, atol=1e-4)
    assert unpatch_model(model) and "forward" not in layer.__dict__


def test_idempotent_and_per_instance():
    torch.manual_seed(0)
    cfg = _config("llama")
    a, b = transformers.LlamaForCausalLM(cfg).eval(), transformers.LlamaForCausalLM(cfg).eval()  # one config object
    assert a.config is b.config
    ids, _ = _prompt()
    ref_b = _logits(b, ids)
    report = patch_model(a)
    assert patch_model(a) is report  # second patch: no-op, same report
    assert state_of(a) is not None and state_of(b) is None
    assert a.config is not b.config and a.config._attn_implementation == "autoglm"
    assert b.config._attn_implementation != "autoglm"
    assert "forward" in a.model.layers[0].__dict__ and "forward" not in b.model.layers[0].__dict__
    assert report.num_patched("rotary_emb") == 1 and "forward" in a.model.rotary_emb.__dict__
    assert torch.equal(_logits(b, ids), ref_b)
    c = transformers.LlamaForCausalLM(cfg).eval()  # created after patching: stock
    assert "forward" not in c.model.layers[0].self_attn.__dict__ and c.config._attn_implementation != "autoglm"
    # q/k/v and gate/up share one stacked tensor each (no doubled memory), the keys stay the originals
    attn, mlp = a.model.layers[0].self_attn, a.model.layers[0].mlp
    assert attn.q_proj.weight.untyped_storage().data_ptr() == attn.v_proj.weight.untyped_storage().data_ptr()
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()
    assert set(a.state_dict()) == set(b.state_dict())
    assert unpatch_model(a) and not unpatch_model(a)
    assert a.config is b.config
    assert attn.q_proj.weight.untyped_storage().data_ptr() != attn.v_proj.weight.untyped_storage().data_ptr()
    for m in a.modules():
        assert "forward" not in m.__dict__ and "_autoglm" not in m.__dict__


def test_report_and_options():
    model = _model("llama")
    report = patch_model(model, attention=False, norm=False)
    text = str(report)
    assert isinstance(report, PatchReport)
    assert "attention" in text and "attention=False" in text and "norm=False" in text
    assert report.num_patched("attention") == 0 and report.num_stock("attention") == 2
    assert report.num_patched("mlp") == 2 and report.num_patched("lm_head") == 1
    assert report.num_patched("decoder_layer") == 0 and "forward" not in model.model.layers[0].__dict__
    assert report.num_patched("rotary_emb") == 0 and "attention not fused" in report.reasons("rotary_emb")
    ids, mask = _prompt()
    out = _generate(model, ids, mask, n=8)
    unpatch_model(model)
    assert torch.equal(out, _generate(model, ids, mask, n=8))

    report = patch_model(model, rope=False)  # fused attention with the stock RoPE
    assert report.num_patched("attention") == 2 and "rope=False" in str(report)
    assert torch.equal(_generate(model, ids, mask, n=8), out)
    unpatch_model(model)

    report = patch_model(model, norm=False, mlp=False)  # fused attention called by the stock decoder layer
    assert report.num_patched("attention") == 2 and report.num_patched("decoder_layer") == 0
    assert "forward" not in model.model.layers[0].__dict__ and "forward" in model.model.layers[0].self_attn.__dict__
    assert torch.equal(_generate(model, ids, mask, n=8), out)


def test_memory_pool_needs_cuda_and_engine_options_are_kept():
    model = _model("opt")
    report = patch_model(model, memory_pool=True, max_batch=4)
    assert "memory_pool" in str(report) and "CUDA" in str(report) and report.num_patched("mlp") == 2
    assert state_of(model).engine_options == {"max_batch": 4} and state_of(model).memory_pool is None
    assert "generate" not in model.__dict__
    unpatch_model(model)
    with pytest.raises(ValueError, match="memory pool"):
        patch_model(model, memory_pool=True, strict=True)


def test_head_dim_not_supported_is_reported_and_strict_raises():
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(reference_config("glm4-9b", tiny=True)).eval()  # head_dim 32
    ids, mask = _prompt()
    ref = _generate(model, ids, mask, n=8)
    with pytest.raises(ValueError, match="head_dim 32"):
        patch_model(model, strict=True)
    assert state_of(model) is None and "forward" not in model.model.layers[0].__dict__  # strict touched nothing
    report = patch_model(model)
    assert report.num_stock("attention") == 2 and "head_dim 32" in str(report)
    assert report.num_patched("decoder_layer") == 2 and report.num_patched("mlp") == 2
    assert torch.equal(_generate(model, ids, mask, n=8), ref)


def test_unsupported_architecture():
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=100)).eval()
    ids = torch.randint(0, 100, (1, 5))
    ref = _logits(model, ids)
    report = patch_model(model)
    assert not report.supported and "'gpt2' is not supported" in str(report)
    assert torch.equal(_logits(model, ids), ref)
    unpatch_model(model)
    with pytest.raises(ValueError, match="not supported"):
        patch_model(model, strict=True)


def test_unsupported_dtype_left_stock():
    model = _model("llama").to(torch.float64)
    report = patch_model(model)
    assert not report.supported and "float64" in str(report)
    with pytest.raises(ValueError, match="float64"):
        patch_model(_model("llama").to(torch.float64), strict=True)


def test_training_through_patched_model_raises():
    model = _model("opt")
    patch_model(model)
    ids, _ = _prompt()
    model.train()
    with pytest.raises(RuntimeError, match="unpatch_model"):
        model(input_ids=ids)
    with torch.no_grad():
        model(input_ids=ids)  # no grad: fine even in train mode
    unpatch_model(model)
    model(input_ids=ids).logits.sum().backward()


def test_save_pretrained_writes_stock_checkpoint(tmp_path):
    model = _model("llama")
    sd = _sd(model)
    patch_model(model)
    model.save_pretrained(tmp_path)
    assert "autoglm" not in (tmp_path / "config.json").read_text()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    _assert_same_sd(sd, _sd(reloaded))
    assert state_of(reloaded) is None


def test_weights_replaced_after_patching_are_picked_up():
    """load_state_dict(assign=True) gives the Linears new storage: the stacked q/k/v and gate/up follow."""
    model, other = _model("qwen3", seed=0), _model("qwen3", seed=1)
    ids, _ = _prompt()
    ref = _logits(other, ids)
    patch_model(model)
    model.load_state_dict(other.state_dict(), assign=True)
    torch.testing.assert_close(_logits(model, ids), ref, rtol=0, atol=1e-4)


def test_hidden_states_output_matches_stock():
    model = _model("glm4")
    ids, _ = _prompt()
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states
        patch_model(model)
        out = model(input_ids=ids, output_hidden_states=True).hidden_states
    assert len(out) == len(ref)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_attention_and_mask_interface():
    """The registered "autoglm" entries: the attention matches SDPA; the mask is the 2-D padding mask."""
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function

    L.register_attention()
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 64), torch.randn(2, 2, 5, 64), torch.randn(2, 2, 5, 64)
    module = torch.nn.Module().eval()
    out, weights = L.attention_interface(module, q, k, v, None, scaling=0.125)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.125, enable_gqa=True)
    assert weights is None
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=0, atol=1e-5)

    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert L.mask_interface(2, 5, 5, mask_function=causal_mask_function, attention_mask=mask) is mask
    assert L.mask_interface(2, 5, 5, mask_function=causal_mask_function, attention_mask=None) is None
    with pytest.raises(NotImplementedError, match="unpatch_model"):
        L.mask_interface(2, 5, 5, mask_function=sliding_window_causal_mask_function(4), attention_mask=mask)
    with pytest.raises(ValueError, match="2-D padding mask"):
        L.attention_interface(module, q, k, v, torch.zeros(2, 1, 5, 5), scaling=0.125)


def test_arch_table_covers_the_supported_architectures():
    assert set(ARCH_NAMES) <= set(ARCHS)


def test_real_checkpoint_path(tmp_path):
    """save_pretrained + a trained sentencepiece tokenizer, reloaded through the Auto classes, patched, generating."""
    demo_model = pytest.importorskip("autoglm_kernels.demo_model")
    from transformers import AutoTokenizer

    path = demo_model.build_checkpoint(tmp_path / "ckpt", "glm4")
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    enc = tok(["the model reads the screen", "tap"], return_tensors="pt", padding=True)
    ref = _generate(model, enc.input_ids, enc.attention_mask, n=10)
    report = patch_model(model)
    assert report.supported, str(report)
    out = _generate(model, enc.input_ids, enc.attention_mask, n=10)
    assert torch.equal(out, ref)
    assert isinstance(tok.batch_decode(out, skip_special_tokens=True)[0], str)


def test_tensor_parallel_model_stays_stock_with_a_reason():
    """A tensor-parallel model (tp_plan shards) is left stock with a clear reason: the fused
    q/k/v and gate/up stacks assume whole weights, so patching shards would give wrong answers."""
    import transformers

    from autoglm_kernels.models import reference_config

    model = transformers.AutoModelForCausalLM.from_config(reference_config("llama3.2-1b", tiny=True)).eval()
    model._tp_size = 2  # what transformers records for tp_plan="auto" under torchrun
    ids = torch.randint(1, 500, (1, 6))
    ref = model(input_ids=ids).logits
    report = patch_model(model)
    assert not report.supported  # nothing patched
    assert "tensor-parallel" in str(report)
    torch.testing.assert_close(model(input_ids=ids).logits, ref, rtol=0, atol=0)
    unpatch_model(model)
    with pytest.raises(ValueError, match="tensor-parallel"):
        patch_model(model, strict=True)


def test_device_map_dispatched_model_is_patched_behind_its_hooks():
    """A model that accelerate dispatched (device_map: modules carry `_hf_hook`s that move the
    activations to each module's device) is patched behind the hooks: the fused forwards replace
    the `_old_forward` the hook calls, so the hooks still run; unpatch puts the originals back.
    Offloading hooks (weights loaded by the hook) stay stock with a reason."""
    accelerate = pytest.importorskip("accelerate")

    model = _model("llama")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    model = accelerate.dispatch_model(model, device_map=device_map, force_hooks=True)
    layer = model.model.layers[0]
    hooked, old = layer.forward, layer._old_forward
    ids = torch.randint(1, 500, (1, 6))
    ref = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False)
    calls = []
    pre = layer._hf_hook.pre_forward
    layer._hf_hook.pre_forward = lambda *a, **k: calls.append(1) or pre(*a, **k)
    report = patch_model(model)
    assert report.num_patched("decoder_layer") == 2 and report.num_patched("attention") == 2, str(report)
    assert layer.forward is hooked and layer._old_forward.__func__ is L.decoder_layer_forward
    torch.testing.assert_close(model.generate(input_ids=ids, max_new_tokens=6, do_sample=False), ref, rtol=0, atol=0)
    assert calls  # the hook still ran in front of the fused layer
    unpatch_model(model)
    assert layer.forward is hooked and layer._old_forward == old


def test_offloading_hooks_stay_stock_with_a_reason():
    pytest.importorskip("accelerate")
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    model = _model("llama")
    add_hook_to_module(model.model.layers[0], AlignDevicesHook(execution_device="cpu", offload=True,
                                                                 weights_map={}))
    report = patch_model(model)
    assert not report.supported and "offloaded weights" in str(report)
    unpatch_model(model)




def test_decode_steps_fold_norms_into_the_projections(monkeypatch):
    """Pre-norm RMSNorm layers (Llama, Qwen) run a decode step's input norm and residual adds
    inside their projections and the post-attention norm with o_proj (ops.linear_add_rms_norm, once
    per layer) (LayerCtx.fold; on CPU the reference op stands in for the GEMV); GLM-4's
    sandwich norms and OPT's LayerNorm keep the add+norm kernels. The folded step gives the
    unfolded step's logits, and generate gives the stock tokens (test_patched_generate_matches_stock)."""
    for arch, folds in (("llama", True), ("qwen3", True), ("glm4", False), ("opt", False)):
        model = _model(arch)
        report = patch_model(model, strict=True)
        layers = state_of(model).layers
        assert all(layer._autoglm.fold is folds for layer in layers), arch
        assert any("inside the qkv GEMV" in n for n in report.notes) is folds, arch
    model = _model("llama")
    ids, mask = _prompt()
    patch_model(model)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        step = dict(input_ids=out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values,
                    attention_mask=torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1))
        cache = copy.deepcopy(out.past_key_values)
        calls, real = [], ops.linear_add_rms_norm
        monkeypatch.setattr(ops, "linear_add_rms_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
        folded = model(**step).logits
        assert len(calls) == len(state_of(model).layers)
        for layer in state_of(model).layers:
            layer._autoglm.fold = False
        step["past_key_values"] = cache
        unfolded = model(**step).logits
    torch.testing.assert_close(folded, unfolded, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "glm4", "qwen3", "mistral", "glm", "glm4v", "opt"])
def test_rotary_embedding_patched_only_where_standard(arch):
    """rotary_emb (ops.rope_tables in captured steps) is patched for the standard modules, left stock
    with a reason for frequencies recomputed per forward (dynamic RoPE), absent without one."""
    model = _model(arch)
    report = patch_model(model, cuda_graphs=False)
    if arch in ("glm4v", "opt"):  # M-RoPE (position streams) / no RoPE: no row
        assert report.num_patched("rotary_emb") == 0 and report.num_stock("rotary_emb") == 0
    else:
        assert report.num_patched("rotary_emb") == 1 and "forward" in model.model.rotary_emb.__dict__
    unpatch_model(model)
    if arch == "llama":
        model.model.rotary_emb.rope_type = "dynamic"
        report = patch_model(model, cuda_graphs=False)
        assert report.num_patched("rotary_emb") == 0
        assert any("recomputes its frequencies" in r for r in report.reasons("rotary_emb"))
        assert "forward" not in model.model.rotary_emb.__dict__
        unpatch_model(model)
