"""Datasets the library makes itself (nothing is downloaded): the adding problem, a seasonal series,
and a character corpus from any text.

    adding_problem(n, seq_len, rng)   inputs [n, T, 2] (value, marker), target [n, 1]: the sum of the
                                      two marked values (Hochreiter & Schmidhuber 1997). One marker lies
                                      in the first half, one in the second, so the answer needs memory
                                      across ~T/2 steps. Always answering 1.0 gives MSE 1/6 ~ 0.167.
    seasonal_series(n_steps, rng)     a noisy series with a daily and a weekly cycle and a slow trend
    forecast_windows(series, T, h)    inputs [n, T, 1] (the last T values), targets [n, h] (the next h)
    CharCorpus(text)                  a vocabulary, integer ids, random training windows, evaluation windows

Tests: tests/test_train.py (the adding problem's markers and sums), tests/test_train_errors.py (bad arguments).
"""

from __future__ import annotations

import numbers

import numpy as np

from . import _validate as V

__all__ = ["adding_problem", "ADDING_BASELINE_MSE", "seasonal_series", "forecast_windows", "CharCorpus"]

# E[(s - 1)^2] for s the sum of two independent U(0, 1): the variance 2/12
ADDING_BASELINE_MSE = 1.0 / 6.0


def _generator(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator (np.random.default_rng(seed)), got {V.describe(rng)}")
    return rng


def adding_problem(n, seq_len, rng, dtype=np.float32):
    """(inputs [n, seq_len, 2], targets [n, 1]); values ~ U(0, 1), exactly two markers per sequence."""
    n = V.positive_int(n, "n")
    T = V.positive_int(seq_len, "seq_len")
    if T < 2:
        raise ValueError(f"seq_len: expected at least 2 (one marker in each half), got {T}")
    rng, dtype = _generator(rng), V.float_dtype(dtype)
    # x and, while it is filled, the float64 values drawn for it
    V.memory(n * T * (2 * dtype.itemsize + 8), f"the adding problem's data ({n} sequences of {T} steps)",
             advice="use fewer sequences or a shorter seq_len")
    x = np.zeros((n, T, 2), dtype)
    x[:, :, 0] = rng.random((n, T))
    half = T // 2
    first = rng.integers(0, half, size=n)
    second = rng.integers(half, T, size=n)
    rows = np.arange(n)
    x[rows, first, 1] = 1
    x[rows, second, 1] = 1
    y = (x[rows, first, 0] + x[rows, second, 0])[:, None].astype(dtype)
    return x, y


def seasonal_series(n_steps, rng, period=24, long_period=168, noise=0.1, dtype=np.float32):
    """A series like hourly demand: a daily cycle, a weekly cycle, a slow trend and Gaussian noise."""
    n_steps = V.positive_int(n_steps, "n_steps")
    rng, dtype = _generator(rng), V.float_dtype(dtype)
    period, long_period = V.finite_number(period, "period"), V.finite_number(long_period, "long_period")
    noise = V.finite_number(noise, "noise", allow_zero=True)
    t = np.arange(n_steps, dtype=np.float64)
    s = (np.sin(2 * np.pi * t / period) + 0.5 * np.sin(2 * np.pi * t / long_period + 1.0)
         + 0.3 * np.sin(2 * np.pi * t / (7.3 * long_period)) + noise * rng.standard_normal(n_steps))
    return s.astype(dtype)


def forecast_windows(series, seq_len, horizon):
    """(inputs [n, seq_len, 1], targets [n, horizon]) for every window that fits."""
    T, h = V.positive_int(seq_len, "seq_len"), V.positive_int(horizon, "horizon")
    if isinstance(series, (str, bytes)) or series is None:
        raise TypeError(f"series: expected a 1-D array of numbers, got {V.describe(series)}")
    try:
        series = np.asarray(series)  # a list, a torch CPU tensor, a pandas Series
    except ValueError:
        raise ValueError("series: expected a 1-D array of numbers, got a ragged sequence") from None
    except TypeError as err:  # e.g. a GPU array, which NumPy will not copy implicitly
        raise TypeError(f"series: expected a 1-D array of numbers on the CPU, got {type(series).__name__} "
                        f"({err})") from None
    if series.dtype.kind not in "biuf":
        raise TypeError(f"series: expected a 1-D array of numbers, got {V.describe(series)}")
    if series.ndim != 1:
        raise ValueError(f"series: expected a 1-D array (one value per time step), got shape {series.shape}")
    n = len(series) - T - h + 1
    if n < 1:
        raise ValueError(f"series: expected at least seq_len + horizon = {T + h} values, got {len(series)}")
    # the windows and, while they are gathered, their int64 indices
    V.memory(n * (T + h) * (series.itemsize + 8), f"forecast_windows' {n} windows of {T} + {h} values",
             advice="use a shorter series or seq_len")
    idx = np.arange(n)[:, None]
    inputs = series[idx + np.arange(T)][:, :, None]
    targets = series[idx + T + np.arange(h)]
    return np.ascontiguousarray(inputs), np.ascontiguousarray(targets)


def _vocab(vocab) -> list:
    """A vocabulary: distinct single characters (a list, a tuple or a str of them)."""
    if isinstance(vocab, bytes) or not hasattr(vocab, "__iter__"):
        raise TypeError(f"vocab: expected a list of single characters (or None), got {V.describe(vocab)}")
    vocab = list(vocab)
    seen = set()
    for i, ch in enumerate(vocab):
        if not isinstance(ch, str):
            raise TypeError(f"vocab[{i}]: expected a single character, got {V.describe(ch)}")
        if len(ch) != 1:
            raise ValueError(f"vocab[{i}]: expected a single character, got {ch!r}")
        if ch in seen:
            raise ValueError(f"vocab[{i}]: {ch!r} appears more than once")
        seen.add(ch)
    return vocab


class CharCorpus:
    """A text as character ids, split into training and validation parts.

    batches(batch_size, rng): endless random windows (inputs [B, T] ids, targets [B, T] the next ids);
    eval_batches(batch_size): the validation part cut into consecutive windows, once.
    """

    def __init__(self, text: str, seq_len: int = 100, val_fraction: float = 0.1, vocab=None):
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {V.describe(text)}")
        self.seq_len = V.positive_int(seq_len, "seq_len")
        val_fraction = V.probability(val_fraction, "val_fraction")
        self.vocab = _vocab(vocab) if vocab is not None else sorted(set(text))
        self.index = {ch: i for i, ch in enumerate(self.vocab)}
        unknown = set(text) - set(self.index)
        if unknown:
            raise ValueError(f"text: {len(unknown)} characters are not in the vocabulary, e.g. {sorted(unknown)[:5]}")
        ids = self.encode(text)
        n_val = int(len(ids) * val_fraction)
        self.train_ids, self.val_ids = ids[:len(ids) - n_val], ids[len(ids) - n_val:]
        if len(self.train_ids) < self.seq_len + 1:
            raise ValueError(f"text: expected at least seq_len + 1 = {self.seq_len + 1} training characters, "
                             f"got {len(self.train_ids)} (a longer text or a smaller --seq-len)")
        if val_fraction > 0 and len(self.val_ids) < self.seq_len + 1:
            raise ValueError(f"text: its validation part (the last {val_fraction:.0%}) has {len(self.val_ids)} "
                             f"characters, fewer than seq_len + 1 = {self.seq_len + 1} (a longer text or a smaller "
                             "--seq-len)")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self.index[ch] for ch in text), dtype=np.int64, count=len(text))
        except KeyError as err:
            raise ValueError(f"text: character {err.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        """Characters for a 1-D sequence of ids, each in [0, vocab_size)."""
        n = self.vocab_size
        expected = f"a 1-D sequence of integer ids in [0, {n})"
        if isinstance(ids, (str, bytes)) or not (hasattr(ids, "__iter__") or hasattr(ids, "__array__")):
            raise TypeError(f"ids: expected {expected}, got {V.describe(ids)}")
        if not isinstance(ids, (list, tuple)):
            try:
                ids = np.asarray(ids) if hasattr(ids, "__array__") else list(ids)
            except (TypeError, ValueError) as err:
                raise TypeError(f"ids: expected {expected}, got {type(ids).__name__} ({err})") from None
        if isinstance(ids, np.ndarray):
            if ids.ndim != 1:
                raise ValueError(f"ids: expected {expected}, got shape {ids.shape}")
            if ids.dtype.kind in "iu":
                bad = np.flatnonzero((ids < 0) | (ids >= n))
                if len(bad):
                    raise ValueError(f"ids[{bad[0]}]: expected an id in [0, {n}), got {ids[bad[0]]}")
                return "".join(self.vocab[i] for i in ids.tolist())
            whole = ids.dtype.kind == "f" and bool(np.all(np.isfinite(ids) & (ids == np.round(ids))))
            if ids.dtype.kind != "O" and ids.size and not whole:
                raise TypeError(f"ids: expected {expected}, got dtype {ids.dtype}")
            ids = ids.tolist()
        out = []
        for i, v in enumerate(ids):
            if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):  # a 0-d array or tensor, a NumPy scalar
                v = v.item()
            if isinstance(v, float) and v.is_integer():  # (1.0: as the array path takes whole floats)
                v = int(v)
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Integral, np.integer)):
                raise TypeError(f"ids[{i}]: expected an integer id in [0, {n}), got {V.describe(v)}")
            if not 0 <= v < n:
                raise ValueError(f"ids[{i}]: expected an id in [0, {n}), got {v}")
            out.append(self.vocab[int(v)])
        return "".join(out)

    def unigram_entropy(self) -> float:
        """Cross-entropy (nats/char) of predicting the training part's character frequencies: a baseline."""
        counts = np.bincount(self.train_ids, minlength=self.vocab_size).astype(np.float64)
        p = counts / counts.sum()
        target = self.val_ids if len(self.val_ids) else self.train_ids
        return float(-np.log(np.maximum(p[target], 1e-12)).mean())

    def _windows(self, ids, starts):
        idx = starts[:, None] + np.arange(self.seq_len + 1)
        w = ids[idx]
        return w[:, :-1], w[:, 1:]

    def batches(self, batch_size, rng):
        batch_size, rng = V.positive_int(batch_size, "batch_size"), _generator(rng)  # now, not at next()
        # per batch: the starts, then int64 indices and windows of seq_len + 1 (inputs and targets view them)
        V.memory(batch_size * (8 + (self.seq_len + 1) * 16),
                 f"a batch of {batch_size} windows of {self.seq_len} characters", advice="use a smaller batch or seq_len")
        return self._batches(batch_size, rng)

    def _batches(self, batch_size, rng):
        high = len(self.train_ids) - self.seq_len
        while True:
            yield self._windows(self.train_ids, rng.integers(0, high, size=batch_size))

    def eval_batches(self, batch_size):
        """The validation part in consecutive windows (the training part when val_fraction is 0)."""
        batch_size = V.positive_int(batch_size, "batch_size")
        ids = self.val_ids if len(self.val_ids) else self.train_ids
        starts = np.arange(0, len(ids) - self.seq_len, self.seq_len)
        return (self._windows(ids, starts[i:i + batch_size]) for i in range(0, len(starts), batch_size))

    def __len__(self):
        return max(1, len(self.train_ids) // self.seq_len)
