"""The fastlstm command line end to end, on tiny settings, in a subprocess (as a user runs it)."""

import json
import shlex
import subprocess
import sys

import numpy as np
import pytest

from fastlstm import data


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastlstm", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_train_adding_writes_checkpoint_report_and_reports_the_baseline(tmp_path):
    report = tmp_path / "r.json"
    out = cli("train", "--steps", "30", "--seq-len", "8", "--hidden", "8", "--no-progress",
              "--out", str(tmp_path / "run"), "--report", str(report))
    assert out.returncode == 0, out.stderr
    # the baseline is always answering 1.0 scored on the run's own validation set (1/6 in expectation)
    rng = np.random.default_rng(0)  # the run's seed: its training set is drawn first, then the validation set
    data.adding_problem(20000, 8, rng)
    _, val_y = data.adding_problem(2000, 8, rng)
    assert "baseline 0.1656" in out.stdout and "validation mse:" in out.stdout
    r = json.loads(report.read_text())
    assert {"task", "val_metric_name", "val_metric", "baseline_metric", "steps", "seconds"} <= set(r)
    assert r["task"] == "adding" and r["steps"] == 30 and r["val_metric_name"] == "mse"
    assert r["baseline_metric"] == float(np.mean((val_y.astype(np.float64) - 1.0) ** 2))
    assert (tmp_path / "run" / "model.npz").is_file()


def test_train_charlm_then_sample(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world, hello fastlstm. " * 30, encoding="utf-8")
    run = tmp_path / "lm"
    out = cli("train", "--task", "charlm", "--text", str(text), "--steps", "20", "--seq-len", "16",
              "--hidden", "16", "--no-progress", "--out", str(run))
    assert out.returncode == 0, out.stderr
    out = cli("sample", str(run / "model.npz"), "--prime", "hel", "--length", "25", "--temperature", "0.7",
              "--seed", "1")
    assert out.returncode == 0, out.stderr
    sample = out.stdout.rstrip("\n")
    assert sample.startswith("hel") and len(sample) == 28
    again = cli("sample", str(run / "model.npz"), "--prime", "hel", "--length", "25", "--temperature", "0.7",
                "--seed", "1")
    assert again.stdout == out.stdout


def test_train_rnn_baseline_runs(tmp_path):
    out = cli("train", "--model", "rnn", "--steps", "10", "--seq-len", "6", "--hidden", "8", "--no-progress",
              "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "RNN" in out.stdout


@pytest.mark.parametrize("args,message", [
    (("train", "--steps", "0"), "expected a positive integer"),
    (("train", "--task", "charlm"), "give --text FILE"),
    (("train", "--task", "charlm", "--text", "/no/such/file.txt"), "no such file"),
    (("train", "--task", "nope"), "invalid choice"),
    (("sample", "/no/such/model.npz"), "no such checkpoint"),
    (("train", "--lr", "inf"), "expected a positive number"),
    (("train", "--clip", "nan"), "expected a non-negative number"),
])
def test_bad_arguments_give_one_line_and_a_nonzero_exit(args, message):
    out = cli(*args)
    assert out.returncode != 0
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_sample_rejects_a_foreign_or_non_charlm_file(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(2))
    out = cli("sample", str(bad))
    assert out.returncode == 1 and "not a fastlstm checkpoint" in out.stderr and "Traceback" not in out.stderr


def test_info_prints_the_build():
    out = cli("info")
    assert out.returncode == 0 and "isa_selected" in out.stdout and "cuda_compiled" in out.stdout


def test_bench_runs_through_the_cli(tmp_path):
    out = cli("bench", "--quick", "--repeat", "3", "--no-reference", "--no-torch", "--configs", "5,1,4,4",
              "--varlen", "--features", "--scaling", "--csv", str(tmp_path / "b.csv"))
    assert out.returncode == 0, out.stderr
    assert "GFLOP/s" in out.stdout and (tmp_path / "b.csv").is_file()
    assert "variable-length batches" in out.stdout and "90% short" in out.stdout
    assert "layer features" in out.stdout and "recurrent dropout" in out.stdout
    assert "thread scaling" in out.stdout  # (a table, or why not on a machine of one thread)


# ---- fastlstm train --resume -------------------------------------------------------------------------------
SMALL_RUN = ("--steps", "40", "--seq-len", "10", "--hidden", "8", "--eval-every", "10", "--no-progress")


def checkpoint_arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_an_interrupted_run_resumed_ends_with_the_checkpoint_of_a_run_never_stopped(tmp_path, monkeypatch, capsys):
    """In process: Ctrl-C arrives right after the checkpoint of step 20 (the validation there is saved first);
    --resume takes the run's settings, model and Adam state from that checkpoint and trains steps 21-40. Its
    final checkpoint (the best validation) is byte for byte the one of the same run left alone."""
    from fastlstm import cli as fcli, train

    assert fcli.main(["train", *SMALL_RUN, "--out", str(tmp_path / "straight")]) == 0
    save = train.ModelCheckpoint.on_validation_end

    def save_then_interrupt(self, state, logs):
        save(self, state, logs)
        if state.step == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(train.ModelCheckpoint, "on_validation_end", save_then_interrupt)
    run = tmp_path / "interrupted"
    assert fcli.main(["train", *SMALL_RUN, "--out", str(run)]) == 130
    hint = capsys.readouterr().err.split("holds the best validation so far; ")[1].split(" continues from it")[0]
    monkeypatch.undo()
    command = shlex.split(hint)  # the command the interrupted run printed, as a user would paste it
    assert command[:3] == ["fastlstm", "train", "--resume"] and "--steps" in command
    assert fcli.main([*command[1:], "--no-progress"]) == 0
    assert "resuming at step 20" in capsys.readouterr().out
    straight, resumed = checkpoint_arrays(tmp_path / "straight" / "model.npz"), checkpoint_arrays(run / "model.npz")
    assert sorted(straight) == sorted(resumed) and any(k.startswith("__optimizer__.") for k in straight)
    for key in straight:
        np.testing.assert_array_equal(straight[key], resumed[key], err_msg=key)


def test_resume_refuses_what_does_not_fit_the_run(tmp_path):
    run = tmp_path / "run"
    out = cli("train", "--resume", "--no-progress", "--out", str(run))
    assert out.returncode == 1 and f"--resume: no checkpoint {run / 'model.npz'} to resume" in out.stderr
    assert cli("train", *SMALL_RUN, "--out", str(run)).returncode == 0
    for args, message in [(("--hidden", "16"), "--hidden: the run being resumed has 8, got 16"),
                          (("--task", "sine"), "--task: the run being resumed has 'adding', got 'sine'"),
                          (("--seed", "1"), "--seed: the run being resumed has 0, got 1"),
                          ((), "finished its 40 steps (its best validation, the checkpoint, is from step"),
                          (("--steps", "10"), "--steps 10: the checkpoint being resumed is from step")]:
        out = cli("train", "--resume", "--no-progress", "--out", str(run), *args)
        assert out.returncode == 1 and message in out.stderr, out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
    out = cli("train", "--resume", "--no-progress", "--out", str(run), "--hidden", "8", "--steps", "60")
    assert out.returncode == 0 and "resuming at step 40" in out.stdout, out.stderr


def test_resume_a_charlm_run_needs_its_text(tmp_path):
    text, other = tmp_path / "t.txt", tmp_path / "o.txt"
    text.write_text("hello world, hello fastlstm. " * 30, encoding="utf-8")
    other.write_text("a different text with other letters: xyzq " * 30, encoding="utf-8")
    run = tmp_path / "lm"
    args = ("--task", "charlm", "--seq-len", "16", "--hidden", "16", "--no-progress", "--out", str(run))
    assert cli("train", "--text", str(text), "--steps", "20", *args).returncode == 0
    out = cli("train", "--resume", "--steps", "30", *args)
    assert out.returncode == 1 and "--task charlm trains on a text file" in out.stderr
    out = cli("train", "--resume", "--steps", "30", "--text", str(other), *args)
    assert out.returncode == 1 and "not the text of the run being resumed" in out.stderr
    out = cli("train", "--resume", "--steps", "30", "--text", str(text), *args)
    assert out.returncode == 0 and "resuming at step 20" in out.stdout, out.stderr
