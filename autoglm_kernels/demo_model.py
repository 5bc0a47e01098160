"""Random-weight models for the demo, the tests and the benchmarks (no download anywhere).

- `build_checkpoint(directory, arch)`: a small model of a real architecture plus a sentencepiece
  tokenizer trained on the bundled corpus (autoglm_kernels/data/corpus.txt), saved with
  save_pretrained so the real loading code (AutoTokenizer / AutoModelForCausalLM.from_pretrained)
  loads it. Built checkpoints are cached.
- `random_model(name, ...)`: an in-memory model of a reference shape (models.REFERENCE_MODELS)
  built straight on the target device without the slow default init, then filled with small
  random values in place (a 9B model in seconds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .models import REFERENCE_MODELS, reference_config

CORPUS = Path(__file__).parent / "data" / "corpus.txt"
_FORMAT = 2  # bump when the checkpoint layout changes: invalidates cached checkpoints
_MARKER = "autoglm_demo.json"

# Short architecture names -> the reference model whose (shrunk) config they use.
ARCHS = {"glm4": "glm4-9b", "llama": "llama3.2-1b", "opt": "opt-1.3b"}

# tiny=False: the demo size, a bit wider and deeper than the test size, still a few MB and CPU-fast.
_DEMO = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
             intermediate_size=704, vocab_size=1024)
_DEMO_OPT = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, ffn_dim=704, vocab_size=1024,
                 word_embed_proj_dim=256)


def _reference_name(arch: str) -> str:
    name = ARCHS.get(arch, arch)
    if name not in REFERENCE_MODELS:
        raise ValueError(f"unknown arch {arch!r}; choose one of: {', '.join(list(ARCHS) + list(REFERENCE_MODELS))}")
    return name


def demo_config(arch: str = "glm4", *, tiny: bool = True):
    """The transformers config of the demo model of `arch` (before the vocab is fitted to the tokenizer).

    tiny=True: models.reference_config(name, tiny=True) (hidden 128, 2 layers: the test size);
    tiny=False: hidden 256, 4 layers (the `autoglm-kernels demo` default).
    """
    cfg = reference_config(_reference_name(arch), tiny=True)
    if not tiny:
        for k, v in (_DEMO_OPT if cfg.model_type == "opt" else _DEMO).items():
            setattr(cfg, k, v)
    return cfg


def cache_root() -> Path:
    """Where built checkpoints are cached: $AUTOGLM_KERNELS_CACHE or ~/.cache/autoglm_kernels."""
    env = os.environ.get("AUTOGLM_KERNELS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autoglm_kernels"


def _key(arch: str, tiny: bool, seed: int) -> str:
    import transformers

    h = hashlib.sha256()
    for part in (str(_FORMAT), _reference_name(arch), str(tiny), str(seed), transformers.__version__):
        h.update(part.encode() + b"\0")
    h.update(CORPUS.read_bytes())
    return h.hexdigest()[:12]


def _is_built(directory: Path, key: str) -> bool:
    try:
        return json.loads((directory / _MARKER).read_text()).get("key") == key
    except (OSError, ValueError):
        return False


def _train_tokenizer(directory: Path, vocab_size: int):
    """Train a byte-fallback BPE sentencepiece model on the bundled corpus; save it as a LlamaTokenizer.

    The saved tokenizer.json loads through AutoTokenizer without sentencepiece; building it needs
    sentencepiece and protobuf (transformers converts the .model file through protobuf).
    """
    try:
        import google.protobuf  # noqa: F401
        import sentencepiece as spm
    except ImportError as e:
        raise RuntimeError(f"building the demo tokenizer needs sentencepiece and protobuf ({e}); "
                           "pip install sentencepiece protobuf") from e
    from transformers import LlamaTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        model_file = Path(tmp) / "tokenizer.model"
        spm.SentencePieceTrainer.train(
            input=str(CORPUS), model_prefix=str(model_file.with_suffix("")), vocab_size=vocab_size,
            model_type="bpe", byte_fallback=True, character_coverage=1.0, split_digits=True,
            # identity normalization: text round-trips exactly (no NFKC, no whitespace folding)
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False, num_threads=1, minloglevel=2,
        )
        (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer"}))
        tokenizer = LlamaTokenizer.from_pretrained(tmp)
        tokenizer.save_pretrained(directory)
        shutil.copy(model_file, directory / "tokenizer.model")  # the trained sentencepiece model, for reference
    probe = "Decode reads every weight once."
    ids = tokenizer.encode(probe, add_special_tokens=False)
    if not ids or tokenizer.decode(ids) != probe:
        raise RuntimeError(f"the trained tokenizer does not round-trip text (ids {ids}); is protobuf installed?")
    return tokenizer


def _build(directory: Path, arch: str, tiny: bool, seed: int, key: str) -> None:
    from transformers import AutoModelForCausalLM

    cfg = demo_config(arch, tiny=tiny)
    tokenizer = _train_tokenizer(directory, cfg.vocab_size)
    cfg.vocab_size = len(tokenizer)
    cfg.bos_token_id, cfg.pad_token_id = tokenizer.bos_token_id, tokenizer.unk_token_id
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.save_pretrained(directory)
    (directory / _MARKER).write_text(json.dumps({"key": key, "arch": arch, "tiny": tiny, "seed": seed}))


def build_checkpoint(directory=None, arch: str = "glm4", *, tiny: bool = True, seed: int = 0) -> Path:
    """Build (or reuse) a random-weight checkpoint of `arch` ("glm4", "llama", "opt" or a
    models.REFERENCE_MODELS name) with a trained sentencepiece tokenizer; return its directory.

    directory=None caches it under cache_root()/demo-<arch>-<hash>; a given directory is reused
    when it already holds the same build (same arch, size, seed, corpus, transformers version).
    """
    key = _key(arch, tiny, seed)
    if directory is not None:
        directory = Path(directory)
        if not _is_built(directory, key):
            directory.mkdir(parents=True, exist_ok=True)
            _build(directory, arch, tiny, seed, key)
        return directory
    target = cache_root() / f"demo-{arch}-{key}"
    if _is_built(target, key):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".demo-{arch}-", dir=target.parent))
    try:
        _build(tmp, arch, tiny, seed, key)
        if target.exists():  # a stale or half-written build: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            if not _is_built(target, key):  # not a concurrent builder finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# in-memory reference-shape models for the benchmarks
# ---------------------------------------------------------------------------------------------
def _no_init_weights():
    """transformers' context that skips weight init (its module moved in 5.x); a no-op if absent."""
    for mod in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return __import__(mod, fromlist=["no_init_weights"]).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


@torch.no_grad()
def fill_random_(model: torch.nn.Module, seed: int = 0, std: float = 0.02) -> torch.nn.Module:
    """Overwrite every parameter in place: matrices ~ N(0, std), 1-D weights (norm scales) 1, biases 0."""
    gen_device = next(model.parameters()).device
    g = torch.Generator(device=gen_device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            p.normal_(0.0, std, generator=g)
        elif name.endswith("bias"):
            p.zero_()
        else:
            p.fill_(1.0)
    return model


def random_model(name: str, *, dtype=torch.bfloat16, device="cuda", num_layers: int | None = None,
                 tiny: bool = False, seed: int = 0):
    """AutoModelForCausalLM of reference model `name` with random weights, built on `device` in `dtype`.

    Weight init is skipped (transformers' no_init_weights) and replaced by fill_random_, so a 9B
    model takes seconds on a GPU. `num_layers` shrinks the depth (quick runs), `tiny` the whole model.
    autoglm-phone-9b (a GLM-4.1V text config) becomes a Glm4vForConditionalGeneration around that
    text decoder with a one-block vision tower: the reference for text decoding, not for images.
    """
    import transformers
    from transformers import AutoModelForCausalLM

    cfg = reference_config(name, tiny=tiny, num_layers=num_layers)
    with _no_init_weights(), torch.device(device):
        if cfg.model_type == "glm4v_text":
            vision = dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=cfg.hidden_size)
            full = transformers.Glm4vConfig(text_config=cfg.to_dict(), vision_config=vision)
            model = transformers.Glm4vForConditionalGeneration._from_config(full, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.tie_weights()  # no_init_weights also skips tying
    fill_random_(model, seed)
    return model.eval()
