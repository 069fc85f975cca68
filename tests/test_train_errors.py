"""Bad input to the training side (checkpoints, fit/evaluate/predict, callbacks, data generators, the
`fastlstm` command) gives a TypeError/ValueError/CheckpointError that names the argument or file, and the
command line prints one line and exits non-zero, never a traceback.

Run: pytest -q tests/test_train_errors.py
"""

import io
import json
import math
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
    with pytest.raises(TypeError, match="series: expected a 1-D numpy.ndarray"):
        data.forecast_windows(np.zeros((10, 2)), 3, 2)
    with pytest.raises(TypeError, match="val_fraction"):
        data.CharCorpus("abc" * 100, seq_len=4, val_fraction="0.1")


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
