"""fit / evaluate / predict, callbacks, and that each built-in task's loss falls on tiny settings."""

import numpy as np
import pytest

from fastlstm import data, losses, nn, optim, tasks, train


def adding_setup(seed=0, T=10, H=16):
    rng = np.random.default_rng(seed)
    xtr, ytr = data.adding_problem(512, T, rng)
    xv, yv = data.adding_problem(128, T, rng)
    model = nn.Sequential(nn.LSTM(2, H, return_sequences=False, seed=1), nn.Linear(H, 1, seed=2))
    return model, (xtr, ytr), (xv, yv)


def run(seed=0, steps=40, **kw):
    model, tr, va = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    hist = train.fit(model, tr, losses.MSELoss(), opt, steps=steps, batch_size=32, val=va, seed=seed,
                     progress=False, clip_norm=1.0, schedule=optim.CosineLR(1e-2, steps), **kw)
    return model, hist


def test_fit_is_deterministic_for_a_seed():
    m1, h1 = run(seed=3)
    m2, h2 = run(seed=3)
    assert h1["loss"] == h2["loss"] and h1["val_loss"] == h2["val_loss"]
    for (n, a), (_, b) in zip(m1.named_parameters(), m2.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=n)
    _, h3 = run(seed=4)
    assert h3["loss"] != h1["loss"]


def test_history_records_loss_lr_throughput_and_validation():
    _, hist = run(steps=40)
    assert hist["step"] == [10, 20, 30, 40]
    assert len(hist["val_loss"]) == 10 and hist["val_step"][-1] == 40
    assert all(r > 0 for r in hist["tokens_per_s"])
    assert hist["lr"][0] > hist["lr"][-1]
    assert hist.last("seconds") > 0


def test_early_stopping_stops_and_restores_the_best_weights():
    stopper = train.EarlyStopping(patience=1, min_delta=10.0)  # nothing improves by 10: stops at the 2nd
    model, hist = run(steps=100, eval_every=10, callbacks=[stopper])
    assert hist["val_step"] == [10, 20]
    assert stopper.best_step == 10
    _, _, va = adding_setup()
    assert train.evaluate(model, va, losses.MSELoss()) == pytest.approx(stopper.best, rel=1e-6)


def test_model_checkpoint_keeps_the_best(tmp_path):
    from fastlstm import checkpoint

    saver = train.ModelCheckpoint(tmp_path / "best.npz", meta={"task": "adding"})
    model, hist = run(steps=40, callbacks=[saver])
    best = min(hist["val_loss"])
    loaded, meta = checkpoint.load_checkpoint(saver.saved_path)
    assert meta["task"] == "adding" and meta["val_loss"] == pytest.approx(best)
    _, _, va = adding_setup()
    assert train.evaluate(loaded, va, losses.MSELoss()) == pytest.approx(best, rel=1e-6)


def test_evaluate_and_predict_use_eval_mode_and_restore_it():
    model, _, va = adding_setup()
    model.train()
    pred = train.predict(model, va[0], batch_size=50)
    assert pred.shape == (128, 1) and model.training
    mse = float(np.mean((pred - va[1]) ** 2))
    assert train.evaluate(model, va, losses.MSELoss(), batch_size=7) == pytest.approx(mse, rel=1e-5)


def test_fit_argument_errors():
    model, tr, _ = adding_setup()
    opt = optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="exactly one of steps= and epochs="):
        train.fit(model, tr, losses.MSELoss(), opt, progress=False)
    with pytest.raises(TypeError, match="data: expected a pair"):
        train.fit(model, [1, 2, 3], losses.MSELoss(), opt, steps=1, progress=False)
    with pytest.raises(FloatingPointError, match="loss became"):
        x, y = tr
        train.fit(model, (x, y * np.inf), losses.MSELoss(), opt, steps=1, progress=False)


@pytest.mark.parametrize("name,kw,steps", [
    ("adding", dict(seq_len=10, hidden=16, n_train=2000, n_val=300), 150),
    ("sine", dict(seq_len=24, hidden=16), 150),
    ("charlm", dict(seq_len=20, hidden=32, text="the quick brown fox jumps over the lazy dog. " * 40), 150),
])
def test_each_task_learns_something_on_tiny_settings(name, kw, steps):
    task = tasks.build(name, seed=0, **kw)
    before = train.evaluate(task.model, task.val, task.loss)
    opt = optim.Adam(task.model.parameters(), lr=1e-2)
    train.fit(task.model, task.train, task.loss, opt, steps=steps, batch_size=32, val=None, seed=0,
              progress=False, clip_norm=1.0)
    after = train.evaluate(task.model, task.val, task.loss)
    assert after < 0.7 * before, (before, after)
    if name == "charlm":
        assert after < task.baseline  # better than unigram frequencies
        out = tasks.generate(task.model, task.meta["vocab"], "the ", 30, temperature=0.5, seed=0)
        assert out.startswith("the ") and len(out) == 34 and set(out) <= set(task.meta["vocab"])


def test_adding_problem_has_two_markers_and_the_right_sum():
    x, y = data.adding_problem(50, 12, np.random.default_rng(0))
    assert x.shape == (50, 12, 2) and y.shape == (50, 1)
    assert np.all(x[:, :, 1].sum(axis=1) == 2)
    assert np.all(x[:, :6, 1].sum(axis=1) == 1)
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * x[:, :, 1]).sum(axis=1), rtol=1e-6)
    # always answering 1.0 scores about 1/6
    xb, yb = data.adding_problem(20000, 12, np.random.default_rng(1))
    assert float(np.mean((yb - 1) ** 2)) == pytest.approx(data.ADDING_BASELINE_MSE, rel=0.03)


def test_callbacks_start_fresh_in_each_fit():
    stopper = train.EarlyStopping(patience=1, min_delta=10.0)
    m1, _ = run(steps=40, eval_every=10, callbacks=[stopper])
    model, tr, va = adding_setup()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    hist = train.fit(model, tr, losses.MSELoss(), opt, steps=40, batch_size=32, val=va, eval_every=10,
                     progress=False, callbacks=[stopper])
    assert hist["val_step"] == [10, 20]  # a fresh patience count, not the first run's
    for (n, a), (_, b) in zip(model.named_parameters(), m1.named_parameters()):
        assert not np.array_equal(a.data, b.data), f"{n}: the first model's weights leaked into the second"


def test_char_corpus_refuses_a_validation_part_shorter_than_a_window():
    with pytest.raises(ValueError, match="validation part"):
        data.CharCorpus("abcdefghij" * 100, seq_len=100)
    corpus = data.CharCorpus("abcdefghij" * 100, seq_len=100, val_fraction=0.0)
    assert next(corpus.eval_batches(4))[0].shape == (4, 100)
