#!/usr/bin/env bash
# GPU check workflow (`make gpu-check`), for a machine with a CUDA GPU whose python3 has torch:
# build in place, doctor, `pytest -m gpu`, the kernel benchmarks; results (JSON with device,
# versions, git commit) go under bench/results/<date>_<gpu>_<commit>/ and, if $OUT is set, a
# tarball of them to $OUT. Options (environment):
#   PYTHON=python3  BENCH_FILTER=<pytest -k expr>  SANITIZE=1 (compute-sanitizer memcheck on
#   the fused-linear GPU tests)  SKIP_BUILD=1  SKIP_TESTS=1  SKIP_BENCH=1  EXTRA="cmd" (run after,
#   with $RESULTS_DIR naming the results folder; EXTRA_TIMEOUT=<s> cuts it)  TESTS_GPU=<index> (tests in the background on
#   that GPU, beside the rest)  TEST_TIMEOUT=<s per file>  TEST_JOBS=<files at once, default 1>
#   TEST_MARK=<pytest -m expr, default gpu; empty: every test, as `make test` runs them on a GPU box>
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

# AUTOGLM_GIT_COMMIT first: a device copy of the tree can carry a stale .git
commit=${AUTOGLM_GIT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
gpu=$($PY -c "import torch;print(torch.cuda.get_device_name(0).replace(' ','-'))" 2>/dev/null || echo nogpu)
cap=$($PY -c "import torch;print('%d.%d'%torch.cuda.get_device_capability(0))" 2>/dev/null || echo "")
res="bench/results/$(date -u +%Y%m%dT%H%M)_${gpu}_${commit}"
mkdir -p "$res"
status=0

if [ -z "${SKIP_BUILD:-}" ]; then
  # Build only for this GPU (9.0 -> sm_90a for the Hopper paths) to keep the build short.
  arch=${TORCH_CUDA_ARCH_LIST:-$cap}
  [ "$arch" = "9.0" ] && arch="9.0a"
  echo "== build (TORCH_CUDA_ARCH_LIST=$arch)"
  start=$(date +%s)
  TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install --no-build-isolation --no-deps -e . \
    >"$res/build.log" 2>&1 || { echo "BUILD FAILED"; tail -60 "$res/build.log"; status=1; }
  echo "build took $(( $(date +%s) - start )) s"
fi

$PY -m autoglm_kernels doctor --json >"$res/doctor.json" 2>"$res/doctor.err"
$PY -m autoglm_kernels doctor
$PY - "$res/env.json" "$commit" <<'PYEOF'
import json, sys, platform, subprocess, torch, importlib.metadata as md
def v(p):
    try: return md.version(p)
    except Exception: return None
p = torch.cuda.get_device_properties(0)
# Only a real checkout of this repository can say whether the tree differs from the commit.
has_head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode == 0
dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True).stdout.strip() != "" if has_head else None
json.dump({"device": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
           "memory_gib": round(p.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
           "triton": v("triton"), "transformers": v("transformers"), "python": platform.python_version(),
           "git_commit": sys.argv[2], "tree_dirty": dirty}, open(sys.argv[1], "w"), indent=2)
PYEOF

test_file() {  # one file's tests (-m gpu, or TEST_MARK's); its exit code goes to tests_<name>.rc
  local log="$res/tests_$(basename "$1" .py)"
  [ -n "${TEST_MARK-gpu}" ] && set -- "$1" -m "${TEST_MARK-gpu}"
  timeout "${TEST_TIMEOUT:-300}" $PY -m pytest "$@" -q -p no:cacheprovider -rfE --tb=short ${TEST_FILTER:+-k "$TEST_FILTER"} \
    >"$log.log" 2>&1
  echo $? >"$log.rc"
}

run_tests() {
  # One pytest process per test file: a kernel fault (sticky CUDA error) in one file cannot
  # turn every later test red, and each file's summary line is kept. TEST_JOBS=<n> runs n files
  # at once (correctness only: no test times anything; the counters they read are per process).
  local which="every test"
  [ -n "${TEST_MARK-gpu}" ] && which="-m \"${TEST_MARK-gpu}\""
  echo "== pytest, $which (one process per file, ${TEST_JOBS:-1} at a time)"
  : >"$res/tests.log"
  local files=(${TEST_FILES:-tests/test_*.py})
  for f in "${files[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "${TEST_JOBS:-1}" ]; do sleep 1; done
    test_file "$f" &
  done
  wait
  for f in "${files[@]}"; do
    local log="$res/tests_$(basename "$f" .py)"
    rc=$(cat "$log.rc" 2>/dev/null || echo 255)
    rm -f "$log.rc"
    line=$(grep -E "(passed|failed|error|skipped|deselected|no tests ran)" "$log.log" | tail -1)
    echo "$f: rc=$rc $line" | tee -a "$res/tests.log"
    # rc 5: no GPU test in that file
    [ "$rc" = 0 ] || [ "$rc" = 5 ] || { status=1; grep -E "^(FAILED|ERROR)" "$log.log" | head -8; }
  done
  return $status
}

tests_pid=""
if [ -z "${SKIP_TESTS:-}" ]; then
  if [ -n "${TESTS_GPU:-}" ]; then
    # TESTS_GPU=<index>: the tests run on that GPU in the background while the benchmarks and
    # EXTRA run (give EXTRA another GPU through CUDA_VISIBLE_DEVICES); waited for before the tarball.
    ( export CUDA_VISIBLE_DEVICES=$TESTS_GPU; run_tests >"$res/tests_stdout.log" 2>&1 ) &
    tests_pid=$!
  else
    run_tests || status=1
  fi
fi

if [ -n "${SANITIZE:-}" ]; then
  echo "== compute-sanitizer memcheck (fused linear GPU tests)"
  timeout "${SANITIZE_TIMEOUT:-300}" compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest tests/test_linear.py -m gpu -q -p no:cacheprovider \
    -k "${SANITIZE_FILTER:-not opcheck}" >"$res/sanitizer.log" 2>&1
  echo "compute-sanitizer exit code: $?" | tee -a "$res/sanitizer.log"
  grep -E "ERROR SUMMARY|passed|failed" "$res/sanitizer.log" | tail -5
fi

if [ -z "${SKIP_BENCH:-}" ]; then
  echo "== benchmarks (one process per file)"
  : >"$res/bench.log"
  for f in ${BENCH_FILES:-bench/bench_*.py}; do
    name=$(basename "$f" .py)
    timeout "${BENCH_TIMEOUT:-300}" $PY -m pytest "$f" --benchmark-only -q -p no:cacheprovider ${BENCH_FILTER:+-k "$BENCH_FILTER"} \
      --benchmark-json="$res/$name.json" --benchmark-columns=median,rounds -rfE --tb=short >"$res/$name.log" 2>&1
    rc=$?
    echo "$f: rc=$rc $(grep -E "(passed|failed|error)" "$res/$name.log" | tail -1)" | tee -a "$res/bench.log"
    [ $rc = 0 ] || [ $rc = 5 ] || { status=1; grep -E "^(FAILED|ERROR)" "$res/$name.log" | head -5; }
  done
  [ -f bench/report.py ] && $PY bench/report.py "$res" 2>&1 | tail -120
fi

# EXTRA_TIMEOUT=<s>: EXTRA is cut there, so the tarball below is still written within a call's limit.
[ -n "${EXTRA:-}" ] && RESULTS_DIR="$res" timeout "${EXTRA_TIMEOUT:-86400}" bash -c "$EXTRA" 2>&1 | tee "$res/extra.log"

if [ -n "$tests_pid" ]; then
  wait "$tests_pid" || status=1
  cat "$res/tests_stdout.log"
fi

if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/results.tgz" "$res"
fi
echo "results in $res (status $status)"
exit $status
