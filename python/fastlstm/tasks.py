"""The three ready-made training tasks behind ``fastlstm train``, and character sampling.

What this is: for each task, its defaults, data, model, loss, baseline and how its validation metric
is read, so the CLI, the tests and a user's script all run the same thing:

    adding   the adding problem (data.adding_problem): LSTM -> last step -> Linear(1); MSE against
             always answering 1.0, on the same validation set (1/6 in expectation)
    sine     forecast the next 24 values of a noisy seasonal series from the last 48: LSTM -> Linear(24);
             MSE against the seasonal-naive forecast (the values one period earlier)
    charlm   a character language model on a text: Embedding -> LSTM -> Linear(vocab); cross-entropy
             (nats/char) against the unigram frequencies

``--model rnn`` swaps the LSTM for the plain tanh RNN (nn.RNN) with the same size, to compare.

Tests: tests/test_train.py (every task's loss falls on tiny settings; sampling), tests/test_train_errors.py
(device, vocabulary).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import _backend
from . import _validate as V
from . import data as D
from . import losses, nn

__all__ = ["TASKS", "Task", "build", "generate"]


@dataclasses.dataclass(frozen=True)
class Defaults:
    steps: int
    hidden: int
    seq_len: int
    batch_size: int
    lr: float
    clip: float = 1.0


@dataclasses.dataclass
class Task:
    """A built task: data, model, loss and the numbers its report needs."""

    name: str
    train: object
    val: object
    model: nn.Module
    loss: object
    metric_name: str
    baseline: float
    meta: dict


TASKS = {
    "adding": Defaults(steps=3000, hidden=64, seq_len=100, batch_size=64, lr=1e-2),
    "sine": Defaults(steps=1500, hidden=64, seq_len=48, batch_size=64, lr=5e-3),
    "charlm": Defaults(steps=2000, hidden=256, seq_len=100, batch_size=32, lr=3e-3),
}

SINE_HORIZON = 24
SINE_PERIOD = 24
SINE_STEPS = 20000  # the series' length: the first 80% trains, the rest validates


def _recurrent(kind, input_size, hidden, layers, return_sequences, seed):
    if kind == "lstm":
        return nn.LSTM(input_size, hidden, num_layers=layers, return_sequences=return_sequences, seed=seed)
    if kind == "rnn":
        if layers != 1:
            raise ValueError(f"layers: the plain RNN baseline has one layer, got {layers}")
        return nn.RNN(input_size, hidden, return_sequences=return_sequences, seed=seed)
    raise ValueError(f"model: expected 'lstm' or 'rnn', got {kind!r}")


def _check_device(device) -> None:
    """The tasks' models train on the CPU: only their LSTM layer has CUDA kernels (nn.Linear, nn.Embedding
    and nn.RNN hold NumPy weights), so any other device is refused rather than ignored."""
    if not isinstance(device, str):
        raise TypeError(f"device: expected 'cpu' or 'cuda', got {V.describe(device)}")
    if device == "cpu":
        return
    if device.partition(":")[0] != "cuda":
        raise ValueError(f"device: expected 'cpu' or 'cuda', got {device!r}")
    _backend.require_cuda(f"device={device!r}")  # RuntimeError naming what is missing
    raise ValueError(f"device: the built-in tasks train on the CPU only (their Linear, Embedding and RNN layers "
                     f"have no CUDA version), got {device!r}; use device='cpu'")


def build(name, *, model="lstm", hidden=None, layers=1, seq_len=None, seed=0, text=None, n_train=None,
          n_val=None, device="cpu") -> Task:
    """Data, model and loss for task `name` (defaults from TASKS where an argument is None)."""
    if not isinstance(name, str):
        raise TypeError(f"task: expected one of {sorted(TASKS)}, got {V.describe(name)}")
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    _check_device(device)
    seed = V.seed(seed)
    if seed is None:
        raise TypeError("seed: expected a non-negative int, got None (the task's data and weights need one)")
    for arg, value, task in (("n_train", n_train, "adding"), ("n_val", n_val, "adding"), ("text", text, "charlm")):
        if value is not None and name != task:  # (the other tasks' data do not depend on it)
            raise ValueError(f"{arg}: only the {task} task takes it (this is {name})")
    n_train = 20000 if n_train is None else V.positive_int(n_train, "n_train")
    n_val = 2000 if n_val is None else V.positive_int(n_val, "n_val")
    d = TASKS[name]
    hidden = d.hidden if hidden is None else hidden
    seq_len = d.seq_len if seq_len is None else seq_len
    rng = np.random.default_rng(seed)
    meta = {"task": name, "model": model, "seq_len": seq_len}
    if name == "adding":
        train = D.adding_problem(n_train, seq_len, rng)
        val = D.adding_problem(n_val, seq_len, rng)
        net = nn.Sequential(_recurrent(model, 2, hidden, layers, False, seed), nn.Linear(hidden, 1, seed=seed + 1))
        # always answering 1.0 (the mean sum), scored on this validation set: 1/6 in expectation, and the
        # number a model that learned nothing gets here (0.157 for the default run's 2000 sequences)
        baseline = float(np.mean((val[1].astype(np.float64) - 1.0) ** 2))
        return Task(name, train, val, net, losses.MSELoss(), "mse", baseline, meta)
    if name == "sine":
        if seq_len < SINE_PERIOD:
            raise ValueError(f"seq_len: the sine task needs at least one period ({SINE_PERIOD}) of history, got {seq_len}")
        series = D.seasonal_series(SINE_STEPS, rng)
        cut = int(len(series) * 0.8)
        if seq_len > cut - SINE_HORIZON:  # one training window: seq_len inputs, then the horizon
            raise ValueError(f"seq_len: the sine task's training series has {cut} values, room for at most "
                             f"{cut - SINE_HORIZON} of history before a {SINE_HORIZON}-step horizon, got {seq_len}")
        train = D.forecast_windows(series[:cut], seq_len, SINE_HORIZON)
        val = D.forecast_windows(series[cut - seq_len:], seq_len, SINE_HORIZON)
        # seasonal naive: the value one period before each target
        vx, vy = val
        naive = vx[:, seq_len - SINE_PERIOD:seq_len - SINE_PERIOD + SINE_HORIZON, 0]
        baseline = float(np.mean((naive - vy) ** 2))
        net = nn.Sequential(_recurrent(model, 1, hidden, layers, False, seed),
                            nn.Linear(hidden, SINE_HORIZON, seed=seed + 1))
        meta["horizon"] = SINE_HORIZON
        return Task(name, train, val, net, losses.MSELoss(), "mse", baseline, meta)
    if text is None:
        raise ValueError("text: the charlm task trains on a text file; give --text FILE")
    corpus = D.CharCorpus(text, seq_len=seq_len)
    n_vocab = corpus.vocab_size
    embed = min(64, max(8, n_vocab))
    net = nn.Sequential(nn.Embedding(n_vocab, embed, seed=seed),
                        _recurrent(model, embed, hidden, layers, True, seed + 1),
                        nn.Linear(hidden, n_vocab, seed=seed + 2))
    meta["vocab"] = corpus.vocab
    return Task(name, corpus, corpus, net, losses.CrossEntropyLoss(), "cross_entropy_nats_per_char",
                corpus.unigram_entropy(), meta)


def generate(model, vocab, prime: str, length: int, temperature: float = 1.0, seed=None) -> str:
    """prime followed by `length` characters sampled from a char-LM (Embedding -> LSTM -> Linear)."""
    if (not isinstance(model, nn.Sequential) or len(model) != 3 or not isinstance(model[0], nn.Embedding)
            or not isinstance(model[1], nn.LSTM) or not isinstance(model[2], nn.Linear)):
        got = (" -> ".join(type(layer).__name__ for layer in model) if isinstance(model, nn.Sequential)
               else type(model).__name__)
        raise ValueError(f"model: sampling runs an LSTM char-LM (Embedding -> LSTM -> Linear), got {got}")
    if model[1].core.bidirectional:
        raise ValueError("model: its LSTM is bidirectional, and a reverse direction needs the whole text before "
                         "it can give the next character; sample from a unidirectional char-LM")
    if not isinstance(vocab, (list, tuple)) or not all(isinstance(ch, str) and len(ch) == 1 for ch in vocab):
        raise ValueError(f"vocab: expected a list of single characters, got {V.describe(vocab)}")
    if len(vocab) != model[0].num_embeddings or len(vocab) != model[2].out_features:
        raise ValueError(f"vocab: expected {model[0].num_embeddings} characters (the model's embedding rows) and "
                         f"as many output classes ({model[2].out_features}), got {len(vocab)} characters")
    length = V.non_negative_int(length, "length")
    temperature = V.finite_number(temperature, "temperature")
    if not isinstance(prime, str):
        raise TypeError(f"prime: expected a str (may be empty), got {V.describe(prime)}")
    seed = V.seed(seed)
    index = {ch: i for i, ch in enumerate(vocab)}
    unknown = sorted(set(prime) - set(index))
    if unknown:
        raise ValueError(f"prime: characters not in the model's vocabulary: {unknown[:5]}")
    rng = np.random.default_rng(seed)
    lstm = model[1]
    was_stateful, was_training = lstm.stateful, model.training
    model.eval()
    lstm.stateful = True
    lstm.reset_state()
    try:
        ids = [index[ch] for ch in prime] or [int(rng.integers(len(vocab)))]
        out = list(prime) if prime else [vocab[ids[0]]]
        logits = model(np.asarray([ids], np.int64))[0, -1]
        for _ in range(length):
            z = logits.astype(np.float64)
            with np.errstate(over="ignore"):  # shifted first, so a tiny temperature gives -inf (p = 0), not nan
                p = np.exp((z - z.max()) / temperature)
            p /= p.sum()
            nxt = int(rng.choice(len(vocab), p=p))
            out.append(vocab[nxt])
            logits = model(np.asarray([[nxt]], np.int64))[0, -1]
    finally:
        lstm.reset_state()
        lstm.stateful = was_stateful
        model.train(was_training)
    return "".join(out)
