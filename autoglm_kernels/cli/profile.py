"""`autoglm-kernels profile`: what one decode step runs on the GPU, stock vs patched.

For each mode it profiles (torch.profiler, CPU + CUDA) a generate of 1 new token (prefill only) and
one of 1 + --steps new tokens; the difference, divided by --steps, is the GPU work of one decode
step, whatever generate does around it (CUDA-graph replays included: CUPTI reports their kernels).
Prints the top kernels by GPU time per step and the kernel count per step, side by side.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from . import CLIError
from .bench import add_model_arguments, check_device, exact_length, int_at_least, load_model, model_label, model_names, prompt_ids


def add_arguments(parser) -> None:
    add_model_arguments(parser, default_models="glm4-9b")
    parser.add_argument("--steps", type=int_at_least(1), default=8, help="decode steps to profile (default 8)")
    parser.add_argument("--top", type=int_at_least(1), default=15, help="kernels to list per mode (default 15)")
    parser.add_argument("--trace", metavar="DIR", help="write a Chrome trace (chrome://tracing, Perfetto) per model and mode")


def device_ops(prof) -> dict[str, list]:
    """name -> [count, total us] of the device activities (kernels, memcpy, memset) in a profile."""
    from torch.autograd import DeviceType

    ops: dict[str, list] = defaultdict(lambda: [0, 0.0])
    for e in prof.events():
        if e.device_type != DeviceType.CUDA or getattr(e, "is_user_annotation", False):
            continue
        ops[e.name][0] += 1
        ops[e.name][1] += e.time_range.elapsed_us()
    return dict(ops)


def per_step(long: dict, short: dict, steps: int) -> dict[str, tuple[float, float]]:
    """name -> (calls per step, us per step): (long run - prefill-only run) / steps, dropping non-positive rows."""
    out = {}
    for name, (n, us) in long.items():
        n0, us0 = short.get(name, (0, 0.0))
        if n - n0 > 0:
            out[name] = ((n - n0) / steps, max(0.0, us - us0) / steps)
    return out


def is_kernel(name: str) -> bool:
    return not name.startswith(("Memcpy", "Memset", "memcpy", "memset"))


def profile_mode(model, ids, steps: int, trace: Path | None, label: str) -> dict[str, tuple[float, float]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    def gen(n):
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), **exact_length(n))
        torch.cuda.synchronize()

    gen(1 + steps)  # warm-up: Triton compilation, cuBLAS handles, graph capture
    runs = {}
    for n in (1, 1 + steps):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            gen(n)
        runs[n] = device_ops(prof)
        if trace is not None and n > 1:
            prof.export_chrome_trace(str(trace / f"{label}.json"))
    return per_step(runs[1 + steps], runs[1], steps)


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def format_side_by_side(title: str, stats: dict[str, dict], top: int, width: int = 58) -> str:
    modes = list(stats)
    lines = [title]
    summary = []
    for m in modes:
        k = {n: v for n, v in stats[m].items() if is_kernel(n)}
        copies = sum(v[0] for n, v in stats[m].items() if not is_kernel(n))
        summary.append((m, sum(v[0] for v in k.values()), sum(v[1] for v in stats[m].values()), copies))
    for m, kernels, us, copies in summary:
        lines.append(f"  {m:<8} {kernels:8.1f} kernels/step  {copies:5.1f} memcpy+memset/step  {us:10.1f} GPU us/step")
    if len(summary) == 2 and summary[1][2] > 0:
        lines.append(f"  GPU time per step {summary[0][0]}/{summary[1][0]}: {summary[0][2] / summary[1][2]:.2f}x; "
                     f"kernels per step {summary[0][1]:.0f} -> {summary[1][1]:.0f}")
    ranked = {m: sorted(stats[m].items(), key=lambda kv: -kv[1][1])[:top] for m in modes}
    head = "".join(f"  {m + ' kernel':<{width}} {'us/step':>9} {'calls':>6} |" for m in modes)
    lines += ["", head.rstrip(" |"), "-" * len(head.rstrip(" |"))]
    for i in range(max((len(r) for r in ranked.values()), default=0)):
        row = ""
        for m in modes:
            if i < len(ranked[m]):
                name, (calls, us) = ranked[m][i]
                row += f"  {_short(name, width):<{width}} {us:9.1f} {calls:6.1f} |"
            else:
                row += f"  {'':<{width}} {'':>9} {'':>6} |"
        lines.append(row.rstrip(" |"))
    return "\n".join(lines)


def run(args) -> int:
    import torch
    import transformers

    if args.device != "cuda":
        raise CLIError("profile measures GPU kernels: it needs --device cuda")
    check_device("cuda", "profile")
    names = model_names(args)
    try:
        from autoglm_kernels.patch import patch_model, unpatch_model
    except ImportError as e:
        raise CLIError(f"patching is not available in this install: {e}") from None
    trace = Path(args.trace) if args.trace else None
    if trace is not None:
        trace.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    for name in names:
        model = load_model(name, args)
        ids = prompt_ids(model, args.batch, args.prompt_len)
        label = model_label(name, args)
        safe = "".join(c if c.isalnum() or c in "-._" else "_" for c in label)
        stats = {"stock": profile_mode(model, ids, args.steps, trace, f"{safe}_stock")}
        print(patch_model(model))
        try:
            stats["patched"] = profile_mode(model, ids, args.steps, trace, f"{safe}_patched")
        finally:
            unpatch_model(model)
        title = (f"\n{label}: one decode step (mean of {args.steps}), batch {args.batch}, prompt {args.prompt_len}, "
                 f"{args.dtype}")
        print(format_side_by_side(title, stats, args.top))
        del model
        torch.cuda.empty_cache()
    if trace is not None:
        print(f"\nChrome traces in {trace}/ (open in https://ui.perfetto.dev or chrome://tracing)")
    return 0
