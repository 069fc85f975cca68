"""The benchmark stays runnable: a --quick smoke run (checks that it completes and reports, not speed), and
its bookkeeping: how reps are spread over the alternating rounds and the per-round speedups."""

import csv
import subprocess
import sys
from pathlib import Path

from fastlstm import bench

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_lstm.py"


def test_bench_quick_smoke(tmp_path):
    csv_path = tmp_path / "bench.csv"
    out = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeat", "3", "--rounds", "3", "--no-reference",
                          "--csv", str(csv_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fastlstm" in out.stdout and "GFLOP/s" in out.stdout
    assert "median ms over 3 alternating rounds" in out.stdout
    records = list(csv.DictReader(csv_path.open()))
    assert len(records) == 2 * 2, "2 quick configs x 2 modes"
    for rec in records:
        assert int(rec["fastlstm_reps"]) == 3, "--repeat 3: one rep in each of the 3 rounds"
        if rec["speedup_vs_torch_best"]:  # (torch installed): a speedup from each of the 3 rounds' medians
            low, high = float(rec["speedup_round_min"]), float(rec["speedup_round_max"])
            assert 0 < low <= high


def test_reps_are_spread_evenly_over_rounds_and_every_fast_method_gets_one_a_round():
    assert bench.reps_per_round(5, 6) == [1, 1, 1, 1, 1, 0]  # the reference's few reps sit out late rounds
    assert bench.reps_per_round(13, 6) == [3, 2, 2, 2, 2, 2]
    assert bench.reps_per_round(12, 6) == [2] * 6
    plan = bench.TimingPlan(rounds=6, min_reps=5, target_s=1.0)
    fast = bench.Method("fastlstm", lambda: None)
    assert bench.choose_reps(fast, 10.0, plan) == 6, "a slow run still gets one rep a round"
    assert bench.choose_reps(fast, 0.001, plan) == plan.max_reps
    slow = bench.Method("reference", lambda: None, slow=True)
    assert bench.choose_reps(slow, 10.0, plan) == 1


def test_per_round_speedups_compare_medians_within_each_round():
    def meas(*rounds):
        return bench.Measurement(rounds=[list(r) for r in rounds])

    cfg = bench.Config(10, 1, 4, 4)
    ours = meas([1.0, 1.2, 1.1], [2.0], [])  # no reps in round 3: no ratio there
    torch = {1: meas([2.2], [2.0], [2.0]), 2: meas([3.0], [3.0], [3.0])}
    row = bench.Row(cfg, "forward", ours, torch, None, None, 100.0)
    assert row.torch_best == (1, 2000.0)
    assert row.speedup_vs_torch_rounds == [2.0, 1.0]  # 2.2 / 1.1, then 2.0 / 2.0
    assert bench.fmt_range(row.speedup_vs_torch_rounds) == "1.00-2.00x"
    assert bench.Row(cfg, "forward", ours, {}, None, None, 100.0).speedup_vs_torch_rounds == []


def test_bench_cuda_without_a_gpu_exits_with_status_2_and_says_why():
    from fastlstm import _backend
    if _backend.cuda_usable():
        import pytest
        pytest.skip("a GPU is usable here: bench/gpu_check.sh runs the CUDA benchmark")
    out = subprocess.run([sys.executable, str(BENCH), "--device", "cuda", "--quick", "--csv", ""],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--device cpu" in out.stderr


def test_thread_budgets_and_the_scaling_table():
    assert bench.thread_budgets(1) == [1]
    assert bench.thread_budgets(2) == [1, 2]
    assert bench.thread_budgets(6) == [1, 2, 4, 6]
    assert bench.thread_budgets(8) == [1, 2, 4, 8]
    cfg = bench.Config(1000, 1, 16, 16)
    rows = [(cfg, "forward", {"budget 1": 0.30, "budget 2": 0.40, "forced 2": 0.60}),
            (cfg, "fwd+bwd", {"budget 1": 1.00, "budget 2": 0.50, "forced 2": None})]
    table = bench.scaling_table(rows, [1, 2], markdown=True).splitlines()
    assert table[0].startswith("thread scaling:")
    assert table[2] == ("| T | B | I | H | mode | 1 thread ms | 2 threads ms | 2 forced ms | default vs best | "
                        "forced vs default |")
    assert table[4] == "| 1000 | 1 | 16 | 16 | forward | 0.300 | 0.400 | 0.600 | 0.75x | 1.50x |"
    assert table[5] == "| 1000 | 1 | 16 | 16 | fwd+bwd | 1.000 | 0.500 | - | 1.00x | - |"
