"""`autoglm-kernels demo`: load a checkpoint the real way (AutoTokenizer / AutoModelForCausalLM),
generate stock, patch, generate again; print both texts, tokens/s and whether the token ids agree.

With no --model it builds (once, then cached) a small random-weight GLM-4 checkpoint with a
sentencepiece tokenizer trained on the bundled corpus (autoglm_kernels.demo_model).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import CLIError

DEFAULT_PROMPT = "A decode step reads every weight of the model once, so"
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse turns the ValueError into a one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser) -> None:
    parser.add_argument("--model", metavar="PATH", help="local checkpoint directory (default: the built-in demo model)")
    parser.add_argument("--arch", default="glm4", choices=("glm4", "llama", "opt"),
                        help="architecture of the built-in demo model (default glm4; ignored with --model)")
    parser.add_argument("--tiny", action="store_true", help="use the smallest built-in model (hidden 128, 2 layers)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=positive_int, default=32, metavar="N",
                        help="tokens to generate, EOS ignored (default 32)")
    parser.add_argument("--dtype", default="auto", choices=("auto",) + tuple(DTYPES),
                        help="auto: bfloat16 on a GPU, float32 on CPU")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--cuda-graphs", default=None, action=argparse.BooleanOptionalAction,
                        help="pass cuda_graphs=True/False to patch_model (default: patch_model's default)")


def resolve_device_dtype(device: str, dtype: str):
    """(torch.device, torch.dtype, note) from the --device/--dtype options; CLIError when impossible."""
    import torch

    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        raise CLIError("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False); use --device cpu")
    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and has_cuda) else "cpu")
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        dt = getattr(torch, DTYPES[dtype])
    note = ""
    if dev.type == "cpu":
        why = "no CUDA GPU is visible" if not has_cuda else "--device cpu was asked for"
        note = (f"running the CPU path ({why}): the patched model uses the plain-PyTorch reference kernels "
                f"in {str(dt).replace('torch.', '')}; tokens/s here say nothing about GPU speed")
    return dev, dt, note


def check_model_dir(path: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise CLIError(f"--model {path}: no such directory")
    if not p.is_dir() or not (p / "config.json").is_file():
        raise CLIError(f"--model {path}: not a checkpoint directory (expected a config.json inside)")
    return p


def first_divergence(a, b) -> int | None:
    """Index of the first position where two id sequences (lists, or 1-D tensors: compared on
    the host) differ; None when identical."""
    a, b = (v.tolist() if hasattr(v, "tolist") else list(v) for v in (a, b))
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _generate(model, inputs, n: int, pad_id: int) -> tuple[list[int], float]:
    """Greedy-generate exactly n tokens (EOS cannot stop it early); return the new ids and seconds."""
    import torch

    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id)
    sync()
    elapsed = time.perf_counter() - start
    return out[0, inputs["input_ids"].shape[1]:].tolist(), elapsed


def run(args) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype, note = resolve_device_dtype(args.device, args.dtype)
    path = check_model_dir(args.model) if args.model else None
    try:
        from autoglm_kernels.patch import patch_model
    except ImportError as e:
        raise CLIError(f"patching is not available in this install: {e}") from None
    if path is None:
        from autoglm_kernels.demo_model import build_checkpoint

        print(f"building (or loading from cache) the demo {args.arch} checkpoint ...", flush=True)
        path = build_checkpoint(None, args.arch, tiny=args.tiny)
    if note:
        print(note)

    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot load {path}: {str(e).splitlines()[0]}") from None
    model = model.to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {path} ({model.config.model_type}, {n_params / 1e6:.1f}M params, {str(dtype).replace('torch.', '')}"
          f" on {device})")

    inputs = tokenizer(args.prompt, return_tensors="pt").to(device)
    if inputs["input_ids"].shape[1] == 0:
        raise CLIError("the prompt encodes to no tokens; pass a non-empty --prompt")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    n = args.max_new_tokens

    # Each path runs once untimed first (Triton compilation, cuBLAS handles, graph capture).
    with torch.inference_mode():
        _generate(model, inputs, n, pad_id)
        stock_ids, stock_s = _generate(model, inputs, n, pad_id)
        kwargs = {} if args.cuda_graphs is None else {"cuda_graphs": args.cuda_graphs}
        print(patch_model(model, **kwargs))
        _generate(model, inputs, n, pad_id)
        fused_ids, fused_s = _generate(model, inputs, n, pad_id)

    print(f"\nprompt : {args.prompt!r}")
    print(f"stock  : {tokenizer.decode(stock_ids, skip_special_tokens=True)!r}")
    print(f"patched: {tokenizer.decode(fused_ids, skip_special_tokens=True)!r}")
    print(f"\nstock   {n / stock_s:9.1f} tokens/s  ({1e3 * stock_s / n:.2f} ms/token, end to end)")
    print(f"patched {n / fused_s:9.1f} tokens/s  ({1e3 * fused_s / n:.2f} ms/token)  speedup {stock_s / fused_s:.2f}x")
    at = first_divergence(stock_ids, fused_ids)
    if at is None:
        print(f"outputs agree: all {n} token ids identical")
        return 0
    print(f"outputs differ: first divergence at new token {at} of {n} (stock id {stock_ids[at] if at < len(stock_ids) else '-'}"
          f", patched id {fused_ids[at] if at < len(fused_ids) else '-'})")
    if dtype == torch.float32:
        print("in float32 the patched model must reproduce the stock tokens exactly: failing (exit code 1)")
        return 1
    print(f"(expected now and then in {str(dtype).replace('torch.', '')}: rounding differences can flip a close greedy choice)")
    return 0
