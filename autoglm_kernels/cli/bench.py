"""`autoglm-kernels bench`: end-to-end `model.generate` speed, stock vs patched (vs transformers'
static cache + CUDA graph / torch.compile), on the reference shapes with random weights or on a
local checkpoint.

Per (model, mode): two warm-up generates (the first compiles/captures the decode step; the
engine captures a prompt's graph when its shape repeats, i.e. in the second), then --repeats timed
ones (median). Each generates exactly
--new-tokens tokens with EOS ignored (`eos_token_id=None`, as vLLM's `ignore_eos`; --stop-at-eos
keeps the EOS checks and forces the length with min_new_tokens instead, whose logits processor
adds kernels over the whole vocabulary to every step of every mode). TTFT is the time to the first new token
(prefill); decode tok/s = batch * (new_tokens - 1) / (total - TTFT). The bandwidth limit of one
decode step is (weight bytes read per step + mean KV-cache bytes read per step) / read bandwidth,
with the read bandwidth measured in the same run; "% of limit" = limit step time / measured step time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import functools
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import CLIError

MODES = ("stock", "graph-stock", "compile", "patched-eager", "patched")  # the order they run in (patched last: it mutates)
MODE_HELP = ("stock: transformers as is (sdpa, DynamicCache); graph-stock: stock modules under the package's decode "
             "engine (static cache, decode step replayed as one CUDA graph, no fused kernels); compile: "
             "cache_implementation='static' + torch.compile (inductor, reduce-overhead); patched-eager: the fused kernels "
             "without the engine (patch_model(model, cuda_graphs=False)); patched: patch_model(model) with default options")
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "float32": "float32", "fp32": "float32"}
# Reference models the benchmark builds (autoglm-phone-9b: the GLM-4.1V model around its text
# decoder, with a token vision tower; text prompts).
CAUSAL_LM_MODELS = ("llama3.2-1b", "llama3.1-8b", "glm4-9b", "opt-1.3b", "autoglm-phone-9b")
DEFAULT_MODELS = ("llama3.2-1b", "llama3.1-8b", "glm4-9b", "opt-1.3b")


def int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def add_model_arguments(parser, default_models: str) -> None:
    """Options shared with `profile`: which models, what shape of generate, which dtype/device."""
    parser.add_argument("--models", default=default_models,
                        help=f"comma list of reference models (random weights): {', '.join(CAUSAL_LM_MODELS)}"
                             f" (default {default_models})")
    parser.add_argument("--model", metavar="PATH", help="a local checkpoint directory instead of --models")
    parser.add_argument("--layers", type=int_at_least(1), metavar="N",
                        help="build the reference models with only N decoder layers (quick runs)")
    parser.add_argument("--tiny", action="store_true", help="tiny versions of the reference models (smoke runs)")
    parser.add_argument("--batch", type=int_at_least(1), default=1, metavar="N", help="sequences per generate (default 1)")
    parser.add_argument("--prompt-len", type=int_at_least(1), default=128, metavar="N",
                        help="prompt tokens (random ids; default 128)")
    parser.add_argument("--dtype", default="bfloat16", choices=tuple(DTYPES), help="default bfloat16")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                        help="cuda (default); cpu only for a slow smoke run of the command itself")


def add_arguments(parser) -> None:
    add_model_arguments(parser, default_models=",".join(DEFAULT_MODELS))
    parser.add_argument("--new-tokens", type=int_at_least(2), default=128, metavar="N",
                        help="tokens each generate produces, EOS ignored (default 128)")
    parser.add_argument("--modes", default="stock,patched", help=f"comma list of: {', '.join(MODES)}. {MODE_HELP}")
    parser.add_argument("--compile", action="store_true", help="also run the compile mode")
    add_eos_argument(parser)
    parser.add_argument("--repeats", type=int_at_least(1), default=3, metavar="N",
                        help="timed generates per mode after one warm-up; the median is reported (default 3)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON (autoglm-kernels report reads it)")
    parser.add_argument("--csv", metavar="PATH", help="write the results as CSV")


# ---------------------------------------------------------------------------------------------
# argument checks and model loading (shared with `profile`)
# ---------------------------------------------------------------------------------------------
def check_device(device: str, command: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"{command} needs a CUDA GPU and none is visible (torch.cuda.is_available() is False)")


def model_names(args) -> list[str]:
    """The models to run: [PATH] for --model, else the checked --models list."""
    if args.model:
        p = Path(args.model).expanduser()
        if not p.is_dir() or not (p / "config.json").is_file():
            raise CLIError(f"--model {args.model}: no checkpoint directory there (expected a config.json inside)")
        return [str(p)]
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise CLIError("--models is empty; give a comma list such as llama3.2-1b,glm4-9b")
    for n in names:
        if n not in CAUSAL_LM_MODELS:
            raise CLIError(f"--models: unknown or unsupported model {n!r}; choose from {', '.join(CAUSAL_LM_MODELS)}")
    return names


def load_model(name: str, args):
    """A model on args.device in args.dtype: from_pretrained for a path, else random_model for a reference name."""
    import torch

    dtype = getattr(torch, DTYPES[args.dtype])
    if Path(name).is_dir():
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
        except (OSError, ValueError) as e:
            raise CLIError(f"cannot load {name}: {str(e).splitlines()[0]}") from None
        return model.to(args.device).eval()
    from autoglm_kernels.demo_model import random_model

    return random_model(name, dtype=dtype, device=args.device, num_layers=args.layers, tiny=args.tiny)


class HostTimer:
    """Accumulates host seconds spent in `fn`; `.wrapper` has fn's signature (generate inspects it)."""

    def __init__(self, fn):
        self.fn, self.total, self.calls = fn, 0.0, 0
        self.first: tuple[float, float] | None = None  # perf_counter at entry and exit of the first call

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                end = time.perf_counter()
                self.total += end - t
                self.calls += 1
                if self.first is None:
                    self.first = (t, end)

        self.wrapper = wrapper

    def us(self) -> float | None:
        """Mean host microseconds per call."""
        return round(1e6 * self.total / self.calls, 1) if self.calls else None


@contextlib.contextmanager
def host_timers(model, *names: str):
    """{name: HostTimer} over the methods `names` of `model` while the block runs (instance
    attributes wrapping what `model.<name>` was); the instance's own attributes are put back after."""
    saved = {n: model.__dict__.get(n) for n in names}
    timers = {n: HostTimer(getattr(model, n)) for n in names}
    for n, timer in timers.items():
        model.__dict__[n] = timer.wrapper
    try:
        yield timers
    finally:
        for n, attr in saved.items():
            if attr is None:
                model.__dict__.pop(n, None)
            else:
                model.__dict__[n] = attr


def cprofile_listing(fn, *, sort: str = "tottime", lines: int = 40) -> str:
    """Run fn() under cProfile and return pstats' listing of its top `lines` functions by `sort`."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    try:
        fn()
    finally:
        profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats(sort).print_stats(lines)
    return text.getvalue()


def script_parser(doc: str, *, modes: str, repeats: int) -> argparse.ArgumentParser:
    """The options every bench/ script shares: --models, --modes, --repeats, --json, --tiny."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--models", default="llama3.2-1b,llama3.1-8b,glm4-9b")
    p.add_argument("--modes", default=modes)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--json")
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (a smoke run of the script)")
    add_eos_argument(p)
    return p


def script_models(names: str, tiny: bool):
    """(name, model) for each comma-separated reference name, as the bench/ scripts use them: bf16
    on CUDA, or tiny fp32 models on the CPU (`tiny`, a smoke run); each model is freed before the next."""
    from types import SimpleNamespace

    import torch

    for name in names.split(","):
        model = load_model(name, SimpleNamespace(dtype="float32" if tiny else "bfloat16",
                                                 device="cpu" if tiny else "cuda", layers=None, tiny=tiny))
        yield name, model
        del model
        if not tiny:
            torch.cuda.empty_cache()


def model_label(name: str, args) -> str:
    """How a model is named in tables: the checkpoint folder, or the reference name (+ size changes)."""
    if Path(name).is_dir():
        return Path(name).name
    return name + (" (tiny)" if args.tiny else "") + (f" ({args.layers} layers)" if args.layers else "")


def prompt_ids(model, batch: int, prompt_len: int, seed: int = 0):
    """(batch, prompt_len) random token ids (no tokenizer needed; random weights do not care)."""
    import torch

    high = model.config.get_text_config().vocab_size
    # below every special id (GLM-4.1V's image/video placeholders would ask for pixels)
    for key, value in model.config.to_dict().items():
        if key.endswith("_token_id") and isinstance(value, int) and value > 3:
            high = min(high, value)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, high, (batch, prompt_len), generator=g).to(model.device)


# ---------------------------------------------------------------------------------------------
# bandwidth limit
# ---------------------------------------------------------------------------------------------
def measure_read_bandwidth(nbytes: int = 2**30, reps: int = 30) -> float:
    """Achievable read bandwidth in bytes/s: a 1 GiB read-only sum, captured in a CUDA graph, GPU-timed."""
    import torch

    x = torch.ones(nbytes // 2, device="cuda", dtype=torch.bfloat16)
    out = torch.empty((), device="cuda", dtype=torch.float32)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        torch.sum(x, dim=0, dtype=torch.float32, out=out)  # warm up before capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.sum(x, dim=0, dtype=torch.float32, out=out)
    graph.replay()
    seconds = median_replay_ms(graph, reps) * 1e-3
    del graph, x
    torch.cuda.empty_cache()
    return nbytes / seconds


def median_replay_ms(graph, reps: int = 20) -> float:
    """Median GPU milliseconds of one replay of a CUDA graph (CUDA events around each replay)."""
    import torch

    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def weight_bytes_per_step(model) -> int:
    """Bytes of parameters one decode step reads: all of them except embedding lookup tables (one row
    per token), unless a table is tied to the output layer (then the lm_head reads it whole), and
    except a vision tower (`visual`, GLM-4.1V), which text decoding never runs."""
    import torch

    out = model.get_output_embeddings()
    lm_head = getattr(out, "weight", None)
    skip = {id(m.weight) for m in model.modules()
            if isinstance(m, torch.nn.Embedding) and m.weight is not lm_head}
    for name, m in model.named_modules():
        if name.split(".")[-1] == "visual":
            skip.update(id(p) for p in m.parameters())
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)


def kv_bytes_per_position(model) -> int:
    """KV-cache bytes one cached position costs across all layers (keys + values), per sequence."""
    cfg = model.config.get_text_config()
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return 2 * cfg.num_hidden_layers * kv_heads * head_dim * model.dtype.itemsize


def bytes_per_step(model, batch: int, prompt_len: int, new_tokens: int) -> tuple[int, int]:
    """(weight bytes, mean KV-cache bytes) one decode step of this generate reads."""
    mean_len = prompt_len + new_tokens / 2  # cached positions the average decode step attends over
    return weight_bytes_per_step(model), int(kv_bytes_per_position(model) * batch * mean_len)


# ---------------------------------------------------------------------------------------------
# timing one generate
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    model: str
    mode: str
    batch: int
    prompt_len: int
    new_tokens: int
    dtype: str
    tok_per_s: float | None = None  # decode tokens/s, all sequences of the batch together
    ms_per_token: float | None = None  # per decode step
    ttft_ms: float | None = None
    pct_of_bw_limit: float | None = None
    limit_tok_per_s: float | None = None
    peak_mem_gib: float | None = None
    compile_s: float | None = None
    weight_bytes: int | None = None
    kv_bytes_per_step: int | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# How the benchmarks make generate produce exactly N tokens: EOS ignored (True), or the EOS checks
# kept and the length forced by min_new_tokens (False; the harness of the first eight sessions).
IGNORE_EOS = True


def add_eos_argument(parser) -> None:
    parser.add_argument("--stop-at-eos", action="store_true",
                        help="keep generate's EOS checks and force the length with min_new_tokens (default: EOS ignored)")


def eos_label() -> str:
    """How the harness forces the length, as the result JSON records it."""
    return "ignored" if IGNORE_EOS else "min_new_tokens"


def set_eos_harness(stop_at_eos: bool) -> str:
    """Set IGNORE_EOS from --stop-at-eos for this process; returns eos_label()."""
    global IGNORE_EOS
    IGNORE_EOS = not stop_at_eos
    return eos_label()


def exact_length(n: int, ignore_eos: bool | None = None) -> dict:
    """generate() keyword arguments for exactly n greedy new tokens (see IGNORE_EOS)."""
    stop = {"eos_token_id": None} if (IGNORE_EOS if ignore_eos is None else ignore_eos) else {"min_new_tokens": n}
    return {"max_new_tokens": n, "do_sample": False, "pad_token_id": 0, **stop}


def time_generate(model, ids, new_tokens: int, marks: dict | None = None, **gen_kwargs) -> tuple[float, float | None]:
    """(total seconds, seconds to the first new token or None) of one greedy generate of exactly
    new_tokens (exact_length); `marks` (if given) gets the perf_counter of its start and first token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):  # put() #1 is the prompt, #2 the first new token
        # generate hands put() tokens already on the host (it waited for them): no sync here,
        # which would also wait for a step queued meanwhile (the engine's deferred stop).
        def __init__(self):
            self.puts, self.at = 0, None

        def put(self, value):
            self.puts += 1
            if self.puts == 2:
                self.at = time.perf_counter()

        def end(self):
            pass

    clock = FirstToken()
    _sync(ids.device)
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), streamer=clock,
                       **{**exact_length(new_tokens), **gen_kwargs})
    _sync(ids.device)
    end = time.perf_counter()
    if marks is not None:
        marks.update(start=start, first_token=clock.at)
    return end - start, (clock.at - start if clock.at is not None else None)


def mode_kwargs(mode: str) -> dict:
    """generate() keyword arguments of a mode (patching / the engine are set up by the caller)."""
    if mode == "compile":
        from transformers import CompileConfig

        return {"cache_implementation": "static", "compile_config": CompileConfig()}
    return {}


def _setup(model, mode: str):
    """Patch (patched) or install the decode engine on the stock modules (graph-stock); return the undo."""
    if mode in ("patched", "patched-eager"):
        from tqdm import tqdm

        from autoglm_kernels.patch import patch_model, unpatch_model

        tqdm.write(str(patch_model(model, **({"cuda_graphs": False} if mode == "patched-eager" else {}))))
        return lambda: unpatch_model(model)
    if mode == "graph-stock":
        from autoglm_kernels import engine
        from autoglm_kernels.patch.archs import spec_for

        spec = spec_for(getattr(model.config, "model_type", ""))
        engine.install(model, **(spec.engine_options() if spec else {}))
        return lambda: engine.uninstall(model)
    return lambda: None


def _engine_stats(model) -> dict | None:
    from autoglm_kernels import engine

    eng = engine.engine_of(model)
    return eng.stats() if eng is not None else None


def run_mode(model, name: str, mode: str, args, bandwidth: float | None) -> Result:
    """Warm up, time `args.repeats` generates, and fill a Result (error set instead of raising)."""
    import torch

    res = Result(model=model_label(name, args), mode=mode, batch=args.batch,
                 prompt_len=args.prompt_len, new_tokens=args.new_tokens, dtype=DTYPES[args.dtype])
    ids = prompt_ids(model, args.batch, args.prompt_len)
    cuda = ids.device.type == "cuda"
    undo = lambda: None  # noqa: E731
    try:
        undo = _setup(model, mode)
        kwargs = mode_kwargs(mode)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        warm_s, _ = time_generate(model, ids, args.new_tokens, **kwargs)
        time_generate(model, ids, args.new_tokens, **kwargs)  # a repeated prompt: the engine's prefill graph
        runs = [time_generate(model, ids, args.new_tokens, **kwargs) for _ in range(args.repeats)]
        if any(t is None for _, t in runs):  # generate did not stream: time the prefill on its own
            runs = [(total, time_generate(model, ids, 1, **kwargs)[0]) for total, _ in runs]
        total = statistics.median(r[0] for r in runs)
        ttft = statistics.median(r[1] for r in runs)
        steps = args.new_tokens - 1
        decode = statistics.median(r[0] - r[1] for r in runs)
        res.ttft_ms = round(1e3 * ttft, 2)
        res.ms_per_token = round(1e3 * decode / steps, 3)
        res.tok_per_s = round(args.batch * steps / decode, 1)
        if mode == "compile":  # the warm-up generate compiled (and captured) the decode step
            res.compile_s = round(max(0.0, warm_s - total), 1)
        res.weight_bytes, res.kv_bytes_per_step = bytes_per_step(model, args.batch, args.prompt_len, args.new_tokens)
        if bandwidth:
            limit_s = (res.weight_bytes + res.kv_bytes_per_step) / bandwidth
            res.limit_tok_per_s = round(args.batch / limit_s, 1)
            res.pct_of_bw_limit = round(100 * limit_s / (decode / steps), 1)
        if cuda:
            res.peak_mem_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        stats = _engine_stats(model)
        if stats:
            res.extra["engine"] = stats
    except Exception as e:  # noqa: BLE001  one failing mode must not stop the others
        res.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    finally:
        try:
            undo()
        except Exception as e:  # noqa: BLE001
            res.error = res.error or f"restoring the model failed: {type(e).__name__}: {e}"[:300]
        if mode == "compile":
            torch._dynamo.reset()
            model.__dict__.pop("_compiled_call", None)
    return res


# ---------------------------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: list[Result]) -> str:
    head = ("model", "mode", "tok/s", "ms/token", "TTFT ms", "% of BW limit", "peak GiB", "note")
    rows = [head]
    for r in results:
        note = r.error or (f"compile {r.compile_s:.1f} s" if r.compile_s is not None else "")
        if r.limit_tok_per_s and not r.error:
            note = (note + "; " if note else "") + f"limit {r.limit_tok_per_s:.0f} tok/s"
        eng = r.extra.get("engine")
        if eng and not r.error:  # shows whether decode really ran as graph replays
            note += f"; graphs: {eng.get('captures')} captured, {eng.get('replays')} replays"
            if eng.get("fallbacks"):
                note += f", eager because: {'; '.join(eng['fallbacks'])}"
            if (eng.get("captures") or 0) > 1 and eng.get("last_recapture"):
                note += f", last new graph because {eng['last_recapture']}"
        rows.append((r.model, r.mode, _fmt(r.tok_per_s, ".1f"), _fmt(r.ms_per_token, ".2f"), _fmt(r.ttft_ms, ".1f"),
                     _fmt(r.pct_of_bw_limit, ".1f"), _fmt(r.peak_mem_gib, ".2f"), note))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = []
    for i, row in enumerate(rows):
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(row[2:-1], widths[2:])]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


# AUTOGLM_* variables of the build, the caches and the results' labels: not tuning switches.
_NOT_KNOBS = frozenset({"AUTOGLM_GIT_COMMIT", "AUTOGLM_ARCH_LIST", "AUTOGLM_KERNELS_CACHE", "AUTOGLM_WITH_CUDA",
                        "AUTOGLM_KERNELS_CPU_ONLY"})


def environment() -> dict:
    import platform

    import torch
    import transformers

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "python": platform.python_version(), "device": "cpu"}
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
    knobs = {k: v for k, v in sorted(os.environ.items()) if k.startswith("AUTOGLM_") and k not in _NOT_KNOBS}
    if knobs:  # the tuning switches this run was under (an A/B run's rows say which side they are)
        info["knobs"] = knobs
    return info


def write_outputs(results: list[Result], args, bandwidth: float | None) -> None:
    rows = [asdict(r) for r in results]
    if args.json:
        doc = {"kind": "autoglm-kernels-generate-bench", "env": environment(),
               "read_bw_gb_per_s": round(bandwidth / 1e9, 1) if bandwidth else None,
               "settings": {k: getattr(args, k) for k in ("batch", "prompt_len", "new_tokens", "dtype", "repeats")},
               "eos": eos_label(),
               "results": rows}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2))
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            fields = [k for k in rows[0] if k != "extra"] if rows else []
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)


def parse_modes(args) -> list[str]:
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if args.compile and "compile" not in modes:
        modes.append("compile")
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise CLIError(f"--modes: unknown mode {', '.join(bad) or '(none given)'}; choose from {', '.join(MODES)}")
    if args.device == "cpu" and any(m in ("graph-stock", "compile") for m in modes):
        raise CLIError("--modes graph-stock/compile need a CUDA GPU; on --device cpu use stock,patched")
    return [m for m in MODES if m in modes]


def run(args) -> int:
    import torch
    import transformers
    from tqdm import tqdm

    check_device(args.device, "bench")
    set_eos_harness(args.stop_at_eos)
    modes = parse_modes(args)
    names = model_names(args)
    if (args.json and Path(args.json).is_dir()) or (args.csv and Path(args.csv).is_dir()):
        raise CLIError("--json/--csv take a file path, not a directory")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    bandwidth = measure_read_bandwidth() if args.device == "cuda" else None
    if bandwidth:
        print(f"read bandwidth (1 GiB read-only sum): {bandwidth / 1e9:.0f} GB/s on {torch.cuda.get_device_name(0)}")
    results: list[Result] = []
    with tqdm(total=len(names) * len(modes), unit="run", dynamic_ncols=True) as bar:
        for name in names:
            bar.set_description(f"{Path(name).name}: building")
            model = load_model(name, args)
            for mode in modes:
                bar.set_description(f"{Path(name).name}: {mode}")
                results.append(run_mode(model, name, mode, args, bandwidth))
                bar.update(1)
            del model
            if args.device == "cuda":
                torch.cuda.empty_cache()
            write_outputs(results, args, bandwidth)  # after each model: a run cut short keeps what it measured
    print(f"\nbatch {args.batch}, prompt {args.prompt_len}, {args.new_tokens} new tokens, {DTYPES[args.dtype]}; "
          "tok/s and ms/token are decode only (after the first token)")
    print(format_table(results))
    return 1 if all(r.error for r in results) else 0
