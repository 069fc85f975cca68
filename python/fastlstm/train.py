"""Training loop: ``fit``, ``evaluate``, ``predict``, callbacks and the metric history.

What this is: the loop every example and the CLI use. ``fit`` draws shuffled mini-batches with a seed,
runs forward, loss, backward, optional global-norm clipping, a learning-rate schedule and the
optimizer step; it validates every ``eval_every`` steps, shows a tqdm bar (loss, tokens/s, last
validation) and calls callbacks (``EarlyStopping``, ``ModelCheckpoint``), and returns a ``History``.
On the CPU a run is deterministic for a given seed. What it is not: distributed or mixed-precision.

    hist = fit(model, (x, y), MSELoss(), Adam(model.parameters(), 3e-3), steps=2000, batch_size=64,
               val=(xv, yv), seed=0)
    hist.history["val_loss"][-1]

Data: a pair (inputs, targets) of arrays with the batch on axis 0, or any object with
``batches(batch_size, rng)`` (an endless iterator of (inputs, targets)) and ``eval_batches(batch_size)``
(a finite one), such as ``fastlstm.data.CharCorpus``.

Tests: tests/test_train.py, tests/test_train_errors.py (bad arguments).
"""

from __future__ import annotations

import math
import numbers
import time

import numpy as np

from . import _validate as V
from .optim import Optimizer, clip_grad_norm

__all__ = ["fit", "evaluate", "predict", "History", "Callback", "EarlyStopping", "ModelCheckpoint", "ArrayData"]


def _batch_array(value, name: str, what: str):
    """inputs or targets of a data pair: an array with the batch on axis 0 (a list becomes a NumPy array)."""
    if isinstance(value, (list, tuple)):
        try:
            value = np.asarray(value)
        except ValueError:
            raise ValueError(f"{name}: expected {what} as a rectangular array, got a ragged list "
                             "(rows of different lengths)") from None
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name}: expected {what} as an array of numbers, got a list that becomes "
                            f"{V.describe(value)}")
    elif not (hasattr(value, "shape") and hasattr(value, "__getitem__")):
        raise TypeError(f"{name}: expected {what} as an array with the batch on axis 0, got {V.describe(value)}")
    if len(value.shape) == 0:
        raise ValueError(f"{name}: expected {what} with the batch on axis 0, got {V.describe(value)}")
    return value


class ArrayData:
    """(inputs, targets) arrays with the batch on axis 0, served as shuffled mini-batches."""

    def __init__(self, inputs, targets, name: str = "data"):
        inputs = _batch_array(inputs, name, "inputs")
        targets = _batch_array(targets, name, "targets")
        if len(inputs) != len(targets):
            raise ValueError(f"{name}: inputs and targets differ in length ({len(inputs)} vs {len(targets)})")
        if len(inputs) == 0:
            raise ValueError(f"{name}: expected at least one example, got none")
        self.inputs, self.targets = inputs, targets

    def __len__(self):
        return len(self.inputs)

    def batches(self, batch_size, rng):
        """Endless: one shuffled pass after another, every batch full (the last partial one wraps)."""
        batch_size = V.positive_int(batch_size, "batch_size")
        if not hasattr(rng, "permutation"):  # a Generator, or a legacy RandomState
            raise TypeError(f"rng: expected a numpy.random.Generator, got {V.describe(rng)}")
        return self._batches(batch_size, rng)

    def _batches(self, batch_size, rng):
        n = len(self.inputs)
        batch_size = min(batch_size, n)
        order = rng.permutation(n)
        pos = 0
        while True:
            if pos + batch_size > n:
                order = np.concatenate([order[pos:], rng.permutation(n)])
                pos = 0
            idx = order[pos:pos + batch_size]
            pos += batch_size
            yield self.inputs[idx], self.targets[idx]

    def eval_batches(self, batch_size):
        batch_size = V.positive_int(batch_size, "batch_size")
        return ((self.inputs[i:i + batch_size], self.targets[i:i + batch_size])
                for i in range(0, len(self.inputs), batch_size))


def _as_data(data, name):
    if data is None:
        raise TypeError(f"{name}: expected a pair (inputs, targets) or an object with batches()/eval_batches(), "
                        "got None")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return ArrayData(*data, name=name)
    if hasattr(data, "batches") and hasattr(data, "eval_batches"):
        return data
    raise TypeError(f"{name}: expected a pair (inputs, targets) or an object with batches()/eval_batches(), "
                    f"got {V.describe(data)}")


def _check_model(model, needs=("parameters", "zero_grad", "backward", "train", "eval")):
    missing = [m for m in needs if not callable(getattr(model, m, None))]
    if not callable(model) or missing:
        raise TypeError(f"model: expected a fastlstm.nn.Module (callable, with {'/'.join(n + '()' for n in needs)}), "
                        f"got {V.describe(model)}")


def _check_loss(loss, need_sum: bool):
    """loss(out, targets) -> (value, grad); evaluate also needs loss.sum_and_count (fastlstm.losses have both)."""
    if not callable(loss) or (need_sum and not callable(getattr(loss, "sum_and_count", None))):
        what = "a loss with sum_and_count() for validation" if callable(loss) else "a callable loss"
        raise TypeError(f"loss: expected {what} (e.g. fastlstm.losses.MSELoss()), got {V.describe(loss)}")


def _check_optimizer(optimizer):
    if not (callable(getattr(optimizer, "step", None)) and callable(getattr(optimizer, "zero_grad", None))
            and hasattr(optimizer, "lr")):
        raise TypeError(f"optimizer: expected an optimizer with step(), zero_grad() and lr (e.g. "
                        f"fastlstm.optim.Adam(model.parameters(), 1e-3)), got {V.describe(optimizer)}")


def _callbacks(callbacks) -> list:
    """None: none; one Callback: a list of one; otherwise an iterable of Callbacks."""
    if callbacks is None:
        return []
    if _is_callback(callbacks):
        return [callbacks]
    if isinstance(callbacks, (str, bytes, dict)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks: expected a list of fastlstm.train.Callback objects (or one, or None), "
                        f"got {V.describe(callbacks)}")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not _is_callback(cb):
            got = f"the class {cb.__name__} (pass an instance: {cb.__name__}(...))" if isinstance(cb, type) \
                else V.describe(cb)
            raise TypeError(f"callbacks[{i}]: expected a fastlstm.train.Callback (on_train_begin, on_validation_end, "
                            f"on_train_end), got {got}")
    return callbacks


def _is_callback(cb) -> bool:
    if isinstance(cb, Callback):
        return True
    return not isinstance(cb, type) and all(callable(getattr(cb, hook, None))
                                            for hook in ("on_train_begin", "on_validation_end", "on_train_end"))


def _tokens(inputs) -> int:
    """Positions processed in a batch: B*T for sequences, B otherwise."""
    shape = getattr(inputs, "shape", ())
    return int(shape[0] * shape[1]) if len(shape) >= 2 else int(shape[0]) if shape else 1


class History:
    """Metrics as lists: ``history['loss']`` per logged step, ``history['val_loss']`` per validation."""

    def __init__(self):
        self.history: dict = {}

    def log(self, **values):
        for k, v in values.items():
            self.history.setdefault(k, []).append(v)

    def __getitem__(self, key):
        return self.history[key]

    def last(self, key, default=None):
        values = self.history.get(key)
        return values[-1] if values else default


class Callback:
    """Hooks fit calls; set ``state.stop = True`` to end training after the current step."""

    def on_train_begin(self, state):
        pass

    def on_validation_end(self, state, logs: dict):
        pass

    def on_train_end(self, state):
        pass


class TrainState:
    """What callbacks see: the model, optimizer, step count, history and the stop flag."""

    def __init__(self, model, optimizer, history):
        self.model, self.optimizer, self.history = model, optimizer, history
        self.step = 0
        self.stop = False


def _monitor(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"monitor: expected the name of a logged metric (e.g. 'val_loss'), got {V.describe(value)}")
    return value


def _mode(value) -> str:
    if value not in ("min", "max"):
        raise ValueError(f"mode: expected 'min' or 'max', got {value!r}")
    return value


def _initial_best(best):
    """A callback's best= (the monitored value a resumed run starts from: its checkpoint's), checked."""
    if best is None:
        return None
    if isinstance(best, (bool, np.bool_)) or not isinstance(best, numbers.Real):
        raise TypeError(f"best: expected None or a finite number (the value to beat), got {V.describe(best)}")
    if not math.isfinite(best):
        raise ValueError(f"best: expected None or a finite number (the value to beat), got {best}")
    return float(best)


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by min_delta for `patience` validations; optionally put the
    best weights back at the end. best: resuming from a checkpoint of the best validation, its value (the
    model as fit starts is then the best so far, as it was when the checkpoint was written)."""

    def __init__(self, monitor="val_loss", patience=5, min_delta=0.0, mode="min", restore_best=True, best=None):
        self.monitor, self.mode = _monitor(monitor), _mode(mode)
        self.patience = V.non_negative_int(patience, "patience")
        self.min_delta = V.finite_number(min_delta, "min_delta", allow_zero=True)
        self.restore_best = V.boolean(restore_best, "restore_best")
        self.initial_best = _initial_best(best)
        self.best, self.best_step, self.best_state, self.wait = None, None, None, 0

    def on_train_begin(self, state):
        self.best, self.best_step, self.best_state, self.wait = self.initial_best, None, None, 0
        if self.initial_best is not None:
            self.best_step = state.step
            if self.restore_best:
                self.best_state = state.model.state_dict()

    def _better(self, value):
        if self.best is None or not math.isfinite(self.best):
            return True
        return value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta

    def on_validation_end(self, state, logs):
        value = logs.get(self.monitor)
        if value is None:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not among the logged metrics {sorted(logs)}")
        if self._better(value):
            self.best, self.best_step, self.wait = value, state.step, 0
            if self.restore_best:
                self.best_state = state.model.state_dict()
        else:
            self.wait += 1
            if self.wait >= self.patience:
                state.stop = True

    def on_train_end(self, state):
        if self.restore_best and self.best_state is not None:
            state.model.load_state_dict(self.best_state)


class ModelCheckpoint(Callback):
    """Save the model (fastlstm.checkpoint.save) after each validation, or only when `monitor` improves;
    meta gets the step and the logged metrics. include_optimizer: the optimizer's state too, so that
    fastlstm.checkpoint.load_optimizer and fit(initial_step=meta["step"]) can resume from the file."""

    def __init__(self, path, monitor="val_loss", save_best_only=True, mode="min", meta=None, include_optimizer=False,
                 best=None):
        from .checkpoint import check_meta, check_path

        meta = check_meta(meta)  # now, not at the first save in the middle of training
        self.path, self.monitor, self.mode = check_path(path), _monitor(monitor), _mode(mode)
        self.save_best_only, self.meta = V.boolean(save_best_only, "save_best_only"), meta
        self.include_optimizer = V.boolean(include_optimizer, "include_optimizer")
        # the value to beat from the start: a resumed run's checkpoint's, so a worse one does not replace it
        self.initial_best = _initial_best(best)
        self.best = self.initial_best
        self.saved_path = None

    def on_train_begin(self, state):
        from .checkpoint import model_config

        model_config(state.model)  # a model that cannot be saved is refused now, not after the first validation
        if self.include_optimizer and not isinstance(state.optimizer, Optimizer):
            raise TypeError(f"ModelCheckpoint: include_optimizer needs a fastlstm.optim optimizer to save, got "
                            f"{V.describe(state.optimizer)}")
        self.best = self.initial_best

    def on_validation_end(self, state, logs):
        from .checkpoint import save

        value = logs.get(self.monitor)
        if value is None:
            raise ValueError(f"ModelCheckpoint: monitor {self.monitor!r} is not among the logged metrics {sorted(logs)}")
        no_best = self.best is None or not math.isfinite(self.best)
        improved = math.isfinite(value) and (no_best or (value < self.best if self.mode == "min" else value > self.best))
        if improved:
            self.best = value
        if improved or not self.save_best_only:
            meta = dict(self.meta or {}, step=state.step, **{k: v for k, v in logs.items() if isinstance(v, float)})
            self.saved_path = save(state.model, self.path, meta=meta,
                                   optimizer=state.optimizer if self.include_optimizer else None)


def evaluate(model, data, loss, batch_size=256) -> float:
    """Mean loss over all of data (every position weighs the same), in eval mode; the mode is restored."""
    _check_model(model, ("train", "eval"))
    data = _as_data(data, "data")
    _check_loss(loss, need_sum=True)
    batch_size = V.positive_int(batch_size, "batch_size")
    was_training = model.training
    model.eval()
    try:
        total, count = 0.0, 0.0
        for inputs, targets in data.eval_batches(batch_size):
            s, c = loss.sum_and_count(model(inputs), targets)
            total += s
            count += c
    finally:
        model.train(was_training)
    return total / count if count else float("nan")


def predict(model, inputs, batch_size=256):
    """model(inputs) in eval mode, batch by batch, concatenated on axis 0."""
    _check_model(model, ("train", "eval"))
    inputs = _batch_array(inputs, "inputs", "examples")
    batch_size = V.positive_int(batch_size, "batch_size")
    if len(inputs) == 0:
        raise ValueError("inputs: expected at least one example, got none")
    was_training = model.training
    model.eval()
    try:
        outs = [model(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)]
    finally:
        model.train(was_training)
    from ._backend import array_module

    return array_module(outs[0]).concatenate(outs, axis=0)


def _scheduled_lr(schedule, step: int) -> float:
    """schedule(step), checked before the optimizer sees it: a NaN or negative rate would wreck the weights.
    Anything float() takes is a rate (a 0-d array, a torch scalar, a Decimal), except text and bools."""
    lr = schedule(step)
    expected = f"a learning rate (a number) at step {step}"
    if isinstance(lr, (bool, np.bool_, str, bytes)):
        raise TypeError(f"schedule: expected {expected}, got {V.describe(lr)}")
    if len(getattr(lr, "shape", ())) != 0:
        raise ValueError(f"schedule: expected {expected}, got {V.describe(lr)} (a scalar is needed)")
    try:
        value = float(lr)
    except (TypeError, ValueError, OverflowError) as err:
        if isinstance(err, TypeError) or not isinstance(lr, numbers.Number):  # not a number at all
            raise TypeError(f"schedule: expected {expected}, got {V.describe(lr)}") from None
        raise ValueError(f"schedule: expected a finite learning rate >= 0 at step {step}, got "
                         f"{type(lr).__name__} that float() refuses ({err})") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"schedule: expected a finite learning rate >= 0 at step {step}, got {value}")
    return value


def fit(model, data, loss, optimizer, *, steps=None, epochs=None, batch_size=32, val=None, eval_every=None,
        seed=0, clip_norm=None, schedule=None, callbacks=(), progress=True, log_every=10,
        initial_step=0) -> History:
    """Train model on data; returns the History (loss, lr, tokens_per_s per logged step; val_loss per validation).

    steps or epochs (an epoch = len(data) / batch_size steps) sets the length; eval_every (default: 10
    validations over the run) sets how often val is evaluated; schedule: step -> learning rate (anything
    float() takes, finite and >= 0, checked before the optimizer sees it); callbacks: a list of Callbacks,
    one Callback, or None. Data pairs may be lists (made NumPy arrays).

    initial_step resumes a run that stopped after that many steps (a checkpoint's meta["step"], with its
    model and load_optimizer's optimizer): steps/epochs still count the whole run, the schedule and the
    step numbers continue, and the batches of the steps already taken are drawn and skipped, so a model
    without dropout trains exactly as if it had never stopped (a loaded dropout layer draws its masks from
    the start of its seed's stream again).
    """
    _check_model(model)
    data = _as_data(data, "data")
    val = _as_data(val, "val") if val is not None else None
    _check_loss(loss, need_sum=val is not None)
    _check_optimizer(optimizer)
    callbacks = _callbacks(callbacks)
    if (steps is None) == (epochs is None):
        raise ValueError("fit: give exactly one of steps= and epochs=")
    batch_size = V.positive_int(batch_size, "batch_size")
    if epochs is not None:
        if not hasattr(data, "__len__"):
            raise ValueError("epochs: this data has no length; give steps= instead")
        steps = V.positive_int(epochs, "epochs") * max(1, math.ceil(len(data) / batch_size))
    steps = V.positive_int(steps, "steps")
    initial_step = V.non_negative_int(initial_step, "initial_step")
    if initial_step >= steps:
        raise ValueError(f"initial_step: expected fewer than the run's {steps} steps (it counts the steps already "
                         f"taken), got {initial_step}")
    eval_every = V.positive_int(eval_every, "eval_every") if eval_every is not None else max(1, steps // 10)
    log_every = V.positive_int(log_every, "log_every")
    if schedule is not None and not callable(schedule):
        raise TypeError(f"schedule: expected a callable step -> learning rate (e.g. fastlstm.optim.CosineLR), "
                        f"got {V.describe(schedule)}")
    if clip_norm is not None:
        V.finite_number(clip_norm, "clip_norm")
    rng = np.random.default_rng(V.seed(seed))
    history = History()
    state = TrainState(model, optimizer, history)
    state.step = initial_step
    params = model.parameters()

    for cb in callbacks:
        cb.on_train_begin(state)
    model.train()
    batches = data.batches(batch_size, rng)

    def next_batch(step):
        try:
            return next(batches)
        except StopIteration:
            raise ValueError(f"data: its batches() ended after {step} batches; fit needs an endless iterator "
                             "(as ArrayData's and CharCorpus's)") from None

    bar = None
    if progress:  # (after everything that may refuse to start: an open bar would outlive the error)
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=initial_step, unit="step", dynamic_ncols=True, leave=True)
    smooth, tokens, t_window = None, 0, time.perf_counter()
    t_start = t_window
    try:
        for step in range(initial_step):  # the batches the run before this one trained on
            next_batch(step)
        for step in range(initial_step, steps):
            if schedule is not None:
                optimizer.lr = _scheduled_lr(schedule, step)
            inputs, targets = next_batch(step)
            out = model(inputs)
            value, grad = loss(out, targets)
            if not math.isfinite(value):
                raise FloatingPointError(f"fit: the loss became {value} at step {step + 1}; lower the learning "
                                         "rate or set clip_norm")
            model.zero_grad()
            model.backward(grad)
            if clip_norm is not None:
                clip_grad_norm(params, clip_norm)
            optimizer.step()
            state.step = step + 1
            tokens += _tokens(inputs)
            smooth = value if smooth is None else 0.95 * smooth + 0.05 * value
            if state.step % log_every == 0 or state.step == steps:
                now = time.perf_counter()
                rate = tokens / max(now - t_window, 1e-9)
                history.log(step=state.step, loss=value, loss_smooth=smooth, lr=optimizer.lr, tokens_per_s=rate)
                tokens, t_window = 0, now
                if bar is not None:
                    post = {"loss": f"{smooth:.4f}", "tok/s": f"{rate:,.0f}"}
                    if history.last("val_loss") is not None:
                        post["val"] = f"{history.last('val_loss'):.4f}"
                    bar.set_postfix(post, refresh=False)
            if bar is not None:
                bar.update(1)
            if val is not None and (state.step % eval_every == 0 or state.step == steps):
                vloss = evaluate(model, val, loss, batch_size=max(batch_size, 256))
                logs = {"val_loss": vloss, "step": state.step}
                history.log(val_step=state.step, val_loss=vloss)
                for cb in callbacks:
                    cb.on_validation_end(state, logs)
            if state.stop:
                break
    finally:
        if bar is not None:
            bar.close()
    history.log(seconds=time.perf_counter() - t_start)
    for cb in callbacks:
        cb.on_train_end(state)
    model.train()
    return history
