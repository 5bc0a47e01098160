"""Turn a benchmark run into REPORT.md + plots: `python bench/report.py bench/results/<run>`.

scripts/gpu_check.sh calls this after the benchmarks; the code is the package's
`autoglm-kernels report` (autoglm_kernels/cli/report.py).
"""

import sys

from autoglm_kernels.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["report", *sys.argv[1:]]))
