#!/usr/bin/env python
"""The CPU kernel benchmark (fastlstm.bench), run from the repository: results go to bench/results/.

    python bench/bench_lstm.py [--quick] [--configs T,B,I,H ...] [--markdown]   # same as `fastlstm bench`

See python/fastlstm/bench.py for what is measured and how.
"""

import sys
from pathlib import Path

from fastlstm.bench import main

if __name__ == "__main__":
    sys.exit(main(prog="bench_lstm.py", default_csv=Path(__file__).resolve().parent / "results" / "bench_cpu.csv"))
