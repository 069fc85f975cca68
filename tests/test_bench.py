"""The benchmark stays runnable: a --quick smoke run (checks that it completes and reports, not speed)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_lstm.py"


def test_bench_quick_smoke(tmp_path):
    csv_path = tmp_path / "bench.csv"
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeat", "3", "--no-reference",
                          "--csv", str(csv_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fastlstm" in out.stdout and "GFLOP/s" in out.stdout
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 1 + 2 * 2, "header + (2 quick configs x 2 modes)"


def test_bench_cuda_without_a_gpu_exits_with_status_2_and_says_why():
    from fastlstm import _backend
    if _backend.cuda_usable():
        import pytest
        pytest.skip("a GPU is usable here: bench/gpu_check.sh runs the CUDA benchmark")
    out = subprocess.run([sys.executable, str(BENCH), "--device", "cuda", "--quick", "--csv", ""],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--device cpu" in out.stderr
