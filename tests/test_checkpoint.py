"""Checkpoints (fastlstm.checkpoint): bit-identical round trip, atomic save under a simulated crash,
and clear errors for truncated, corrupted, foreign and missing files."""

import os

import numpy as np
import pytest

import fastlstm.checkpoint as ckpt
from fastlstm import nn


def small_model():
    return nn.Sequential(nn.Embedding(11, 4, seed=0), nn.LSTM(4, 6, num_layers=2, bidirectional=True, seed=1),
                         nn.Linear(12, 11, seed=2))


def test_round_trip_gives_bit_identical_predictions(tmp_path):
    model = small_model().eval()
    ids = np.random.default_rng(0).integers(0, 11, size=(3, 7))
    path = ckpt.save(model, tmp_path / "m", meta={"task": "charlm", "vocab": list("abcdefghijk")})
    assert path.endswith("m.npz")
    loaded, meta = ckpt.load_checkpoint(path)
    assert meta == {"task": "charlm", "vocab": list("abcdefghijk")}
    assert not loaded.training
    np.testing.assert_array_equal(loaded(ids), model(ids))
    with np.load(path, allow_pickle=False) as z:  # PyTorch names inside the LSTM
        assert "1.weight_ih_l0" in z.files and "1.bias_hh_l1_reverse" in z.files


def test_module_save_and_package_load(tmp_path):
    import fastlstm

    model = small_model().eval()
    ids = np.arange(6).reshape(2, 3)
    path = model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(fastlstm.load(path)(ids), model(ids))


def test_a_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_model()
    path = ckpt.save(model, tmp_path / "model.npz")
    before = open(path, "rb").read()

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", crash)
    for p in model.parameters():
        p.data[...] = 0
    with pytest.raises(OSError, match="simulated"):
        ckpt.save(model, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["model.npz"], "no temporary file is left behind"
    monkeypatch.undo()
    loaded = ckpt.load(path)
    assert any(np.any(p.data != 0) for p in loaded.parameters())


def test_truncated_file_is_a_clear_error(tmp_path):
    path = ckpt.save(small_model(), tmp_path / "m.npz")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="not a readable fastlstm checkpoint"):
        ckpt.load(path)


def test_corrupted_bytes_are_a_clear_error(tmp_path):
    path = ckpt.save(small_model(), tmp_path / "m.npz")
    data = bytearray(open(path, "rb").read())
    for i in range(100, len(data) - 200, 97):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(path)


def test_foreign_and_missing_files(tmp_path):
    foreign = tmp_path / "other.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="not a fastlstm checkpoint"):
        ckpt.load(foreign)
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load(text)
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        ckpt.load(tmp_path / "absent.npz")


def test_weights_that_do_not_fit_the_config_are_reported(tmp_path):
    path = ckpt.save(small_model(), tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["2.weight"] = np.zeros((3, 3), np.float32)
    np.savez(path, **arrays)
    with pytest.raises(ckpt.CheckpointError, match="do not fit"):
        ckpt.load(path)


def test_meta_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="meta: expected JSON-serialisable"):
        ckpt.save(small_model(), tmp_path / "m.npz", meta={"x": object()})


def test_npy_file_permissions_and_suffix(tmp_path):
    arr = tmp_path / "a.npy"
    np.save(arr, np.zeros(3))
    with pytest.raises(ckpt.CheckpointError, match="single NumPy array"):
        ckpt.load(arr)
    path = ckpt.save(small_model(), tmp_path / "plain")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert ckpt.load(tmp_path / "plain") is not None  # the name save() was given finds the file


def test_saving_over_a_checkpoint_keeps_its_permissions(tmp_path):
    """The replacement is a new file (written aside, then renamed): it takes the old one's mode, so a
    checkpoint a user made private stays private."""
    path = ckpt.save(small_model(), tmp_path / "m.npz")
    os.chmod(path, 0o600)
    ckpt.save(small_model(), path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert ckpt.load(path) is not None

def test_meta_takes_numpy_numbers_and_keeps_nan(tmp_path):
    # (a checkpoint of a diverged run may record a NaN loss; NumPy scalars are what metrics usually are)
    meta = {"loss": np.float32(0.5), "step": np.int64(3), "best": np.array(2.5), "diverged": float("nan")}
    path = ckpt.save(small_model(), str(tmp_path / "m.npz"), meta=meta)
    _, loaded = ckpt.load_checkpoint(path)
    assert loaded["loss"] == 0.5 and loaded["step"] == 3 and loaded["best"] == 2.5
    assert np.isnan(loaded["diverged"])


def test_unwritable_paths_are_reported_under_the_callers_name(tmp_path):
    (tmp_path / "afile").write_text("")
    (tmp_path / "adir.npz").mkdir()
    for path, exc in ((tmp_path / "afile" / "m.npz", FileExistsError), (tmp_path / "adir.npz", IsADirectoryError)):
        with pytest.raises(exc, match=f"path: cannot write a checkpoint at '{path}'"):
            ckpt.save(small_model(), str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.npz", "afile"]  # no temporary file left
    with pytest.raises(ValueError, match="NUL character"):
        ckpt.save(small_model(), str(tmp_path / "a\0b.npz"))


def test_loading_something_that_is_not_a_regular_file(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="not a regular file"):
        ckpt.load("/dev/null")


def test_model_checkpoint_checks_meta_before_training():
    from fastlstm import train
    with pytest.raises(TypeError, match="meta: expected JSON-serialisable values"):
        train.ModelCheckpoint("m.npz", meta={"f": object()})
    train.ModelCheckpoint("m.npz", meta={"lr": np.float32(0.1)})


def test_training_a_loaded_model_is_reproducible(tmp_path):
    """Dropout's masks come from the seed in the checkpoint, so every load trains the same way."""
    from fastlstm import losses, optim, train

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 6, 3)).astype(np.float32), rng.standard_normal((64, 1)).astype(np.float32)
    model = nn.Sequential(nn.LSTM(3, 8, num_layers=2, dropout=0.3, return_sequences=False), nn.Dropout(0.2),
                          nn.Linear(8, 1))
    path = ckpt.save(model, tmp_path / "m.npz")

    def fit_loaded():
        m = ckpt.load(path).train()
        train.fit(m, (x, y), losses.MSELoss(), optim.Adam(m.parameters(), lr=1e-2), steps=6, batch_size=16,
                  seed=0, progress=False)
        return [p.data.copy() for p in m.parameters()]

    for a, b in zip(fit_loaded(), fit_loaded()):
        np.testing.assert_array_equal(a, b)


# ---- resuming: the optimizer's state in the checkpoint, fit(initial_step=) --------------------------------------
def adding_run(tmp_path):
    from fastlstm import data, losses, optim, train

    rng = np.random.default_rng(0)
    (x, y), val = data.adding_problem(256, 12, rng), data.adding_problem(64, 12, rng)

    def model():
        return nn.Sequential(nn.LSTM(2, 8, return_sequences=False, seed=0), nn.Linear(8, 1, seed=1))

    def run(m, opt, **kw):
        return train.fit(m, (x, y), losses.MSELoss(), opt, steps=20, batch_size=16, seed=3, progress=False,
                         schedule=optim.CosineLR(1e-2, 20, warmup_steps=4), **kw)

    return model, run, val


def test_a_run_resumed_from_its_checkpoint_ends_bit_identical_to_one_never_stopped(tmp_path):
    """Stopped after its validation at step 8; the checkpoint holds model, Adam's moments and the step. Loaded,
    given to an optimizer by load_optimizer and run on with initial_step: the same weights as the run that
    went straight through (the schedule continues and the batches of steps 1-8 are skipped)."""
    from fastlstm import optim, train

    model, run, val = adding_run(tmp_path)
    straight = model()
    run(straight, optim.Adam(straight.parameters(), 1e-2))

    class StopAtFirstValidation(train.Callback):
        def on_validation_end(self, state, logs):
            state.stop = True

    path = tmp_path / "m.npz"
    first = model()
    saver = train.ModelCheckpoint(path, include_optimizer=True)
    run(first, optim.Adam(first.parameters(), 1e-2), val=val, eval_every=8, callbacks=[saver, StopAtFirstValidation()])
    resumed, meta = ckpt.load_checkpoint(path)
    assert meta["step"] == 8
    opt = optim.Adam(resumed.parameters(), 1e-2)
    ckpt.load_optimizer(path, opt)
    assert opt.steps == 8
    history = run(resumed.train(), opt, initial_step=meta["step"])
    assert history["step"] == [10, 20]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        np.testing.assert_array_equal(a.data, b.data)
    # without the optimizer's moments the same resume goes elsewhere: the state is what made it exact
    fresh, _ = ckpt.load_checkpoint(path)
    run(fresh.train(), optim.Adam(fresh.parameters(), 1e-2), initial_step=8)
    assert not np.array_equal(fresh.parameters()[0].data, straight.parameters()[0].data)


def test_load_optimizer_names_what_does_not_fit(tmp_path):
    from fastlstm import optim

    model = small_model()
    bare = ckpt.save(model, tmp_path / "bare.npz")
    with pytest.raises(ckpt.CheckpointError, match="holds no optimizer state"):
        ckpt.load_optimizer(bare, optim.Adam(model.parameters()))
    sgd = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for p in model.parameters():
        p.grad[...] = 1.0
    sgd.step()
    path = ckpt.save(model, tmp_path / "sgd.npz", optimizer=sgd)
    loaded, _ = ckpt.load_checkpoint(path)  # the optimizer's entries are not weights
    with pytest.raises(ckpt.CheckpointError, match="does not fit this optimizer.*state of a SGD, not of this Adam"):
        ckpt.load_optimizer(path, optim.Adam(loaded.parameters()))
    with pytest.raises(ckpt.CheckpointError, match=r"does not fit this optimizer.*expected shape"):
        ckpt.load_optimizer(path, optim.SGD(small_model().parameters()[::-1], lr=0.1, momentum=0.9))
    with pytest.raises(TypeError, match="optimizer: expected a fastlstm.optim optimizer"):
        ckpt.load_optimizer(path, "adam")
    with pytest.raises(TypeError, match="optimizer: expected a fastlstm.optim optimizer or None"):
        ckpt.save(model, tmp_path / "x.npz", optimizer=object())
    restored = optim.SGD(loaded.parameters(), lr=0.5, momentum=0.9)
    ckpt.load_optimizer(path, restored)
    assert restored.steps == 1 and restored.lr == 0.1
    np.testing.assert_array_equal(restored.state[0]["momentum"], sgd.state[0]["momentum"])


def test_fit_checks_initial_step_and_model_checkpoint_best(tmp_path):
    from fastlstm import optim, train

    model, run, val = adding_run(tmp_path)
    m = model()
    for bad, error in ((20, ValueError), (-1, ValueError), (True, TypeError), (2.0, TypeError)):
        with pytest.raises(error, match="initial_step"):
            run(m, optim.Adam(m.parameters(), 1e-2), initial_step=bad)
    for bad, error in (("0.1", TypeError), (float("nan"), ValueError)):
        with pytest.raises(error, match="best: expected None or a finite number"):
            train.ModelCheckpoint(tmp_path / "m.npz", best=bad)
    # a resumed run's checkpoint is not replaced by a worse validation
    saver = train.ModelCheckpoint(tmp_path / "m.npz", best=-1.0)
    run(m, optim.Adam(m.parameters(), 1e-2), val=val, eval_every=10, callbacks=[saver], initial_step=10)
    assert saver.saved_path is None and not (tmp_path / "m.npz").exists()


def test_the_format_version_says_whether_optimizer_state_is_inside(tmp_path):
    """A reader from before optimizer state says 'format version 2' instead of 'unexpected keys'."""
    import json
    from fastlstm import optim, train

    model = small_model()
    for optimizer, version in ((None, 1), (optim.SGD(model.parameters(), lr=0.1), 2)):
        path = ckpt.save(model, tmp_path / f"v{version}.npz", optimizer=optimizer)
        with np.load(path, allow_pickle=False) as z:
            assert json.loads(bytes(z["__fastlstm__"]))["version"] == version
        assert ckpt.load(path) is not None

    class Duck:  # fit takes any object with step, zero_grad and lr; a checkpoint of its state cannot be made
        lr = 0.1

        def step(self):
            pass

        def zero_grad(self):
            pass

    saver = train.ModelCheckpoint(tmp_path / "d.npz", include_optimizer=True)
    with pytest.raises(TypeError, match="include_optimizer needs a fastlstm.optim optimizer"):
        saver.on_train_begin(train.TrainState(model, Duck(), train.History()))


def test_early_stopping_resumes_from_the_best_checkpoint_as_if_never_stopped(tmp_path):
    """EarlyStopping(best=meta['val_loss']) on the resumed run: patience counts from the checkpoint, as it did
    when the checkpoint (the best validation) was written, and restore_best puts the loaded weights back. Here
    validation worsens right after step 20, the run stops two validations later; resumed from the step-20
    checkpoint without best=, the first worse validation would count as the best and the run would go on."""
    from fastlstm import data, losses, optim, train

    rng = np.random.default_rng(0)
    (x, y), val = data.adding_problem(256, 12, rng), data.adding_problem(64, 12, rng)

    def run(m, opt, callbacks, initial_step=0):
        return train.fit(m, (x, y), losses.MSELoss(), opt, steps=60, batch_size=16, seed=3, progress=False,
                         val=val, eval_every=4, callbacks=callbacks, initial_step=initial_step)

    def model():
        return nn.Sequential(nn.LSTM(2, 8, return_sequences=False, seed=0), nn.Linear(8, 1, seed=1))

    straight = model()
    history = run(straight, optim.Adam(straight.parameters(), 5e-2), [train.EarlyStopping(patience=2)])
    assert history["val_step"][-1] < 60, "the straight run should stop early for this test to mean anything"

    path = tmp_path / "m.npz"
    saver = train.ModelCheckpoint(path, include_optimizer=True)

    class StopAfterASave(train.Callback):  # cut short right after a checkpoint at step 20 or later
        def on_validation_end(self, state, logs):
            state.stop = state.step >= 20 and saver.best == logs["val_loss"]

    first = model()
    run(first, optim.Adam(first.parameters(), 5e-2), [train.EarlyStopping(patience=2), saver, StopAfterASave()])

    def resume(**kw):
        resumed, meta = ckpt.load_checkpoint(path)
        opt = optim.Adam(resumed.parameters(), 5e-2)
        ckpt.load_optimizer(path, opt)
        best = {"best": meta["val_loss"]} if kw.get("with_best") else {}
        run(resumed.train(), opt, [train.EarlyStopping(patience=2, **best)], initial_step=meta["step"])
        return all(np.array_equal(a.data, b.data) for a, b in zip(straight.parameters(), resumed.parameters()))

    assert resume(with_best=True)
    assert not resume(), "without best= the resumed run should have gone elsewhere"
    with pytest.raises(ValueError, match="best: expected None or a finite number"):
        train.EarlyStopping(best=float("inf"))
