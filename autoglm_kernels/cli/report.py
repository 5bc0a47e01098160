"""`autoglm-kernels report RUN`: benchmark JSON -> REPORT.md (+ PNG plots) next to it.

Reads, from a run folder (bench/results/<run>/ as scripts/gpu_check.sh writes it) or given files:
- pytest-benchmark JSON (bench.json): kernel benchmarks whose extra_info bench/common.py `record`
  fills (impl, gpu_us, gb_per_s, pct_of_read_bw, tflop_per_s, read_bw_gb_per_s, shape keys), one
  group per op + shape holding a "stock" and a fused impl; and generate benchmarks
  (bench/bench_generate.py: extra_info has tok_per_s);
- `autoglm-kernels bench --json` output (kind "autoglm-kernels-generate-bench");
- env.json (device, versions, git commit) from the same folder.
Writes REPORT.md, kernels_bandwidth.png and generate_tok_s.png (matplotlib, if installed).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import CLIError
from .bench import MODES

GENERATE_KIND = "autoglm-kernels-generate-bench"
MODE_ORDER = MODES  # the bench's modes, in the order they run


def add_arguments(parser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="RUN",
                        help="a results folder (bench/results/<run>) or JSON files (pytest-benchmark or bench --json)")
    parser.add_argument("--out", metavar="DIR", help="where REPORT.md and the plots go (default: next to the input)")
    parser.add_argument("--no-plots", action="store_true", help="write only REPORT.md")


@dataclass
class RunData:
    kernels: list = field(default_factory=list)  # pytest-benchmark entries of kernel benchmarks
    generate: list = field(default_factory=list)  # dicts: model, mode, tok_per_s, ms_per_token, ttft_ms, ...
    env: dict = field(default_factory=dict)
    read_bw_gb_per_s: float | None = None
    sources: list = field(default_factory=list)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CLIError(f"cannot read {path}: {e}") from None


def _add(data: RunData, path: Path, doc) -> bool:
    """Add one JSON document to `data`; False when it is neither format."""
    if isinstance(doc, dict) and isinstance(doc.get("benchmarks"), list):
        for b in doc["benchmarks"]:
            extra = b.get("extra_info") or {}
            if "tok_per_s" in extra:
                model = extra.get("model") or b.get("group") or b.get("name")
                if extra.get("num_layers"):  # a cut-down model (bench_memory's 4 layers): not the reference
                    model = f"{model} ({extra['num_layers']} layers)"
                data.generate.append({**extra, "model": model, "mode": extra.get("impl", "?")})
            else:
                data.kernels.append(b)
            if data.read_bw_gb_per_s is None and extra.get("read_bw_gb_per_s"):
                data.read_bw_gb_per_s = extra["read_bw_gb_per_s"]
        data.sources.append(path)
        return True
    if isinstance(doc, dict) and doc.get("kind") == GENERATE_KIND:
        knobs = " ".join(f"{k}={v}" for k, v in ((doc.get("env") or {}).get("knobs") or {}).items())
        data.generate.extend({**r, "knobs": knobs} if knobs else r for r in doc.get("results", []))
        data.read_bw_gb_per_s = data.read_bw_gb_per_s or doc.get("read_bw_gb_per_s")
        for k, v in (doc.get("env") or {}).items():
            data.env.setdefault(k, v)
        data.sources.append(path)
        return True
    return False


def load(inputs: list[str]) -> tuple[RunData, Path]:
    """Read every input; return the data and the folder the report goes to by default."""
    data = RunData()
    out_dir = None
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise CLIError(f"{item}: no such file or folder")
        if p.is_dir():
            out_dir = out_dir or p
            if (p / "env.json").is_file():
                data.env.update(_read_json(p / "env.json"))
            for f in sorted(p.glob("*.json")):
                if f.name not in ("env.json", "doctor.json"):
                    _add(data, f, _read_json(f))
        else:
            out_dir = out_dir or p.parent
            if not _add(data, p, _read_json(p)):
                raise CLIError(f"{item}: neither pytest-benchmark JSON nor `autoglm-kernels bench --json` output")
            if not data.env and (p.parent / "env.json").is_file():
                data.env.update(_read_json(p.parent / "env.json"))
    if not data.sources:
        raise CLIError(f"no benchmark JSON found in {', '.join(inputs)} (expected bench.json or bench --json output)")
    return data, out_dir


# ---------------------------------------------------------------------------------------------
# kernel table: one row per (group, non-stock impl)
# ---------------------------------------------------------------------------------------------
def _us(b) -> float | None:
    extra = b.get("extra_info") or {}
    if extra.get("gpu_us") is not None:
        return float(extra["gpu_us"])
    median = (b.get("stats") or {}).get("median")
    return None if median is None else median * 1e6


def kernel_rows(benchmarks: list) -> list[dict]:
    groups: dict[str, list] = {}
    for b in benchmarks:
        groups.setdefault(b.get("group") or b.get("name", "?").split("[")[0], []).append(b)
    rows = []
    for group, entries in groups.items():
        stock = next((b for b in entries if (b.get("extra_info") or {}).get("impl") == "stock"), None)
        others = [b for b in entries if b is not stock] or [None]
        for fused in others:
            s_us, f_us = (_us(stock) if stock else None), (_us(fused) if fused else None)
            sx, fx = (stock or {}).get("extra_info") or {}, (fused or {}).get("extra_info") or {}
            rows.append({
                "group": group, "impl": fx.get("impl", "-") if fused else "-",
                "stock_us": s_us, "fused_us": f_us,
                "ratio": s_us / f_us if s_us and f_us else None,
                "stock_gb_per_s": sx.get("gb_per_s"), "fused_gb_per_s": fx.get("gb_per_s"),
                "fused_pct_of_read_bw": fx.get("pct_of_read_bw"), "fused_tflop_per_s": fx.get("tflop_per_s"),
            })
    return rows


def _f(v, spec: str, suffix: str = "") -> str:
    return "-" if v is None else format(v, spec) + suffix


def markdown(data: RunData, title: str) -> str:
    env = data.env
    lines = [f"# Benchmark report: {title}", ""]
    if env:
        dev = env.get("device", "?")
        if env.get("capability"):
            dev += f" (sm {env['capability']}, {env.get('sms', '?')} SMs, {env.get('memory_gib', '?')} GiB)"
        lines.append(f"- device: {dev}")
        lines.append(f"- versions: torch {env.get('torch', '?')} (CUDA {env.get('cuda', '?')}), triton {env.get('triton', '?')}, "
                     f"transformers {env.get('transformers', '?')}, python {env.get('python', '?')}")
        if env.get("git_commit"):
            dirty = " (uncommitted changes)" if env.get("tree_dirty") else ""
            lines.append(f"- git commit: {env['git_commit']}{dirty}")
    if data.read_bw_gb_per_s:
        lines.append(f"- measured read bandwidth (1 GiB read-only sum): {data.read_bw_gb_per_s:.0f} GB/s")
    lines.append(f"- sources: {', '.join(p.name for p in data.sources)}")

    rows = kernel_rows(data.kernels)
    if rows:
        lines += ["", "## Kernels", "",
                  "GPU time per call (CUDA-graph replays over rotated inputs, median); ratio > 1: the fused kernel is faster.",
                  ""]
        has_tflops = any(r["fused_tflop_per_s"] is not None for r in rows)
        head = ["group", "impl", "stock us", "fused us", "stock/fused", "stock GB/s", "fused GB/s", "fused % of BW"]
        head += ["fused TFLOP/s"] if has_tflops else []
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|"]
        for r in rows:
            cells = [r["group"], r["impl"], _f(r["stock_us"], ".2f"), _f(r["fused_us"], ".2f"), _f(r["ratio"], ".2f", "x"),
                     _f(r["stock_gb_per_s"], ".0f"), _f(r["fused_gb_per_s"], ".0f"), _f(r["fused_pct_of_read_bw"], ".1f", "%")]
            cells += [_f(r["fused_tflop_per_s"], ".1f")] if has_tflops else []
            lines.append("| " + " | ".join(cells) + " |")
        ratios = [r["ratio"] for r in rows if r["ratio"]]
        if ratios:
            gmean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
            slower = [r["group"] for r in rows if r["ratio"] and r["ratio"] < 1]
            lines += ["", f"Geometric mean speedup over {len(ratios)} pairs: {gmean:.2f}x; fused slower than stock in "
                          f"{len(slower)}" + (f": {', '.join(slower)}" if slower else "")]

    if data.generate:
        lines += ["", "## End-to-end generate", "",
                  "Decode tokens/s and ms per decode step (after the first token); TTFT = time to the first token; "
                  "% of BW limit = ((weight + KV-cache bytes read per step) / read bandwidth) / measured step time.", "",
                  "| model | mode | batch, prompt, new | tok/s | ms/token | TTFT ms | % of BW limit | peak GiB | note |",
                  "|---|---|---|---:|---:|---:|---:|---:|---|"]
        for g in sorted(data.generate, key=_gen_key):
            note = g.get("error") or (f"compile {g['compile_s']:.1f} s" if g.get("compile_s") is not None else "")
            if g.get("knobs"):
                note = f"{note}; {g['knobs']}" if note else g["knobs"]
            shape = ", ".join(str(g.get(k, "?")) for k in ("batch", "prompt_len", "new_tokens"))
            lines.append(f"| {g.get('model', '?')} | {g.get('mode', '?')} | {shape} | {_f(g.get('tok_per_s'), '.1f')} | "
                         f"{_f(g.get('ms_per_token'), '.2f')} | {_f(g.get('ttft_ms'), '.1f')} | "
                         f"{_f(g.get('pct_of_bw_limit'), '.1f', '%')} | {_f(g.get('peak_mem_gib'), '.2f')} | {note} |")
    return "\n".join(lines) + "\n"


def _gen_key(g):
    mode = g.get("mode", "")
    return (str(g.get("model", "")), MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), mode)


# ---------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------
def plot_generate(data: RunData, path: Path) -> bool:
    import matplotlib.pyplot as plt

    rows = [g for g in data.generate if g.get("tok_per_s")]
    if not rows:
        return False
    def label(g):  # runs of other shapes (batch, prompt, new tokens) get their own bars
        shape = [g.get(k) for k in ("batch", "prompt_len", "new_tokens")]
        return g["model"] + ("\nb{} p{} n{}".format(*shape) if all(v is not None for v in shape) else "")

    rows = sorted(rows, key=_gen_key)
    models = list(dict.fromkeys(label(g) for g in rows))
    modes = list(dict.fromkeys(g["mode"] for g in rows))
    value = {(label(g), g["mode"]): g["tok_per_s"] for g in rows}
    width = 0.8 / len(modes)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(models) * max(1, len(modes) / 2)), 4.5))
    for i, mode in enumerate(modes):
        xs = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(models))]
        ys = [value.get((m, mode), 0) for m in models]
        bars = ax.bar(xs, ys, width, label=mode)
        ax.bar_label(bars, labels=[f"{y:.0f}" if y else "" for y in ys], fontsize=8)
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("decode tokens/s")
    ax.set_title(f"generate: decode tokens/s ({data.env.get('device', '')})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_kernels(data: RunData, path: Path) -> bool:
    import matplotlib.pyplot as plt

    rows = [r for r in kernel_rows(data.kernels) if r["stock_gb_per_s"] or r["fused_gb_per_s"]]
    if not rows:
        return False
    labels = [r["group"] + ("" if r["impl"] in ("-", "fused") else f" [{r['impl']}]") for r in rows]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.32 * len(rows)))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["stock_gb_per_s"] or 0 for r in rows], 0.4, label="stock")
    ax.barh([y - 0.2 for y in ys], [r["fused_gb_per_s"] or 0 for r in rows], 0.4, label="fused")
    if data.read_bw_gb_per_s:
        ax.axvline(data.read_bw_gb_per_s, color="k", linestyle="--", linewidth=1,
                   label=f"read bandwidth {data.read_bw_gb_per_s:.0f} GB/s")
    ax.set_yticks(list(ys), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("GB/s (bytes moved / GPU time)")
    ax.set_title(f"kernel bandwidth by op and shape ({data.env.get('device', '')})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(inputs, out: str | None = None, plots: bool = True) -> Path:
    """Write REPORT.md (and the plots) for `inputs` (folders or JSON files); return the REPORT.md path."""
    data, default_out = load([str(i) for i in ([inputs] if isinstance(inputs, (str, Path)) else inputs)])
    out_dir = Path(out) if out else default_out
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(data, default_out.name if default_out else "benchmarks")
    if plots:
        try:
            import matplotlib

            matplotlib.use("Agg")
        except ImportError:
            text += "\n(plots skipped: matplotlib is not installed; pip install matplotlib)\n"
        else:
            made = []
            if plot_kernels(data, out_dir / "kernels_bandwidth.png"):
                made.append("kernels_bandwidth.png")
            if plot_generate(data, out_dir / "generate_tok_s.png"):
                made.append("generate_tok_s.png")
            text += "".join(f"\n![{Path(m).stem}]({m})\n" for m in made)
    report = out_dir / "REPORT.md"
    report.write_text(text)
    return report


def run(args) -> int:
    report = write_report(args.inputs, args.out, plots=not args.no_plots)
    print(report.read_text())
    print(f"written: {report}")
    return 0
