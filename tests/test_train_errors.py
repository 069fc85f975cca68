"""Bad input to the training side (checkpoints, fit/evaluate/predict, callbacks, data generators, the
`fastlstm` command) gives a TypeError/ValueError/CheckpointError that names the argument or file, and the
command line prints one line and exits non-zero, never a traceback.

Run: pytest -q tests/test_train_errors.py
"""

import io
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import fastlstm.checkpoint as ckpt
from fastlstm import _backend, data, losses, nn, optim, tasks, train


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastlstm", *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, check=False)


def assert_one_line_error(out, *words):
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    for word in words:
        assert word in out.stderr, out.stderr


def char_lm():
    return nn.Sequential(nn.Embedding(5, 4, seed=0), nn.LSTM(4, 8, seed=1), nn.Linear(8, 5, seed=2))


def flip_zip_version(path):
    """Corrupt the "version needed to extract" of the first member in the zip's central directory."""
    raw = bytearray(Path(path).read_bytes())
    raw[raw.index(b"PK\x01\x02") + 6] ^= 0xFF
    Path(path).write_bytes(bytes(raw))


def write_checkpoint(path, header, weights=None, compress=False):
    """A .npz laid out like save() writes it, with any header (an object, or raw bytes) and weights."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    arrays = dict(weights or {})
    arrays["__fastlstm__"] = np.frombuffer(blob, np.uint8)
    (np.savez_compressed if compress else np.savez)(path, **arrays)
    return str(path)


def header_for(net, **changes):
    return {"format": "fastlstm-checkpoint", "version": 1, "model": net.config(), "meta": {}, **changes}


# ---- fastlstm.load: every malformed file is a CheckpointError naming the file ----------------------------

def test_load_reports_an_unsupported_zip_version_as_a_checkpoint_error(tmp_path):
    path = ckpt.save(char_lm(), tmp_path / "m.npz")
    flip_zip_version(path)
    with pytest.raises(ckpt.CheckpointError, match="m.npz: not a readable fastlstm checkpoint"):
        ckpt.load(path)


def test_load_reports_a_corrupted_compressed_member_as_a_checkpoint_error(tmp_path):
    model = char_lm()
    path = write_checkpoint(tmp_path / "c.npz", header_for(model), model.state_dict(), compress=True)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("1.weight_hh_l0.npy")
    raw = bytearray(Path(path).read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the member's deflate stream
    raw[start + 2:start + 40] = bytes(range(38))
    Path(path).write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match="c.npz: not a readable fastlstm checkpoint"):
        ckpt.load(path)


def test_load_reports_an_array_header_with_an_impossible_shape(tmp_path):
    model = char_lm()
    path = write_checkpoint(tmp_path / "h.npz", header_for(model), model.state_dict())
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": "<f4", "fortran_order": False, "shape": (10 ** 16,)})
    npy.write(b"\0" * 64)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("huge.npy", npy.getvalue())
    with pytest.raises(ckpt.CheckpointError, match="h.npz"):
        ckpt.load(path)


def test_load_reports_a_model_too_large_to_build(tmp_path):
    config = {"type": "Linear", "in_features": 10 ** 6, "out_features": 10 ** 6}
    path = write_checkpoint(tmp_path / "big.npz", {"format": "fastlstm-checkpoint", "version": 1, "model": config})
    with pytest.raises(ckpt.CheckpointError, match="big.npz: cannot build the stored model"):
        ckpt.load(path)


def test_load_reports_a_configuration_nested_too_deeply_to_rebuild(tmp_path):
    config = {"type": "Linear", "in_features": 2, "out_features": 2}
    for _ in range(450):
        config = {"type": "Sequential", "layers": [config]}
    path = write_checkpoint(tmp_path / "deep.npz", {"format": "fastlstm-checkpoint", "version": 1, "model": config})
    with pytest.raises(ckpt.CheckpointError, match="deep.npz"):
        ckpt.load(path)


def test_load_reports_a_header_nested_too_deeply(tmp_path):
    path = write_checkpoint(tmp_path / "n.npz", b"[" * 100000)
    with pytest.raises(ckpt.CheckpointError, match="n.npz: .*nested too deeply"):
        ckpt.load(path)


@pytest.mark.parametrize("changes,message", [
    ({"meta": [1, 2]}, "'meta' is a JSON array"),
    ({"meta": "x"}, "'meta' is a JSON string"),
    ({"model": [1]}, "'model' is a JSON array"),
    ({"version": True}, "format version True"),
])
def test_load_checks_the_header_layout(tmp_path, changes, message):
    model = char_lm()
    path = write_checkpoint(tmp_path / "bad.npz", header_for(model, **changes), model.state_dict())
    with pytest.raises(ckpt.CheckpointError, match=f"bad.npz: .*{message}"):
        ckpt.load_checkpoint(path)


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64, "U8"])
def test_load_rejects_weights_that_are_not_floating_point(tmp_path, dtype):
    model = char_lm()
    weights = model.state_dict()
    weights["2.weight"] = np.zeros(weights["2.weight"].shape, dtype)
    path = write_checkpoint(tmp_path / "w.npz", header_for(model), weights)
    with pytest.raises(ckpt.CheckpointError, match="w.npz: weight '2.weight'"):
        ckpt.load(path)


def test_sample_prints_one_line_for_a_malformed_checkpoint(tmp_path):
    model = char_lm()
    meta_list = write_checkpoint(tmp_path / "meta.npz", header_for(model, meta=["charlm"]), model.state_dict())
    assert_one_line_error(cli("sample", meta_list), "meta.npz", "'meta'")
    path = ckpt.save(model, tmp_path / "zipver.npz")
    flip_zip_version(path)
    assert_one_line_error(cli("sample", path), "zipver.npz")


def test_sample_rejects_a_vocabulary_that_does_not_fit_the_model(tmp_path):
    path = ckpt.save(char_lm(), tmp_path / "v.npz", meta={"task": "charlm", "vocab": 5})
    assert_one_line_error(cli("sample", path, "--length", "3"), "vocab")
    path = ckpt.save(char_lm(), tmp_path / "v3.npz", meta={"task": "charlm", "vocab": ["a", "b", "c"]})
    assert_one_line_error(cli("sample", path, "--length", "3"), "vocab")


# ---- fastlstm.save: path and meta ----------------------------------------------------------------------

def test_save_rejects_a_bytes_path():
    with pytest.raises(TypeError, match="path: expected a str or os.PathLike"):
        ckpt.save(char_lm(), b"/tmp/model.npz")


@pytest.mark.parametrize("name", ["", ".npz", "dir/"])
def test_save_rejects_a_path_without_a_file_name(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="path: expected a file name"):
        ckpt.save(char_lm(), name)
    assert not (tmp_path / ".npz").exists()


def test_save_rejects_meta_that_load_could_not_return(tmp_path):
    with pytest.raises(TypeError, match="meta: expected a dict"):
        ckpt.save(char_lm(), tmp_path / "m.npz", meta=[1, 2])


# ---- fit, evaluate, predict ---------------------------------------------------------------------------------

def adding_setup():
    rng = np.random.default_rng(0)
    x, y = data.adding_problem(64, 6, rng)
    model = nn.Sequential(nn.LSTM(2, 4, return_sequences=False, seed=1), nn.Linear(4, 1, seed=2))
    return model, (x, y)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -5.0])
def test_fit_rejects_a_schedule_value_before_the_optimizer_uses_it(value):
    model, xy = adding_setup()
    before = model.state_dict()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(ValueError, match=r"schedule: .* at step 0, got (nan|inf|-5\.0)"):
        train.fit(model, xy, losses.MSELoss(), opt, steps=3, batch_size=8, progress=False, schedule=lambda s: value)
    assert opt.lr == 1e-2
    for name, w in model.state_dict().items():
        np.testing.assert_array_equal(w, before[name], err_msg=name)


def test_fit_rejects_a_schedule_that_returns_no_number():
    model, xy = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(TypeError, match="schedule: .* at step 0, got str"):
        train.fit(model, xy, losses.MSELoss(), opt, steps=3, batch_size=8, progress=False, schedule=lambda s: "x")


def test_fit_rejects_a_schedule_that_is_not_callable():
    model, xy = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(TypeError, match="schedule: expected a callable"):
        train.fit(model, xy, losses.MSELoss(), opt, steps=3, batch_size=8, progress=False, schedule=5)


def test_fit_accepts_a_zero_learning_rate_from_its_schedule():
    model, xy = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    hist = train.fit(model, xy, losses.MSELoss(), opt, steps=2, batch_size=8, progress=False, log_every=1,
                     schedule=lambda s: 0)
    assert hist["lr"] == [0.0, 0.0]


@pytest.mark.parametrize("clip_norm,error", [(0, ValueError), (-1.0, ValueError), (math.nan, ValueError),
                                             ("1", TypeError)])
def test_fit_checks_clip_norm_up_front(clip_norm, error):
    model, xy = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(error, match="clip_norm"):
        train.fit(model, xy, losses.MSELoss(), opt, steps=2, batch_size=8, progress=False, clip_norm=clip_norm)


@pytest.mark.parametrize("batch_size,error", [(-1, ValueError), (0, ValueError), (2.5, TypeError),
                                              (None, TypeError), (True, TypeError)])
def test_evaluate_predict_and_fit_check_batch_size(batch_size, error):
    model, (x, y) = adding_setup()
    with pytest.raises(error, match="batch_size"):
        train.evaluate(model, (x, y), losses.MSELoss(), batch_size=batch_size)
    with pytest.raises(error, match="batch_size"):
        train.predict(model, x, batch_size=batch_size)
    with pytest.raises(error, match="batch_size"):
        train.fit(model, (x, y), losses.MSELoss(), optim.Adam(model.parameters(), 1e-2), steps=1,
                  batch_size=batch_size, progress=False)


# ---- callbacks -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,name", [
    ({"patience": "a"}, TypeError, "patience"),
    ({"patience": -1}, ValueError, "patience"),
    ({"patience": 2.5}, TypeError, "patience"),
    ({"min_delta": -0.1}, ValueError, "min_delta"),
    ({"min_delta": math.nan}, ValueError, "min_delta"),
    ({"monitor": 3}, TypeError, "monitor"),
    ({"restore_best": "yes"}, TypeError, "restore_best"),
    ({"mode": "up"}, ValueError, "mode"),
])
def test_early_stopping_checks_its_arguments(kwargs, error, name):
    with pytest.raises(error, match=f"^{name}: expected"):
        train.EarlyStopping(**kwargs)


def test_early_stopping_accepts_zero_patience():
    assert train.EarlyStopping(patience=0).patience == 0


@pytest.mark.parametrize("kwargs,error,name", [
    ({"path": b"/tmp/m.npz"}, TypeError, "path"),
    ({"path": None}, TypeError, "path"),
    ({"path": ""}, ValueError, "path"),
    ({"monitor": None}, TypeError, "monitor"),
    ({"save_best_only": "no"}, TypeError, "save_best_only"),
    ({"mode": "best"}, ValueError, "mode"),
    ({"meta": [1]}, TypeError, "meta"),
])
def test_model_checkpoint_checks_its_arguments(tmp_path, kwargs, error, name):
    kwargs = {"path": str(tmp_path / "m.npz"), **kwargs}
    with pytest.raises(error, match=f"^{name}: expected"):
        train.ModelCheckpoint(**kwargs)


# ---- data generators ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.int32, np.float16, "int64", bool])
def test_data_generators_need_a_float_dtype(dtype):
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64'"):
        data.adding_problem(4, 6, rng, dtype=dtype)
    with pytest.raises(TypeError, match="dtype: expected 'float32' or 'float64'"):
        data.seasonal_series(10, rng, dtype=dtype)


def test_data_generators_still_give_float64_when_asked():
    x, y = data.adding_problem(4, 6, np.random.default_rng(0), dtype=np.float64)
    assert x.dtype == y.dtype == np.float64 and x[:, :, 0].max() > 0


def test_data_generators_check_rng_and_series_parameters():
    with pytest.raises(TypeError, match="rng: expected a numpy.random.Generator"):
        data.adding_problem(4, 6, 0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="period: expected a finite positive number"):
        data.seasonal_series(10, rng, period=0)
    with pytest.raises(ValueError, match="noise: expected a finite number >= 0"):
        data.seasonal_series(10, rng, noise=-1.0)
    with pytest.raises(ValueError, match=r"series: expected a 1-D array .*got shape \(10, 2\)"):
        data.forecast_windows(np.zeros((10, 2)), 3, 2)
    with pytest.raises(TypeError, match="val_fraction"):
        data.CharCorpus("abc" * 100, seq_len=4, val_fraction="0.1")


def test_data_generators_check_memory_before_allocating():
    """A size no machine holds is a MemoryError naming the data before anything is drawn (nothing stopped a
    size just past the machine's memory short of the kernel's OOM killer)."""
    rng = np.random.default_rng(0)
    with pytest.raises(MemoryError, match=r"adding problem's data \(20000 sequences of 10000000000 steps\) needs"):
        data.adding_problem(20000, 10**10, rng)
    series = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(10**12,), strides=(0,))
    with pytest.raises(MemoryError, match=r"forecast_windows' .* windows of 1000000 \+ 24 values needs"):
        data.forecast_windows(series, 10**6, 24)
    corpus = data.CharCorpus("abcd" * 100, seq_len=8, val_fraction=0.0)
    with pytest.raises(MemoryError, match="a batch of 10000000000000 windows of 8 characters needs"):
        corpus.batches(10**13, rng)  # at the call, as its batch_size check


def test_train_reports_a_task_too_large_for_memory_in_one_line(tmp_path):
    out = cli("train", "--seq-len", str(10**10), "--steps", "1", "--no-progress", "--out", str(tmp_path / "run"))
    assert_one_line_error(out, "adding problem's data", "GiB of working memory")
    assert not (tmp_path / "run").exists()


# ---- tasks and the command line --------------------------------------------------------------------------------

@pytest.mark.parametrize("device,error", [("gpu", ValueError), (0, TypeError)])
def test_tasks_build_checks_device(device, error):
    with pytest.raises(error, match="device"):
        tasks.build("adding", hidden=4, seq_len=4, n_train=8, n_val=8, device=device)


def test_tasks_build_refuses_cuda_rather_than_training_on_the_cpu():
    # without a usable GPU: what is missing (RuntimeError, as the CUDA layer says it); with one: the
    # tasks' Linear/Embedding/RNN layers have no CUDA version, so it is refused, never silently ignored
    with pytest.raises(ValueError if _backend.cuda_usable() else RuntimeError, match="device"):
        tasks.build("adding", hidden=4, seq_len=4, n_train=8, n_val=8, device="cuda")


def test_train_device_cuda_is_not_silently_ignored(tmp_path):
    out = cli("train", "--device", "cuda", "--steps", "2", "--seq-len", "4", "--hidden", "4", "--no-progress",
              "--out", str(tmp_path / "run"))
    assert_one_line_error(out, "device", "cpu")
    assert not (tmp_path / "run" / "model.npz").exists()


@pytest.mark.parametrize("command", [("train", "--steps", "2"), ("sample", "model.npz")])
def test_seed_must_be_non_negative_and_the_message_names_it(command):
    out = cli(*command, "--seed", "-1")
    assert_one_line_error(out, "argument --seed: expected a non-negative integer")


def test_sample_length_must_be_non_negative_and_the_message_names_it():
    assert_one_line_error(cli("sample", "model.npz", "--length", "-5"), "argument --length")


def test_train_without_a_finite_validation_fails_and_leaves_an_earlier_checkpoint_alone(tmp_path):
    """Every validation non-finite (a learning rate of 1e38): nothing is saved, so the model.npz of an earlier
    run in the same --out must not be reported as this run's result (it was, with exit status 0)."""
    run, report = tmp_path / "run", tmp_path / "report.json"
    small = ("--steps", "1", "--seq-len", "4", "--batch-size", "2", "--no-progress", "--out", str(run))
    assert cli("train", "--hidden", "3", *small).returncode == 0
    earlier = (run / "model.npz").read_bytes()
    out = cli("train", "--hidden", "4", "--lr", "1e38", "--report", str(report), *small)
    assert_one_line_error(out, "no validation in 1 step gave a finite mse", "no checkpoint was written", "--lr")
    assert (run / "model.npz").read_bytes() == earlier and not report.exists()


def test_train_checks_its_output_files_are_not_directories_before_training(tmp_path):
    run = tmp_path / "run"
    for name in ("model.npz", "loss.png"):
        (run / name).mkdir(parents=True)
        out = cli("train", "--steps", "2", "--seq-len", "4", "--hidden", "4", "--no-progress", "--out", str(run))
        assert_one_line_error(out, f"{run / name} is a directory")
        assert "validation" not in out.stdout, "trained before noticing"
        (run / name).rmdir()


def test_train_names_seq_len_too_long_for_the_sine_series(tmp_path):
    out = cli("train", "--task", "sine", "--seq-len", "16000", "--steps", "1", "--no-progress",
              "--out", str(tmp_path / "run"))
    assert_one_line_error(out, "--seq-len: the sine task's training series has 16000 values", "at most 15976")

def test_train_checks_report_before_training(tmp_path):
    run = tmp_path / "run"
    out = cli("train", "--steps", "2", "--seq-len", "4", "--hidden", "4", "--no-progress", "--out", str(run),
              "--report", str(tmp_path))
    assert_one_line_error(out, "--report", "Is a directory")
    assert not (run / "model.npz").exists(), "training ran before the unusable --report was noticed"
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    out = cli("train", "--steps", "2", "--seq-len", "4", "--hidden", "4", "--no-progress", "--out", str(run),
              "--report", str(regular / "r.json"))
    assert_one_line_error(out, "--report")
    assert not (run / "model.npz").exists()


def test_train_checks_out_before_training(tmp_path):
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    out = cli("train", "--steps", "2", "--seq-len", "4", "--hidden", "4", "--no-progress", "--out", str(regular))
    assert_one_line_error(out, "--out", "not a directory")


def test_train_report_check_leaves_no_file_behind_and_a_good_report_is_written(tmp_path):
    report = tmp_path / "r.json"
    out = cli("train", "--steps", "2", "--seq-len", "4", "--hidden", "4", "--no-progress",
              "--out", str(tmp_path / "run"), "--report", str(report))
    assert out.returncode == 0, out.stderr
    assert json.loads(report.read_text())["steps"] == 2


# ---- fit: the schedule takes anything float() takes; the other arguments are named -------------------------

@pytest.mark.parametrize("make", [
    lambda s: np.where(s < 1, 0.01, 0.005),  # a 0-d array
    lambda s: np.float32(0.01),
    lambda s: __import__("decimal").Decimal("0.01"),
    lambda s: __import__("fractions").Fraction(1, 100),
])
def test_fit_takes_a_schedule_value_float_accepts(make):
    model, xy = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    hist = train.fit(model, xy, losses.MSELoss(), opt, steps=2, batch_size=8, progress=False, log_every=1,
                     schedule=make)
    assert all(isinstance(lr, float) for lr in hist["lr"]) and hist["lr"][-1] == pytest.approx(float(make(1)))


def test_fit_takes_a_torch_scalar_from_its_schedule():
    torch = pytest.importorskip("torch")
    model, xy = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    hist = train.fit(model, xy, losses.MSELoss(), opt, steps=1, batch_size=8, progress=False, log_every=1,
                     schedule=lambda s: torch.tensor(0.02))
    assert hist["lr"] == [pytest.approx(0.02)]


@pytest.mark.parametrize("value,error,what", [
    (None, TypeError, "got NoneType"), (True, TypeError, "got bool"), (1j, TypeError, "got complex"),
    (np.array([0.1]), ValueError, r"shape \(1,\)"), (10 ** 400, ValueError, "too large"),
], ids=["none", "bool", "complex", "shape1", "huge-int"])
def test_fit_names_the_schedule_for_values_float_refuses(value, error, what):
    model, xy = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    with pytest.raises(error, match=f"schedule: .* at step 0.*{what}"):
        train.fit(model, xy, losses.MSELoss(), opt, steps=1, batch_size=8, progress=False, schedule=lambda s: value)
    assert opt.lr == 1e-2


def test_fit_takes_none_or_a_single_callback():
    model, xy = adding_setup()
    fit = lambda cbs: train.fit(model, xy, losses.MSELoss(), optim.Adam(model.parameters(), 1e-2), steps=2,
                                batch_size=8, val=xy, eval_every=1, progress=False, callbacks=cbs)
    fit(None)
    stop = train.EarlyStopping(patience=0)
    hist = fit(stop)
    assert stop.best is not None and len(hist["val_loss"]) >= 1


@pytest.mark.parametrize("callbacks,name,got", [
    ([1], r"callbacks\[0\]", "int 1"), ([train.EarlyStopping(), "x"], r"callbacks\[1\]", "str 'x'"),
    ([train.EarlyStopping], r"callbacks\[0\]", r"the class EarlyStopping \(pass an instance"),
    (5, "callbacks", "int 5"), ("es", "callbacks", "str 'es'"),
], ids=["int", "str-item", "class", "int-alone", "str-alone"])
def test_fit_names_a_bad_callback(callbacks, name, got):
    model, xy = adding_setup()
    before = model.state_dict()
    with pytest.raises(TypeError, match=f"^{name}: expected .*got {got}"):
        train.fit(model, xy, losses.MSELoss(), optim.Adam(model.parameters(), 1e-2), steps=2, batch_size=8,
                  progress=False, callbacks=callbacks)
    np.testing.assert_array_equal(model.state_dict()["1.weight"], before["1.weight"])


def test_fit_names_loss_optimizer_and_model():
    model, xy = adding_setup()
    opt = optim.Adam(model.parameters(), 1e-2)
    with pytest.raises(TypeError, match="^loss: expected a callable loss"):
        train.fit(model, xy, "mse", opt, steps=1, progress=False)
    with pytest.raises(TypeError, match="^loss: expected a loss with sum_and_count"):
        train.fit(model, xy, lambda out, t: losses.MSELoss()(out, t), opt, steps=1, val=xy, progress=False)
    with pytest.raises(TypeError, match=r"^optimizer: expected an optimizer with step\(\), zero_grad\(\) and lr"):
        train.fit(model, xy, losses.MSELoss(), "sgd", steps=1, progress=False)
    with pytest.raises(TypeError, match="^model: expected a fastlstm.nn.Module"):
        train.fit("model", xy, losses.MSELoss(), opt, steps=1, progress=False)
    # a plain function is still a loss for training without validation
    train.fit(model, xy, lambda out, t: losses.MSELoss()(out, t), opt, steps=1, batch_size=8, progress=False)


def test_fit_evaluate_and_predict_take_lists():
    model, (x, y) = adding_setup()
    opt = optim.Adam(model.parameters(), 1e-2)
    train.fit(model, (x.tolist(), y.tolist()), losses.MSELoss(), opt, steps=1, batch_size=8, progress=False)
    assert train.evaluate(model, (x.tolist(), y.tolist()), losses.MSELoss()) == pytest.approx(
        train.evaluate(model, (x, y), losses.MSELoss()), rel=1e-5)
    assert train.predict(model, x.tolist()).shape == (len(x), 1)


@pytest.mark.parametrize("pair,error,message", [
    ((np.float32(1), np.float32(1)), ValueError, r"^data: expected inputs with the batch on axis 0, .*shape \(\)"),
    (("x", None), TypeError, "^data: expected inputs as an array"),
    (("ok", None), TypeError, "^data: expected inputs"),
    (([[1.0, 2.0], [3.0]], [1.0, 2.0]), ValueError, "^data: expected inputs as a rectangular array"),
    ((["a", "b"], [1.0, 2.0]), TypeError, "^data: expected inputs as an array of numbers"),
])
def test_fit_names_data_it_cannot_batch(pair, error, message):
    model, _ = adding_setup()
    with pytest.raises(error, match=message):
        train.fit(model, pair, losses.MSELoss(), optim.Adam(model.parameters(), 1e-2), steps=1, progress=False)


def test_fit_names_val_and_its_targets():
    model, (x, y) = adding_setup()
    with pytest.raises(TypeError, match="^val: expected targets"):
        train.fit(model, (x, y), losses.MSELoss(), optim.Adam(model.parameters(), 1e-2), steps=1, val=(x, None),
                  progress=False)
    with pytest.raises(ValueError, match="^val: expected at least one example"):
        train.fit(model, (x, y), losses.MSELoss(), optim.Adam(model.parameters(), 1e-2), steps=1,
                  val=(x[:0], y[:0]), progress=False)


def test_fit_seed_must_be_non_negative():
    model, xy = adding_setup()
    with pytest.raises(ValueError, match="^seed: expected None or a non-negative int, got -1"):
        train.fit(model, xy, losses.MSELoss(), optim.Adam(model.parameters(), 1e-2), steps=1, progress=False, seed=-1)
    train.fit(model, xy, losses.MSELoss(), optim.Adam(model.parameters(), 1e-2), steps=1, batch_size=8,
              progress=False, seed=np.int64(3))


def test_evaluate_and_predict_name_missing_data():
    model, (x, y) = adding_setup()
    with pytest.raises(TypeError, match="^data: expected a pair"):
        train.evaluate(model, None, losses.MSELoss())
    with pytest.raises(TypeError, match="^loss: expected"):
        train.evaluate(model, (x, y), None)
    with pytest.raises(TypeError, match="^inputs: expected"):
        train.predict(model, None)
    with pytest.raises(TypeError, match="^inputs: expected"):
        train.predict(model, 5)


def test_array_data_checks_batch_size_when_called_not_when_iterated():
    d = train.ArrayData(np.zeros((4, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="^batch_size"):
        d.eval_batches(0)
    with pytest.raises(ValueError, match="^batch_size"):
        d.batches(0, np.random.default_rng(0))


# ---- data: forecast_windows takes array-likes; CharCorpus names vocab, ids and batch_size ---------------------

def test_forecast_windows_takes_lists_and_torch_tensors():
    s = data.seasonal_series(60, np.random.default_rng(0))
    x, y = data.forecast_windows(s, 10, 2)
    xl, yl = data.forecast_windows(s.tolist(), np.int64(10), np.int64(2))
    np.testing.assert_allclose(xl, x)
    np.testing.assert_allclose(yl, y)
    torch = pytest.importorskip("torch")
    xt, yt = data.forecast_windows(torch.from_numpy(s), 10, 2)
    np.testing.assert_array_equal(xt, x)
    np.testing.assert_array_equal(yt, y)


@pytest.mark.parametrize("series,error,message", [
    (np.zeros(()), ValueError, r"got shape \(\)"), ([[1.0, 2.0], [3.0]], ValueError, "ragged"),
    (None, TypeError, "got NoneType"), ("abcdefghijklmnop", TypeError, "got str"),
    (["a"] * 20, TypeError, "array of numbers"),
])
def test_forecast_windows_names_a_bad_series(series, error, message):
    with pytest.raises(error, match=f"^series: .*{message}"):
        data.forecast_windows(series, 3, 2)


TEXT = "hello world, this is a little corpus of text. " * 20


@pytest.mark.parametrize("ids,error,message", [
    ([19], ValueError, r"ids\[0\]: expected an id in \[0, 19\), got 19"),
    ([1, -1], ValueError, r"ids\[1\]: expected an id in \[0, 19\), got -1"),
    (np.array([3, 99]), ValueError, r"ids\[1\]: expected an id in \[0, 19\), got 99"),
    ("ab", TypeError, r"ids: expected a 1-D sequence of integer ids in \[0, 19\), got str"),
    ([1.7], TypeError, r"ids\[0\]: expected an integer id"),
    ([True], TypeError, r"ids\[0\]: expected an integer id"),
    (np.array([1.5]), TypeError, "ids: .*dtype float64"),
    (np.array([[1]]), ValueError, r"ids: .*shape \(1, 1\)"),
    (None, TypeError, "ids: "),
])
def test_char_corpus_decode_checks_ids(ids, error, message):
    corpus = data.CharCorpus(TEXT, 10)
    assert corpus.vocab_size == 19
    with pytest.raises(error, match=f"^{message}"):
        corpus.decode(ids)


def test_char_corpus_decode_still_takes_numpy_ints_and_iterables():
    corpus = data.CharCorpus(TEXT, 10)
    ids = corpus.encode("hello")
    assert corpus.decode(ids) == corpus.decode(list(ids)) == corpus.decode(iter(ids.tolist())) == "hello"
    assert corpus.decode([np.int64(ids[0]), int(ids[1])]) == "he" and corpus.decode([]) == ""
    # whole floats and 0-d arrays, as decode took them before it checked its ids
    assert corpus.decode(ids.astype(float)) == corpus.decode([np.array(i) for i in ids]) == "hello"
    assert corpus.decode([float(i) for i in ids]) == "hello"


@pytest.mark.parametrize("vocab,error,name", [
    (5, TypeError, "vocab"), ([1, 2], TypeError, r"vocab\[0\]"), (["ab"], ValueError, r"vocab\[0\]"),
    (["a", "b", "a"], ValueError, r"vocab\[2\]"),
])
def test_char_corpus_checks_vocab(vocab, error, name):
    with pytest.raises(error, match=f"^{name}: "):
        data.CharCorpus(TEXT, 10, vocab=vocab)


@pytest.mark.parametrize("batch_size,error", [(0, ValueError), (-2, ValueError), (1.5, TypeError)])
def test_char_corpus_batches_check_batch_size_at_the_call(batch_size, error):
    corpus = data.CharCorpus(TEXT, 10)
    with pytest.raises(error, match="^batch_size: expected a positive int"):
        corpus.eval_batches(batch_size)
    with pytest.raises(error, match="^batch_size: expected a positive int"):
        corpus.batches(batch_size, np.random.default_rng(0))
    assert len(list(corpus.eval_batches(np.int64(4)))) >= 1


# ---- tasks: NumPy scalars in, wrong types are TypeErrors, wrong values ValueErrors -------------------------------

@pytest.fixture(scope="module")
def char_task():
    return tasks.build("charlm", text=TEXT, hidden=8, seq_len=20)


def test_generate_takes_numpy_scalars(char_task):
    a = tasks.generate(char_task.model, char_task.meta["vocab"], "he", np.int64(5), temperature=np.float32(0.8),
                       seed=np.int64(1))
    b = tasks.generate(char_task.model, char_task.meta["vocab"], "he", 5, temperature=0.8, seed=1)
    assert a == b and len(a) == 7


@pytest.mark.parametrize("kwargs,error,name", [
    ({"length": 5.0}, TypeError, "length"), ({"length": -1}, ValueError, "length"),
    ({"length": True}, TypeError, "length"),
    ({"temperature": "1"}, TypeError, "temperature"), ({"temperature": 0}, ValueError, "temperature"),
    ({"temperature": math.inf}, ValueError, "temperature"),
    ({"prime": None}, TypeError, "prime"), ({"prime": ["h"]}, TypeError, "prime"),
    ({"seed": -1}, ValueError, "seed"), ({"seed": 1.5}, TypeError, "seed"),
])
def test_generate_names_a_bad_argument(char_task, kwargs, error, name):
    args = {"prime": "he", "length": 5, **kwargs}
    with pytest.raises(error, match=f"^{name}: expected"):
        tasks.generate(char_task.model, char_task.meta["vocab"], **args)


@pytest.mark.parametrize("kwargs,error,name", [
    ({"seed": -1}, ValueError, "seed"), ({"seed": None}, TypeError, "seed"), ({"seed": "0"}, TypeError, "seed"),
    ({"n_train": 0}, ValueError, "n_train"), ({"n_val": 2.5}, TypeError, "n_val"),
])
def test_tasks_build_names_seed_and_sizes(kwargs, error, name):
    with pytest.raises(error, match=f"^{name}: expected"):
        tasks.build("adding", hidden=4, seq_len=4, **{"n_train": 8, "n_val": 8, **kwargs})


def test_tasks_build_takes_a_numpy_seed():
    task = tasks.build("adding", hidden=4, seq_len=4, n_train=8, n_val=8, seed=np.int64(3))
    assert task.train[0].shape == (8, 4, 2)


# ---- the command line: --report, --out, option names, the baseline wording, --length -----------------------------

TINY = ("train", "--steps", "2", "--seq-len", "4", "--hidden", "4", "--no-progress")


def test_report_may_not_be_the_out_directory(tmp_path):
    out = cli(*TINY, "--out", str(tmp_path / "run"), "--report", str(tmp_path / "run"))
    assert_one_line_error(out, "--report", "is the --out directory")


def test_array_data_batches_take_a_legacy_random_state():
    from fastlstm import train
    x, y = np.zeros((10, 3), np.float32), np.zeros((10, 1), np.float32)
    assert next(train.ArrayData(x, y).batches(4, np.random.RandomState(0)))[0].shape == (4, 3)


def test_a_fifo_without_a_reader_as_report_fails_without_blocking(tmp_path):
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)  # (once: the check opened it for writing and waited for a reader forever)
    out = subprocess.run([sys.executable, "-m", "fastlstm", *TINY, "--out", str(tmp_path / "run"),
                          "--report", str(fifo)], capture_output=True, text=True, timeout=60, check=False)
    assert_one_line_error(out, "--report", "a FIFO with no reader")


def test_a_fifo_with_a_reader_and_a_device_take_the_report(tmp_path):
    if os.name != "posix" or not os.path.exists(os.devnull):
        pytest.skip("no FIFOs or /dev/null")
    out = cli(*TINY, "--out", str(tmp_path / "run"), "--report", os.devnull)
    assert out.returncode == 0, out.stderr
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-c", f"print(open({str(fifo)!r}).read())"], stdout=subprocess.PIPE,
                              text=True)
    try:
        out = cli(*TINY, "--out", str(tmp_path / "run2"), "--report", str(fifo))
        received = reader.communicate(timeout=60)[0]
    finally:
        reader.kill()
    assert out.returncode == 0, out.stderr
    assert json.loads(received)["task"] == "adding"


@pytest.mark.parametrize("option", ["--out", "--report", "--text"])
def test_train_refuses_an_empty_path(tmp_path, option):
    out = cli(*TINY, option, "", cwd=tmp_path)
    assert_one_line_error(out, f"argument {option}: expected a path, got an empty value")
    assert not (tmp_path / "runs").exists(), "the default --out was used instead"


def test_train_checks_every_argument_before_creating_the_out_directory(tmp_path):
    run = tmp_path / "o2"
    out = cli(*TINY, "--out", str(run), "--seq-len", "1")
    assert_one_line_error(out, "--seq-len: expected at least 2")
    assert not run.exists()
    out = cli(*TINY, "--out", str(run), "--model", "rnn", "--layers", "2")
    assert_one_line_error(out, "--layers:")
    assert not run.exists()
    out = cli(*TINY, "--out", str(run), "--task", "sine", "--seq-len", "10")
    assert_one_line_error(out, "--seq-len: the sine task")
    assert not run.exists()


def test_train_report_may_go_into_the_out_directory_it_creates(tmp_path):
    run = tmp_path / "new"
    out = cli(*TINY, "--out", str(run), "--report", str(run / "r.json"))
    assert out.returncode == 0, out.stderr
    assert json.loads((run / "r.json").read_text())["steps"] == 2


def test_train_words_a_result_worse_than_the_baseline_correctly(tmp_path):
    from fastlstm.cli import _compare

    assert _compare(1.341, 0.1667) == "8.0x higher: worse than the baseline"
    assert _compare(0.01, 0.1667) == "16.7x lower"
    assert _compare(0.0, 0.1667) == "lower than the baseline"
    assert _compare(0.5, 0.0) == "higher: worse than the baseline"
    assert _compare(math.nan, 0.1667) == "not comparable"
    out = cli(*TINY, "--out", str(tmp_path / "run"))  # two steps: the loss is still well above the baseline
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.startswith("validation mse:"))
    metric, baseline = float(line.split()[2]), float(line.split("(baseline ")[1].split(",")[0])
    assert ("higher: worse than the baseline" in line) == (metric > baseline) and "0.1x lower" not in line
    assert _compare(0.157238, 0.157232) == "level with the baseline"  # the default --model rnn run


@pytest.mark.parametrize("length", ["99999999999999999999999", "10000001"])
def test_sample_length_has_an_upper_bound(length):
    out = cli("sample", "model.npz", "--length", length)
    assert_one_line_error(out, "argument --length: expected an integer from 0 to 10000000")


@pytest.mark.parametrize("name,what", [("model.npz", "checkpoint"), ("loss.png", "loss plot")])
def test_report_may_not_overwrite_a_file_the_run_writes(tmp_path, name, what):
    run = tmp_path / "run"
    (tmp_path / "link").symlink_to(run)  # (to the directory --out makes: the same file by another name)
    for report in (run / name, tmp_path / "link" / name, run / ".." / "run" / name):
        out = cli(*TINY, "--out", str(run), "--report", str(report))
        assert_one_line_error(out, "--report", f"is where this run writes its {what}")
    assert not run.exists(), "the run started before the clash was noticed"


def test_report_may_not_overwrite_the_text_input(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_text("hello world " * 40)
    out = cli(*TINY, "--task", "charlm", "--text", str(text), "--out", str(tmp_path / "run"), "--report", str(text))
    assert_one_line_error(out, "--report", "is the --text input")
    assert text.read_text() == "hello world " * 40


def test_text_is_refused_for_tasks_that_read_none(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("some text")
    out = cli(*TINY, "--task", "sine", "--text", str(text), "--out", str(tmp_path / "run"))
    assert_one_line_error(out, "--text", "only --task charlm trains on a text (this is --task sine)")
    assert not (tmp_path / "run").exists()


def test_bench_checks_its_csv_path_before_measuring(tmp_path):
    (tmp_path / "file").write_text("x")
    args = ("bench", "--quick", "--no-torch", "--no-reference", "--configs", "2,1,2,2", "--csv")
    for path, why in ((tmp_path, "a directory; give a file name"),
                      (tmp_path / "file" / "b.csv", f"no directory {tmp_path / 'file'}"),
                      (tmp_path / "new" / "b.csv", f"no directory {tmp_path / 'new'}")):
        out = cli(*args, str(path))
        assert out.returncode == 2 and "GFLOP/s" not in out.stdout, "the benchmark ran first"
        assert_one_line_error(out, f"--csv {path}: {why}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # no directory made


def test_a_text_file_is_not_taken_for_a_pickle(tmp_path):
    report = tmp_path / "r.json"
    report.write_text('{"task": "adding"}')
    with pytest.raises(ckpt.CheckpointError, match=r"not an \.npz archive: it starts with b'\{\"task'\)"):
        ckpt.load(report)


def test_a_huge_model_without_its_weights_is_refused_before_any_weight_is_drawn(tmp_path):
    """A 435-byte file that describes a 30000 x 30000 layer once took 30 s and 10 GiB to refuse. In a
    process of its own, with the memory check told there is room for it; its peak is VmHWM, the high-water
    mark of its own memory map (ru_maxrss also counts the parent's map it was spawned from)."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs Linux's /proc/self/status")
    header = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "model": {"type": "Sequential", "layers": [
        {"type": "Linear", "in_features": 30000, "out_features": 30000},
        {"type": "Embedding", "num_embeddings": 30000, "embedding_dim": 10000},
        {"type": "LSTM", "input_size": 10000, "hidden_size": 5000}]}}
    path = tmp_path / "big.npz"
    np.savez(path, __fastlstm__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    script = (
        "import sys\n"
        "import fastlstm, fastlstm._validate as V\n"
        "V._available_memory = lambda: 1 << 50\n"
        "try:\n"
        "    fastlstm.load(sys.argv[1])\n"
        "except fastlstm.checkpoint.CheckpointError as err:\n"
        "    print(err)\n"
        "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
        "print(int(hwm.split()[1]) // 1024)\n")
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    message, peak_mib = out.stdout.strip().rsplit("\n", 1)
    assert "missing keys ['0.bias', '0.weight'" in message, out.stdout + out.stderr
    assert int(peak_mib) < 512, f"peak {peak_mib} MiB: the layers' weights were written"


def test_generate_refuses_a_bidirectional_lstm_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Embedding(3, 4, seed=0), nn.LSTM(4, 5, bidirectional=True, seed=0),
                          nn.Linear(10, 3, seed=0))
    with pytest.raises(ValueError, match="^model: its LSTM is bidirectional"):
        tasks.generate(model, ["a", "b", "c"], "ab", 5, seed=0)
    assert model.training and all(layer.training for layer in model)


def test_generate_names_the_layers_of_a_model_it_cannot_sample():
    model = nn.Sequential(nn.Embedding(3, 4, seed=0), nn.RNN(4, 5, seed=0), nn.Linear(5, 3, seed=0))
    with pytest.raises(ValueError, match=r"^model: sampling runs an LSTM char-LM \(Embedding -> LSTM -> Linear\), "
                                         r"got Embedding -> RNN -> Linear$"):
        tasks.generate(model, ["a", "b", "c"], "ab", 5)


def test_generate_at_a_tiny_temperature_picks_the_likeliest_character(char_task):
    vocab = char_task.meta["vocab"]
    tiny = tasks.generate(char_task.model, vocab, "he", 8, temperature=1e-310, seed=0)
    other = tasks.generate(char_task.model, vocab, "he", 8, temperature=1e-300, seed=5)
    assert tiny == other and len(tiny) == 10  # (once: overflow, then 'Probabilities contain NaN')


@pytest.mark.parametrize("call,message", [
    (lambda: optim.Adam(nn.Linear(2, 2)), "params: expected an iterable of Parameters, got a Linear model; "
                                          "pass model.parameters()"),
    (lambda: optim.SGD(None, 0.1), r"params: expected an iterable of Parameters \(model.parameters\(\)\), "
                                   "got NoneType"),
    (lambda: optim.SGD("ab", 0.1), "params: expected an iterable of Parameters"),
    (lambda: optim.clip_grad_norm(nn.Sequential(nn.Linear(2, 2)), 1.0), "params: expected .* a Sequential model"),
    (lambda: optim.clip_grad_norm([1, 2], 1.0), r"params\[0\]: expected a Parameter .* got int"),
])
def test_optimizers_and_clipping_name_bad_params(call, message):
    with pytest.raises(TypeError, match=message):
        call()


def test_bench_csv_default_file_may_be_made_in_a_missing_directory(tmp_path, monkeypatch):
    from fastlstm.bench import csv_problem

    default = tmp_path / "results" / "bench_cpu.csv"  # (bench/bench_lstm.py's, in a checkout without it)
    assert csv_problem(default, default) is None
    monkeypatch.chdir(tmp_path)
    assert csv_problem(Path("results/bench_cpu.csv"), default) is None  # the same file, written relatively
    assert "no directory" in csv_problem(tmp_path / "other" / "b.csv", default)


# ---- a probe of bench, tasks and fit (session of the resume work) ----------------------------------------------
def test_bench_usage_errors_and_problems_too_large_are_one_line_before_any_timing(tmp_path):
    out = cli("bench", "--configs", "1,2")
    assert out.returncode == 2 and out.stderr.startswith("fastlstm: error: argument --configs")
    assert len(out.stderr.strip().splitlines()) == 1
    csv = tmp_path / "b.csv"
    out = cli("bench", "--quick", "--no-torch", "--no-reference", "--configs", "2,1,2,2", "1,1,1,100000",
              "--csv", str(csv))
    assert out.returncode == 2 and "GFLOP/s" not in out.stdout and not csv.exists()
    assert out.stderr.strip() == out.stderr.strip().splitlines()[0]
    assert out.stderr.startswith("fastlstm: error: --configs 1,1,1,100000: LSTM parameters and gradients needs")
    out = cli("bench", "--quick", "--no-torch", "--no-reference", "--configs", "100000,100000,8,8", "--csv", "")
    assert out.returncode == 2 and "--configs 100000,100000,8,8: timing it needs" in out.stderr


def test_bench_interrupted_prints_one_line():
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "fastlstm", "bench", "--no-torch", "--no-reference", "--csv", ""],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()  # "measuring SGEMM ...": the measuring has begun (the default sweep takes minutes)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = first + err
    assert proc.returncode == 130 and "Traceback" not in err and err.strip().endswith("fastlstm: interrupted")


def test_fit_closes_its_progress_bar_when_a_callback_refuses_to_start_and_names_a_finite_data():
    from tqdm import tqdm

    class Refuses(train.Callback):
        def on_train_begin(self, state):
            raise RuntimeError("no")

    model = nn.Sequential(nn.Linear(2, 1, seed=0))
    x, y = np.ones((8, 2), np.float32), np.ones((8, 1), np.float32)
    opt = optim.SGD(model.parameters(), lr=0.1)
    before = len(getattr(tqdm, "_instances", ()))
    with pytest.raises(RuntimeError, match="no") as refused:
        train.fit(model, (x, y), losses.MSELoss(), opt, steps=3, callbacks=[Refuses()])
    # while the error (and its traceback, which holds fit's frame) is alive, no bar of fit's is left open
    assert refused.traceback and len(getattr(tqdm, "_instances", ())) == before

    class Finite:
        def batches(self, batch_size, rng):
            return iter([(x, y)] * 2)

        def eval_batches(self, batch_size):
            return iter([(x, y)])

    with pytest.raises(ValueError, match=r"data: its batches\(\) ended after 2 batches; fit needs an endless"):
        train.fit(model, Finite(), losses.MSELoss(), opt, steps=3, progress=False)


def test_tasks_build_refuses_arguments_its_task_does_not_use():
    with pytest.raises(ValueError, match="n_train: only the adding task takes it"):
        tasks.build("sine", n_train=1)
    with pytest.raises(ValueError, match="text: only the charlm task takes it"):
        tasks.build("adding", text="abc", n_train=8, n_val=8)


def test_train_result_wording_never_prints_a_ratio_of_one():
    from fastlstm.cli import _compare

    assert _compare(1.775, 1.748) == "1.02x higher: worse than the baseline"
    assert _compare(1.70, 1.748) == "1.03x lower"
