"""autoglm_kernels.demo_model: random-weight checkpoints with a trained sentencepiece tokenizer that
load through the real transformers code, and fast reference-shape models for the benchmarks."""

import json

import pytest
import torch

from autoglm_kernels import demo_model
from autoglm_kernels.demo_model import build_checkpoint, demo_config, fill_random_, random_model

# Text the tokenizer must give back exactly: punctuation, digits, runs of spaces, a newline, and
# characters outside the corpus (spelled with byte-fallback tokens).
TEXTS = [
    "A decode step reads every weight once.",
    "Bandwidth: 3350 GB/s, batch=1;  two  spaces\nand a second line",
    "Grüße, 漢字 and an emoji 🚀 are spelled as bytes",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AUTOGLM_KERNELS_CACHE", str(tmp_path_factory.getbasetemp() / "ckpt-cache"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return {arch: build_checkpoint(root / arch, arch) for arch in ("glm4", "llama", "opt")}


@pytest.mark.parametrize("arch,model_type", [("glm4", "glm4"), ("llama", "llama"), ("opt", "opt")])
def test_checkpoint_loads_through_auto_classes(checkpoints, arch, model_type):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = checkpoints[arch]
    assert (path / "tokenizer.model").is_file() and (path / "config.json").is_file()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == model_type
    assert model.config.vocab_size == len(tok) == model.get_input_embeddings().weight.shape[0]
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == "LlamaTokenizer"
    for text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids, f"{text!r} encoded to no ids (protobuf missing?)"
        assert max(ids) < model.config.vocab_size
        assert tok.decode(ids) == text


@pytest.mark.parametrize("arch", ["glm4", "llama", "opt"])
def test_checkpoint_generates(checkpoints, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoints[arch])
    model = AutoModelForCausalLM.from_pretrained(checkpoints[arch]).eval()
    inputs = tok("The GPU reads weights", return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    out = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert out.shape == (1, n + 5)
    assert torch.equal(out[0, :n], inputs["input_ids"][0])
    assert int(out.max()) < model.config.vocab_size
    # greedy decoding of a fixed checkpoint is deterministic
    again = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(out, again)


def test_cache_reuses_and_keys_by_seed(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOGLM_KERNELS_CACHE", str(tmp_path))
    first = build_checkpoint(None, "llama")
    assert first.parent == tmp_path and first.name.startswith("demo-llama-")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert build_checkpoint(None, "llama") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    other = build_checkpoint(None, "llama", seed=1)
    assert other != first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary build folders left


def test_same_seed_same_weights(tmp_path):
    from safetensors.torch import load_file

    a = load_file(build_checkpoint(tmp_path / "a", "opt", seed=3) / "model.safetensors")
    b = load_file(build_checkpoint(tmp_path / "b", "opt", seed=3) / "model.safetensors")
    c = load_file(build_checkpoint(tmp_path / "c", "opt", seed=4) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_directory_rebuilt_when_stale(tmp_path):
    path = build_checkpoint(tmp_path / "m", "glm4")
    (path / demo_model._MARKER).write_text(json.dumps({"key": "stale"}))
    assert build_checkpoint(path, "glm4") == path
    assert json.loads((path / demo_model._MARKER).read_text())["key"] != "stale"


def test_demo_size_and_errors():
    cfg = demo_config("glm4", tiny=False)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.model_type) == (256, 4, "glm4")
    assert demo_config("opt", tiny=True).hidden_size == 128
    with pytest.raises(ValueError, match="unknown arch 'gpt5'.*glm4"):
        build_checkpoint(None, "gpt5")


def test_random_model_fills_weights_and_ties():
    llama = random_model("llama3.2-1b", tiny=True, device="cpu", dtype=torch.float32)
    assert llama.lm_head.weight is llama.model.embed_tokens.weight  # tie_word_embeddings=True kept
    w = llama.model.layers[0].self_attn.q_proj.weight
    assert torch.isfinite(w).all() and 0.01 < float(w.detach().std()) < 0.03
    assert torch.equal(llama.model.norm.weight, torch.ones_like(llama.model.norm.weight))
    glm = random_model("glm4-9b", tiny=True, num_layers=1, device="cpu", dtype=torch.bfloat16)
    assert glm.dtype == torch.bfloat16 and len(glm.model.layers) == 1
    bias = glm.model.layers[0].self_attn.q_proj.bias
    assert bias is not None and not bias.any()
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.isfinite(glm(ids).logits.float()).all()


def test_fill_random_is_seeded():
    a = fill_random_(torch.nn.Linear(8, 8), seed=1).weight.clone()
    b = fill_random_(torch.nn.Linear(8, 8), seed=1).weight
    assert torch.equal(a, b)
