"""The benchmark stays runnable: a --quick smoke run (checks that it completes and reports, not speed)."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_lstm.py"


def test_bench_quick_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_lstm", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    csv_path = tmp_path / "bench.csv"
    assert bench.main(["--quick", "--repeat", "3", "--no-reference", "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out
    assert "fastlstm" in out and "GFLOP/s" in out
    lines = csv_path.read_text().splitlines()
    assert len(lines) == 1 + 2 * 2, "header + (2 quick configs x 2 modes)"
