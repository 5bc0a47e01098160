"""The command line: help, user errors (one line, exit 2, no traceback), the demo end to end on
CPU, a bench smoke run on CPU, the report from benchmark JSON, and the helpers behind them."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from autoglm_kernels.cli import main

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
no_cuda_only = pytest.mark.skipif(HAS_CUDA, reason="checks the error on a machine without a GPU")


def cli(capsys, *argv):
    """Run `autoglm-kernels argv` in-process: (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse --help / usage errors
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("AUTOGLM_KERNELS_CACHE", str(tmp_path_factory.getbasetemp() / "ckpt-cache"))


# --- help and errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["doctor", "demo", "bench", "profile", "report"])
def test_help_exits_0(capsys, command):
    code, out, _ = cli(capsys, command, "--help")
    assert code == 0
    assert f"autoglm-kernels {command}" in out and "usage" in out


def test_module_entry_point_lists_commands():
    out = subprocess.run([sys.executable, "-m", "autoglm_kernels", "--help"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for command in ("doctor", "demo", "bench", "profile", "report"):
        assert command in out.stdout


@pytest.mark.parametrize("argv,needles", [
    (["demo", "--model", "/no/such/checkpoint"], ["--model /no/such/checkpoint", "no such directory"]),
    (["demo", "--max-new-tokens", "0"], ["--max-new-tokens", "positive integer"]),
    (["demo", "--max-new-tokens", "many"], ["--max-new-tokens", "'many'"]),
    (["demo", "--dtype", "int8"], ["--dtype", "invalid choice"]),
    (["bench", "--device", "cpu", "--models", "gpt-9"], ["unknown or unsupported model 'gpt-9'"]),
    (["bench", "--device", "cpu", "--modes", "stock,turbo"], ["unknown mode turbo"]),
    (["bench", "--device", "cpu", "--modes", "compile"], ["need a CUDA GPU"]),
    (["bench", "--new-tokens", "1"], ["--new-tokens", ">= 2"]),
    (["bench", "--device", "cpu", "--model", "/no/such/dir"], ["--model /no/such/dir"]),
    (["report", "/no/such/run"], ["/no/such/run", "no such file"]),
])
def test_user_errors_are_one_line(capsys, argv, needles):
    code, _, err = cli(capsys, *argv)
    assert_user_error(code, err, *needles)


def test_demo_model_dir_without_config(capsys, tmp_path):
    code, _, err = cli(capsys, "demo", "--model", str(tmp_path))
    assert_user_error(code, err, "not a checkpoint directory", "config.json")


def test_report_folder_without_json(capsys, tmp_path):
    code, _, err = cli(capsys, "report", str(tmp_path))
    assert_user_error(code, err, "no benchmark JSON found")


def test_report_names_cut_down_models(capsys, tmp_path):
    """A pytest-benchmark generate entry of a model with fewer layers (bench_memory's 4) is not
    listed under the reference model's name."""
    doc = {"benchmarks": [{"name": "test_generate[fused]", "group": "g", "extra_info": {
        "impl": "fused", "model": "llama3.2-1b", "num_layers": 4, "tok_per_s": 327.2}}]}
    (tmp_path / "bench_memory.json").write_text(json.dumps(doc))
    code, out, err = cli(capsys, "report", str(tmp_path), "--no-plots")
    assert code == 0, err
    assert "| llama3.2-1b (4 layers) | fused |" in out


def test_generate_rows_name_the_knobs_they_ran_under(capsys, tmp_path, monkeypatch):
    """A generate run under AUTOGLM_* switches records them (bench's environment()), and the
    report's note column names them, so the two sides of an A/B folder stay apart."""
    from autoglm_kernels.cli.bench import environment

    monkeypatch.setenv("AUTOGLM_DECODE_PREFETCH_TILES", "2")
    monkeypatch.setenv("AUTOGLM_GIT_COMMIT", "abc")  # the commit label is not a knob
    env = environment()
    assert env["knobs"] == {"AUTOGLM_DECODE_PREFETCH_TILES": "2"}
    row = {"model": "llama3.2-1b", "mode": "patched", "batch": 1, "prompt_len": 128, "new_tokens": 128,
           "tok_per_s": 813.9, "ms_per_token": 1.23, "ttft_ms": 5.8, "pct_of_bw_limit": 67.1, "peak_mem_gib": 2.44}
    for name, doc_env in (("a.json", env), ("b.json", {k: v for k, v in env.items() if k != "knobs"})):
        doc = {"kind": "autoglm-kernels-generate-bench", "env": doc_env, "results": [dict(row)]}
        (tmp_path / name).write_text(json.dumps(doc))
    code, out, err = cli(capsys, "report", str(tmp_path), "--no-plots")
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("| llama3.2-1b | patched |")]
    assert len(lines) == 2 and sum(line.endswith("| AUTOGLM_DECODE_PREFETCH_TILES=2 |") for line in lines) == 1, lines


@no_cuda_only
@pytest.mark.parametrize("argv,needle", [
    (["demo", "--device", "cuda"], "no CUDA GPU is visible"),
    (["bench"], "bench needs a CUDA GPU"),
    (["profile"], "profile needs a CUDA GPU"),
    (["profile", "--device", "cpu"], "needs --device cuda"),
])
def test_gpu_only_on_cpu(capsys, argv, needle):
    code, _, err = cli(capsys, *argv)
    assert_user_error(code, err, needle)


# --- demo end to end on CPU --------------------------------------------------------------------
def test_demo_runs_on_cpu_and_agrees(capsys):
    code, out, err = cli(capsys, "demo", "--tiny", "--device", "cpu", "--max-new-tokens", "4")
    assert code == 0, out + err
    assert "running the CPU path" in out and "float32" in out
    assert "patch report" in out
    assert "outputs agree: all 4 token ids identical" in out
    stock = next(line for line in out.splitlines() if line.startswith("stock  :"))
    patched = next(line for line in out.splitlines() if line.startswith("patched:"))
    assert stock.split(":", 1)[1] == patched.split(":", 1)[1]
    assert "tokens/s" in out


def test_demo_on_a_local_checkpoint(capsys, tmp_path):
    from autoglm_kernels.demo_model import build_checkpoint

    path = build_checkpoint(tmp_path / "llama", "llama")
    code, out, err = cli(capsys, "demo", "--model", str(path), "--device", "cpu", "--max-new-tokens", "3",
                         "--prompt", "GPUs read memory")
    assert code == 0, out + err
    assert f"model: {path} (llama" in out and "outputs agree: all 3 token ids identical" in out


def test_first_divergence():
    from autoglm_kernels.cli.demo import first_divergence

    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert first_divergence(torch.tensor([4, 5, 6]), torch.tensor([4, 5, 7])) == 2  # 1-D tensors too
    assert first_divergence(torch.tensor([4, 5]), [4, 5]) is None


# --- bench -------------------------------------------------------------------------------------
def test_bench_smoke_on_cpu_writes_json_csv_and_report(capsys, tmp_path):
    out_json, out_csv = tmp_path / "gen.json", tmp_path / "gen.csv"
    code, out, err = cli(capsys, "bench", "--device", "cpu", "--tiny", "--models", "llama3.2-1b", "--new-tokens", "3",
                         "--prompt-len", "5", "--repeats", "1", "--modes", "stock,patched",
                         "--json", str(out_json), "--csv", str(out_csv))
    assert code == 0, out + err
    doc = json.loads(out_json.read_text())
    assert doc["kind"] == "autoglm-kernels-generate-bench"
    rows = {r["mode"]: r for r in doc["results"]}
    assert set(rows) == {"stock", "patched"}
    for r in rows.values():
        assert r["error"] is None, r["error"]
        assert r["tok_per_s"] > 0 and r["ms_per_token"] > 0 and r["ttft_ms"] > 0
        assert r["model"] == "llama3.2-1b (tiny)" and r["new_tokens"] == 3
    assert out_csv.read_text().splitlines()[0].startswith("model,mode,batch")
    assert "llama3.2-1b (tiny)  stock" in out

    code, out, err = cli(capsys, "report", str(out_json), "--no-plots")
    assert code == 0, err
    assert "| llama3.2-1b (tiny) | stock | 1, 5, 3 |" in out


@pytest.mark.parametrize("ignore_eos", [True, False])
def test_exact_length_generates_exactly_n_tokens_past_eos(ignore_eos):
    """The benchmarks time exactly N new tokens even when the model emits EOS at once: EOS
    ignored (the default), or the EOS checks kept and the length forced by min_new_tokens."""
    import transformers

    from autoglm_kernels.cli.bench import exact_length

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, eos_token_id=5)
    model = transformers.LlamaForCausalLM(cfg).eval()

    def always_eos(module, args, out):
        out = out.clone()
        out[..., 5] = 100.0
        return out

    model.lm_head.register_forward_hook(always_eos)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0).shape[1] == 4  # stops at EOS
        out = model.generate(ids, **exact_length(6, ignore_eos=ignore_eos))
    assert out.shape[1] == 3 + 6
    if ignore_eos:
        assert out[0, 3:].tolist() == [5] * 6  # EOS is just another token


def test_bandwidth_limit_bytes():
    from autoglm_kernels.cli.bench import bytes_per_step, kv_bytes_per_position, weight_bytes_per_step
    from autoglm_kernels.demo_model import random_model

    tied = random_model("llama3.2-1b", tiny=True, device="cpu", dtype=torch.bfloat16)
    total = sum(p.numel() for p in tied.parameters()) * 2
    assert weight_bytes_per_step(tied) == total  # the tied table is read whole by the lm_head
    glm = random_model("glm4-9b", tiny=True, device="cpu", dtype=torch.bfloat16)
    table = glm.model.embed_tokens.weight
    assert weight_bytes_per_step(glm) == sum(p.numel() for p in glm.parameters()) * 2 - table.numel() * 2
    cfg = glm.config  # tiny: 2 layers, 2 kv heads, head_dim 32, bf16
    assert kv_bytes_per_position(glm) == 2 * cfg.num_hidden_layers * 2 * 32 * 2
    weights, kv = bytes_per_step(glm, batch=2, prompt_len=10, new_tokens=4)
    assert weights == weight_bytes_per_step(glm) and kv == kv_bytes_per_position(glm) * 2 * 12


def test_bench_table_shows_errors_and_limits():
    from autoglm_kernels.cli.bench import Result, format_table

    ok = Result("glm4-9b", "stock", 1, 128, 128, "bfloat16", tok_per_s=40.0, ms_per_token=25.0, ttft_ms=30.0,
                pct_of_bw_limit=24.0, limit_tok_per_s=166.0, peak_mem_gib=18.9)
    bad = Result("glm4-9b", "compile", 1, 128, 128, "bfloat16", error="RuntimeError: boom")
    lines = format_table([ok, bad]).splitlines()
    assert lines[0].split()[:3] == ["model", "mode", "tok/s"]
    assert "40.0" in lines[2] and "24.0" in lines[2] and "limit 166 tok/s" in lines[2]
    assert lines[3].endswith("RuntimeError: boom")


# --- profile helpers (the command itself needs a GPU) ------------------------------------------
def test_profile_per_step_and_table():
    from torch.autograd import DeviceType

    from autoglm_kernels.cli.profile import device_ops, format_side_by_side, per_step

    def ev(name, us, device=DeviceType.CUDA, annotation=False):
        return SimpleNamespace(name=name, device_type=device, is_user_annotation=annotation,
                               time_range=SimpleNamespace(elapsed_us=lambda: us))

    prefill = SimpleNamespace(events=lambda: [ev("gemm", 50.0), ev("aten::mm", 9.0, DeviceType.CPU)])
    full = SimpleNamespace(events=lambda: [ev("gemm", 50.0)] + [ev("gemv", 10.0)] * 8 + [ev("norm", 2.0)] * 16
                           + [ev("Memcpy DtoH", 1.0)] * 4 + [ev("decode_step", 999.0, annotation=True)])
    stats = per_step(device_ops(full), device_ops(prefill), steps=4)
    assert stats == {"gemv": (2.0, 20.0), "norm": (4.0, 8.0), "Memcpy DtoH": (1.0, 1.0)}
    fused = {"fused_gemv": (2.0, 12.0)}
    text = format_side_by_side("t", {"stock": stats, "patched": fused}, top=5)
    assert "stock         6.0 kernels/step" in text and "patched       2.0 kernels/step" in text
    assert "GPU time per step stock/patched: 2.42x" in text
    assert text.index("gemv") < text.index("norm")  # ranked by GPU time


# --- report ------------------------------------------------------------------------------------
def _bench_entry(group, impl, us, gbs=None, **extra):
    info = {"impl": impl, "gpu_us": us, **extra}
    if gbs is not None:
        info.update(gb_per_s=gbs, pct_of_read_bw=round(100 * gbs / 3000, 1), read_bw_gb_per_s=3000.0)
    return {"group": group, "name": f"test_x[{impl}]", "extra_info": info, "stats": {"median": us * 1e-6}}


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "20260101T0000_H100_abc"
    d.mkdir()
    benches = [
        _bench_entry("rmsnorm 1x4096", "stock", 10.0, 800.0),
        _bench_entry("rmsnorm 1x4096", "fused", 5.0, 1600.0),
        _bench_entry("qkv glm4-9b", "stock", 30.0, 2000.0, tflop_per_s=1.0),
        _bench_entry("qkv glm4-9b", "fused", 40.0, 1500.0, tflop_per_s=0.7),
        _bench_entry("rope only-stock", "stock", 3.0),
        {"group": "generate glm4-9b", "name": "test_generate[glm4-9b-stock]", "stats": {"median": 1.0},
         "extra_info": {"impl": "stock", "model": "glm4-9b", "tok_per_s": 41.0, "ms_per_token": 24.4,
                        "batch": 1, "prompt_len": 128, "new_tokens": 32}},
        {"group": "generate glm4-9b", "name": "test_generate[glm4-9b-patched]", "stats": {"median": 0.5},
         "extra_info": {"impl": "patched", "model": "glm4-9b", "tok_per_s": 123.0, "ms_per_token": 8.1,
                        "batch": 1, "prompt_len": 128, "new_tokens": 32}},
    ]
    (d / "bench.json").write_text(json.dumps({"benchmarks": benches, "version": "5.0"}))
    (d / "env.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "capability": "9.0", "sms": 132,
                                            "memory_gib": 79.1, "torch": "2.11.0", "cuda": "13.0", "triton": "3.6.0",
                                            "transformers": "5.17.0", "python": "3.12.3", "git_commit": "abc123def456",
                                            "tree_dirty": False}))
    return d


def test_report_markdown_from_pytest_benchmark_json(capsys, run_dir):
    code, out, err = cli(capsys, "report", str(run_dir))
    assert code == 0, err
    md = (run_dir / "REPORT.md").read_text()
    assert md in out
    assert "NVIDIA H100 80GB HBM3 (sm 9.0, 132 SMs" in md and "git commit: abc123def456" in md
    assert "triton 3.6.0" in md and "3000 GB/s" in md
    assert "| rmsnorm 1x4096 | fused | 10.00 | 5.00 | 2.00x | 800 | 1600 | 53.3% | - |" in md
    assert "| qkv glm4-9b | fused | 30.00 | 40.00 | 0.75x | 2000 | 1500 | 50.0% | 0.7 |" in md
    assert "| rope only-stock | - | 3.00 | - | - |" in md
    assert "Geometric mean speedup over 2 pairs: 1.22x; fused slower than stock in 1: qkv glm4-9b" in md
    assert "| glm4-9b | stock | 1, 128, 32 | 41.0 | 24.40 |" in md
    assert "| glm4-9b | patched | 1, 128, 32 | 123.0 | 8.10 |" in md
    pytest.importorskip("matplotlib")
    for png in ("kernels_bandwidth.png", "generate_tok_s.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in md


def test_bench_report_script(run_dir, tmp_path):
    """scripts/gpu_check.sh runs `python bench/report.py <run>`: same code, REPORT.md next to the input."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "report.py"), str(run_dir), "--no-plots"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert (run_dir / "REPORT.md").is_file() and "| rmsnorm 1x4096 | fused |" in out.stdout


def test_report_rejects_foreign_json(capsys, tmp_path):
    f = tmp_path / "x.json"
    f.write_text(json.dumps({"hello": 1}))
    code, _, err = cli(capsys, "report", str(f))
    assert_user_error(code, err, "neither pytest-benchmark JSON")


def test_bench_builds_the_autoglm_phone_text_decoder(capsys, tmp_path):
    """autoglm-phone-9b: the GLM-4.1V model around the reference text decoder; the vision tower is
    not counted in the bytes a decode step reads, and prompts avoid the image/video placeholder ids."""
    from autoglm_kernels.cli.bench import prompt_ids, weight_bytes_per_step
    from autoglm_kernels.demo_model import random_model

    model = random_model("autoglm-phone-9b", tiny=True, device="cpu", dtype=torch.bfloat16)
    assert type(model).__name__ == "Glm4vForConditionalGeneration"
    visual = sum(p.numel() for p in model.model.visual.parameters()) * 2
    table = model.get_input_embeddings().weight.numel() * 2
    assert visual > 0 and weight_bytes_per_step(model) == sum(p.numel() for p in model.parameters()) * 2 - visual - table
    ids = prompt_ids(model, 4, 64)
    assert int(ids.max()) < model.config.image_token_id
    out_json = tmp_path / "phone.json"
    code, out, err = cli(capsys, "bench", "--device", "cpu", "--tiny", "--models", "autoglm-phone-9b", "--new-tokens", "3",
                         "--prompt-len", "5", "--repeats", "1", "--modes", "stock,patched", "--json", str(out_json))
    assert code == 0, out + err
    rows = json.loads(out_json.read_text())["results"]
    assert [r["mode"] for r in rows] == ["stock", "patched"] and all(r["error"] is None for r in rows), rows


def test_accuracy_script_smoke(tmp_path):
    """bench/accuracy.py (#7's accuracy rule at the reference shapes, a GPU run) on tiny CPU models:
    its step-by-step teacher-forced loop reproduces generate's fp32 greedy tokens, and it reports
    the rule and the greedy agreement."""
    out = tmp_path / "acc.json"
    run = subprocess.run([sys.executable, "bench/accuracy.py", "--tiny", "--models", "llama3.2-1b,autoglm-phone-9b",
                          "--prompts", "2", "--json", str(out)], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == ["llama3.2-1b", "autoglm-phone-9b"]
    for r in results:
        assert r["fp32_loop_matches_generate"] and r["rule_2x_stock_met"]
        assert 0 <= r["greedy_agreement_patched_vs_stock_bf16"] <= 1 and r["stock_bf16_max_err"] > 0


def test_graph_tokens_script_smoke(tmp_path):
    """bench/graph_tokens.py (#8's greedy-token check of the graph decode, a GPU run) on tiny CPU
    models: no engine there, so the three runs share one path and must agree token for token."""
    out = tmp_path / "tokens.json"
    run = subprocess.run([sys.executable, "bench/graph_tokens.py", "--tiny", "--models", "llama3.2-1b,opt-1.3b",
                          "--new-tokens", "5", "--prompt-len", "12", "--json", str(out)], capture_output=True, text=True,
                         timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["model"] for r in rows] == ["llama3.2-1b", "opt-1.3b"]
    for r in rows:
        assert r["new_tokens"] == 5 and r["engine"] is None
        assert r["graph_repeat_first_difference"] is None and r["eager_graph_kernels_first_difference"] is None
        assert r["eager_first_difference"] is None and r["graph_top2_gap_there"] is None
