"""Layers for building models from explicit forward/backward calls (no autograd).

What this is: ``Module`` and the layers a sequence model needs: ``Embedding``, ``LSTM`` (the fused
layer, batch-first, returning the whole sequence or the last step), ``RNN`` (a plain tanh RNN in NumPy,
the baseline LSTMs were invented to beat), ``Linear``, ``Dropout`` and ``Sequential``. Every layer
caches what its backward needs during a training-mode forward; ``backward(dy)`` adds parameter
gradients into ``p.grad`` and returns the gradient with respect to the layer's input. Layers write
their configuration as JSON (``config()``), so a checkpoint rebuilds a model with ``from_config``.
What it is not: a general framework; a model is a ``Sequential`` chain (or your own Module subclass).

Data layout: batch first, ``[B, T, features]`` for sequences, like Keras; ``Linear`` acts on the last axis.

    model = Sequential(Embedding(65, 32), LSTM(32, 128), Linear(128, 65))
    logits = model(x)                 # x: [B, T] integer ids
    model.backward(dlogits)           # grads now in p.grad for p in model.parameters()

Tests: tests/test_nn.py (the backward of Linear, RNN, LSTM, models and losses against central finite
differences in float64; Embedding's and Dropout's against values computed by hand);
tests/test_nn_errors.py (bad arguments are rejected before anything is modified).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _backend
from . import _validate as V
from .layer import LSTM as _CoreLSTM
from .layer import Parameter, skip_init

__all__ = ["Module", "Embedding", "LSTM", "RNN", "Linear", "Dropout", "Sequential", "from_config", "register"]

_REGISTRY: dict = {}


def _register(cls):
    _REGISTRY[cls.__name__] = cls
    return cls


def register(cls):
    """Class decorator: make a Module subclass of your own loadable by name (fastlstm.load, from_config).

    Its ``_config`` must hold its constructor's keyword arguments (JSON values); a checkpoint rebuilds it
    with ``cls(**_config)`` and then loads every parameter by name. Registering a class of the same name
    again (a re-run notebook cell) replaces the earlier one; the library's own names cannot be taken.
    """
    if not (isinstance(cls, type) and issubclass(cls, Module)):
        raise TypeError(f"cls: expected a subclass of fastlstm.nn.Module, got {V.describe(cls)}")
    if cls.__name__ in _BUILT_IN and _REGISTRY[cls.__name__] is not cls:
        raise ValueError(f"cls: the name {cls.__name__!r} is one of fastlstm.nn's own layers; rename the class")
    return _register(cls)


def from_config(config: dict, *, init: bool = True) -> "Module":
    """Rebuild a model from ``module.config()``: untrained weights, or with init=False none drawn at all
    (zeros, in pages not touched until written, for a caller that loads every one next: fastlstm.load).
    Layers whose config holds a seed (LSTM, Dropout) draw their seed's weights; Linear and Embedding new ones."""
    if not isinstance(config, dict) or "type" not in config:
        raise ValueError(f"config: expected a dict with a 'type' key, got {V.describe(config)}")
    if not isinstance(config["type"], str):
        raise TypeError(f"config['type']: expected a layer name (str), got {V.describe(config['type'])}")
    cls = _REGISTRY.get(config["type"])
    if cls is None:
        raise ValueError(f"config: unknown layer type {config['type']!r}; known: {sorted(_REGISTRY)} (a Module "
                         "subclass of your own: decorate it with @fastlstm.nn.register before loading)")
    token = skip_init.set(not V.boolean(init, "init"))
    try:
        return cls._from_config({k: v for k, v in config.items() if k != "type"})
    finally:
        skip_init.reset(token)


def _check_features(shape: tuple, features: int, layer: str, ranks=None) -> None:
    """output_shape's check of an input shape (None where unknown) as the layer's forward checks its input:
    `features` on the last axis and, for a recurrent layer, a rank among `ranks`."""
    if (ranks is not None and len(shape) not in ranks) or len(shape) < 1 or shape[-1] not in (None, features):
        want = ("[batch, time, features]" + (" or [time, features]" if 2 in ranks else "")) if ranks \
            else "[..., features]"
        shown = "(" + ", ".join("None" if d is None else str(d) for d in shape) + (",)" if len(shape) == 1 else ")")
        raise ValueError(f"input_shape: {layer} takes {want} with {features} features, got {shown}")


def _seed(value) -> int:
    """A layer's seed for its random masks: the one given, or one drawn now. Either way it goes into the
    layer's config, so every load of a checkpoint draws the same masks (fit is reproducible after a load)."""
    value = V.seed(value)
    return int(np.random.SeedSequence().generate_state(1)[0]) if value is None else value  # (32 bits)


def _as_array(value, name: str, kinds: str, expected: str):
    """`value` as an array whose dtype kind is in `kinds` ('f' floating, 'i'/'u' integer, 'b' bool).

    NumPy and CuPy arrays come back as they are; nested lists, scalars and torch tensors become NumPy
    arrays. Anything else (None, a str, a ragged list, complex or object values) is a TypeError naming
    the argument; `expected` says what the argument should be.
    """
    value = V.from_torch(value, name)  # (a PyTorch state_dict loads into a same-named model)
    if not isinstance(value, np.ndarray) and _backend.array_module(value) is np:
        if value is None or isinstance(value, (str, bytes)):
            raise TypeError(f"{name}: expected {expected}, got {V.describe(value)}")
        try:
            value = np.asarray(value)
        except ValueError:  # a ragged nested list
            raise TypeError(f"{name}: expected {expected}, got a ragged {type(value).__name__}") from None
    if value.dtype.kind not in kinds:
        hint = " (convert with .astype('float32'))" if kinds == "f" and value.dtype.kind in "iub" else ""
        raise TypeError(f"{name}: expected {expected}, got {V.describe(value)}{hint}")
    return value


def _sizes(input_shape) -> tuple:
    """A shape given without the batch, e.g. (100, 2) or (None, 2) for any length, as a tuple of ints and
    Nones (whole floats and NumPy integers count as ints)."""
    try:
        sizes = tuple(input_shape)
    except TypeError:
        sizes = None
    ok = sizes is not None and not isinstance(input_shape, (str, bytes)) and all(
        s is None or (isinstance(s, numbers.Real) and not isinstance(s, bool) and s >= 0 and float(s).is_integer())
        for s in sizes)
    if not ok:
        raise TypeError(f"input_shape: expected sizes without the batch, e.g. (100, 2) or (None, 2), got "
                        f"{V.describe(input_shape)}")
    return tuple(None if s is None else int(s) for s in sizes)


def _check_dy(dy, y_shape: tuple):
    """dy as a real-valued array of exactly the shape the forward returned (no broadcasting)."""
    dy = _as_array(dy, "dy", "fiu", f"a real-valued array of shape {tuple(y_shape)} (the shape of y)")
    V.shape(dy, "dy", y_shape, "(the shape of y)")
    return dy


def _param(name, shape, bound, rng, dtype) -> Parameter:
    data = np.zeros(shape, dtype) if skip_init.get() else rng.uniform(-bound, bound, size=shape).astype(dtype)
    return Parameter(name, data, np.zeros(shape, dtype))  # (np.zeros: untouched pages until written)


class Module:
    """Base class: training flag, parameters, (de)serialisation, and the forward/backward protocol."""

    training = True

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    # ---- parameters -----------------------------------------------------------------------------
    def named_parameters(self, prefix: str = ""):
        """(name, Parameter) pairs; names are PyTorch's where the layer has a PyTorch twin."""
        for name, p in self._own_parameters():
            yield prefix + name, p

    def _own_parameters(self):
        return iter(())

    def parameters(self) -> list:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return sum(int(np.prod(p.shape)) for p in self.parameters())

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad[...] = 0

    def state_dict(self) -> dict:
        """Copies of the parameter values as NumPy arrays, by name."""
        return {name: _backend.to_numpy(p.data).copy() for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Copy values in by name; every parameter must be present with its exact shape (all-or-nothing)."""
        if not hasattr(state, "keys"):
            raise TypeError(f"state: expected a dict of arrays, got {V.describe(state)}")
        params = dict(self.named_parameters())
        missing = sorted(set(params) - set(state), key=str)
        unexpected = sorted(set(state) - set(params), key=str)
        if missing or unexpected:
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        values = {}  # every value is checked before the first is written
        for name, p in params.items():
            key = f"state[{name!r}]"
            v = _as_array(state[name], key, "fiu", f"a real-valued array of shape {tuple(p.shape)}")
            if tuple(v.shape) != tuple(p.shape):
                raise ValueError(f"{key}: expected shape {tuple(p.shape)}, got {tuple(v.shape)}")
            values[name] = v
        for name, p in params.items():
            p.data[...] = _backend.to_device(values[name], _backend.device_of(p.data)).astype(p.dtype, copy=False)

    def save(self, path, meta=None) -> str:
        """Write weights + configuration to one .npz (fastlstm.checkpoint.save); fastlstm.load(path) rebuilds."""
        from .checkpoint import save

        return save(self, path, meta=meta)

    # ---- modes ------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        self.training = V.boolean(mode, "mode")
        for child in self._children():
            child.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def _children(self):
        return ()

    # ---- description --------------------------------------------------------------------------------
    def _arguments(self):
        """The keyword arguments that rebuild this module (its ``_config``), or None where it has none."""
        own = self.__dict__.get("_config")
        return own if isinstance(own, dict) else None

    def config(self) -> dict:
        """JSON-able description: {'type': class name, **constructor arguments (self._config)}."""
        own = self._arguments()
        if own is None:
            raise TypeError(f"{type(self).__name__}.config(): this Module subclass does not describe itself; to "
                            "save and load it, set self._config to its constructor's keyword arguments and "
                            "decorate the class with @fastlstm.nn.register")
        return {"type": type(self).__name__, **own}

    @classmethod
    def _from_config(cls, kwargs: dict) -> "Module":
        return cls(**kwargs)

    def output_shape(self, input_shape: tuple):
        """The output shape for an input shape (None for an unknown batch or time size); None where the layer
        cannot tell (a Module subclass that does not override this: summary shows '?' from there on)."""
        return None

    def __repr__(self) -> str:
        own = self._arguments()
        if own is None:  # a subclass of the user's without a config: its children, if any
            return self._children_repr(empty="")
        args = ", ".join(f"{k}={v!r}" for k, v in own.items())
        return f"{type(self).__name__}({args})"

    def _children_repr(self, empty: str = "\n") -> str:
        """'Name(' + a line per child + '\n)', or 'Name(' + empty + ')' without children."""
        inner = "".join(f"\n  ({i}): {child!r}" for i, child in enumerate(self._children()))
        return f"{type(self).__name__}({inner}\n)" if inner else f"{type(self).__name__}({empty})"

    # what a training-mode forward keeps for backward: not carried by pickle or copy.deepcopy (as the fused
    # LSTM's saved forward is not), so a copy's backward needs a forward of its own
    _saved_for_backward: tuple = ()

    def __getstate__(self) -> dict:
        return dict(self.__dict__, **{name: None for name in self._saved_for_backward})

    @staticmethod
    def _need_cache(cache, layer):
        if cache is None:
            raise ValueError(f"backward: {layer} has no saved forward; call it in training mode (model.train()) "
                             "right before backward, once per forward")
        return cache


@_register
class Linear(Module):
    """y = x W^T + b on the last axis. weight: [out, in] (PyTorch's layout and init, U(+-1/sqrt(in)))."""

    _saved_for_backward = ("_cache",)

    def __init__(self, in_features, out_features, bias=True, dtype="float32", seed=None):
        self.in_features = V.positive_int(in_features, "in_features")
        self.out_features = V.positive_int(out_features, "out_features")
        self.dtype = V.float_dtype(dtype)
        rng = np.random.default_rng(V.seed(seed))
        nparams = self.out_features * (self.in_features + 1)
        V.memory(2 * nparams * self.dtype.itemsize, "Linear parameters and gradients",
                 advice="use fewer or smaller layers")
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = _param("weight", (self.out_features, self.in_features), bound, rng, self.dtype)
        self.bias = _param("bias", (self.out_features,), bound, rng, self.dtype) if V.boolean(bias, "bias") else None
        self._config = dict(in_features=self.in_features, out_features=self.out_features,
                            bias=self.bias is not None, dtype=self.dtype.name)
        self._cache = None

    def _own_parameters(self):
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def forward(self, x):
        x = _as_array(x, "x", "fiu", f"a real-valued array of shape (..., {self.in_features})")
        xp = _backend.array_module(x)
        if x.ndim < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected shape (..., {self.in_features}), got {tuple(x.shape)}")
        x2 = xp.ascontiguousarray(x.reshape(-1, self.in_features), dtype=self.dtype)
        y = _backend.matmul(x2, self.weight.data, trans_b=True)
        if self.bias is not None:
            y += self.bias.data
        y = y.reshape(*x.shape[:-1], self.out_features)
        self._cache = (x2, y.shape) if self.training else None
        return y

    def backward(self, dy):
        x2, y_shape = self._need_cache(self._cache, "Linear")
        dy = _check_dy(dy, y_shape)
        self._cache = None
        xp = _backend.array_module(dy)
        dy2 = xp.ascontiguousarray(dy.reshape(-1, self.out_features), dtype=self.dtype)
        _backend.matmul(dy2, x2, out=self.weight.grad, trans_a=True, accumulate=True)
        if self.bias is not None:
            self.bias.grad += dy2.sum(axis=0)
        return _backend.matmul(dy2, self.weight.data).reshape(*dy.shape[:-1], self.in_features)

    def output_shape(self, input_shape):
        _check_features(input_shape, self.in_features, "Linear")
        return tuple(input_shape[:-1]) + (self.out_features,)


@_register
class Embedding(Module):
    """Integer ids [...] -> vectors [..., dim]. weight: [num_embeddings, dim], init N(0, 1) as PyTorch."""

    _saved_for_backward = ("_cache",)

    def __init__(self, num_embeddings, embedding_dim, dtype="float32", seed=None):
        self.num_embeddings = V.positive_int(num_embeddings, "num_embeddings")
        self.embedding_dim = V.positive_int(embedding_dim, "embedding_dim")
        self.dtype = V.float_dtype(dtype)
        rng = np.random.default_rng(V.seed(seed))
        V.memory(2 * self.num_embeddings * self.embedding_dim * self.dtype.itemsize,
                 "Embedding parameters and gradients", advice="use a smaller vocabulary or embedding")
        shape = (self.num_embeddings, self.embedding_dim)
        data = np.zeros(shape, self.dtype) if skip_init.get() else rng.standard_normal(shape).astype(self.dtype)
        self.weight = Parameter("weight", data, np.zeros(shape, self.dtype))
        self._config = dict(num_embeddings=self.num_embeddings, embedding_dim=self.embedding_dim,
                            dtype=self.dtype.name)
        self._cache = None

    def _own_parameters(self):
        yield "weight", self.weight

    def forward(self, ids):
        ids = _as_array(ids, "ids", "iu", "an integer array of ids")
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= self.num_embeddings):
            raise ValueError(f"ids: expected values in [0, {self.num_embeddings}), got min {int(ids.min())} "
                             f"max {int(ids.max())}")
        self._cache = ids if self.training else None
        return self.weight.data[ids]

    def backward(self, dy):
        ids = self._need_cache(self._cache, "Embedding")
        dy = _check_dy(dy, tuple(ids.shape) + (self.embedding_dim,))
        self._cache = None
        dy = _backend.array_module(dy).asarray(dy, dtype=self.dtype)
        _backend.scatter_add(self.weight.grad, ids.reshape(-1), dy.reshape(-1, self.embedding_dim))
        return None  # ids have no gradient

    def output_shape(self, input_shape):
        return tuple(input_shape) + (self.embedding_dim,)


@_register
class Dropout(Module):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by 1/(1-p).
    The masks come from seed (drawn when None; kept in the config, so a loaded model draws them alike)."""

    _saved_for_backward = ("_mask", "_shape")

    def __init__(self, p=0.5, seed=None):
        self.p = V.probability(p, "p")
        self.seed = _seed(seed)
        self._rng = np.random.default_rng(self.seed)
        self._config = dict(p=self.p, seed=self.seed)
        self._mask = None
        self._shape = None  # the last training-mode output's, which dy must match

    def forward(self, x):
        # an integer array would come back unscaled (its dtype cannot hold 1/(1-p)): refuse it
        x = _as_array(x, "x", "f", "a floating-point array")
        self._mask = None
        self._shape = tuple(x.shape) if self.training else None
        if not self.training or self.p == 0:
            return x
        xp = _backend.array_module(x)
        keep = self._rng.random(x.shape) >= self.p
        self._mask = xp.asarray(keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - self.p)))
        return x * self._mask

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def backward(self, dy):
        dy = _check_dy(dy, self._need_cache(self._shape, "Dropout"))
        mask, self._mask, self._shape = self._mask, None, None  # once per forward, as every layer
        return dy if mask is None else dy * mask


@_register
class LSTM(Module):
    """The fused LSTM (fastlstm.LSTM) on batch-first input [B, T, input_size].

    return_sequences=True gives [B, T, D*hidden_size]; False gives the last step [B, D*hidden_size]
    (for two directions, the forward direction's last step next to the reverse direction's, PyTorch's
    h_n). stateful=True carries (h_n, c_n) from one call to the next (generation); ``reset_state()``
    clears it. Parameter names are PyTorch's (weight_ih_l0, ...). seed: the initial weights and the
    masks of dropout between layers (drawn when None, and kept in the config as Dropout's).
    """

    _saved_for_backward = ("_y_shape",)

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False, dropout=0.0,
                 return_sequences=True, stateful=False, proj_size=0, dtype="float32", device="cpu", seed=None):
        self.seed = _seed(seed)
        self.core = _CoreLSTM(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                              dropout=dropout, batch_first=True, dtype=dtype, device=device, seed=self.seed,
                              stateful=stateful, proj_size=proj_size)
        self.return_sequences = V.boolean(return_sequences, "return_sequences")
        self._y_shape = None  # with return_sequences=False, the last training-mode output's shape

    def _arguments(self) -> dict:
        """As the layer is now (stateful and return_sequences may be set later); a subclass's own _config first."""
        own = super()._arguments()
        if own is not None:
            return own
        c = self.core
        return dict(input_size=c.input_size, hidden_size=c.hidden_size, num_layers=c.num_layers,
                    bidirectional=c.bidirectional, dropout=c.dropout, return_sequences=self.return_sequences,
                    stateful=c.stateful, proj_size=c.proj_size, dtype=c.dtype.name, seed=self.seed)

    def _own_parameters(self):
        return self.core.named_parameters()

    def zero_grad(self) -> None:
        self.core.zero_grad()

    def train(self, mode: bool = True) -> "LSTM":
        self.training = V.boolean(mode, "mode")
        self.core.train(mode)
        return self

    @property
    def stateful(self) -> bool:
        return self.core.stateful

    @stateful.setter
    def stateful(self, value) -> None:
        value = V.boolean(value, "stateful")
        if value and self.core.bidirectional:
            raise ValueError("stateful: a bidirectional layer cannot stream (its reverse direction needs the "
                             "whole sequence)")
        self.core.stateful = value
        self.core.reset_state()

    @property
    def state(self):
        return self.core.state

    def reset_state(self) -> None:
        self.core.reset_state()

    def forward(self, x):
        # as the other layers: array-likes and other real dtypes are converted to the layer's dtype
        x = _as_array(x, "x", "fiu", f"a real-valued array of shape (batch, time, {self.core.input_size})")
        x = _backend.array_module(x).asarray(x, dtype=self.core.dtype)
        y, (h_n, c_n) = self.core(x)  # a stateful core starts from the state its last call left
        if self.return_sequences:
            return y
        D = self.core.num_directions
        last = _backend.array_module(h_n).concatenate(list(h_n[-D:]), axis=-1) if D == 2 else h_n[-1]
        self._y_shape = tuple(last.shape) if self.training else None
        return last

    def backward(self, dy):
        if self.return_sequences:  # the core checks dy's shape against y itself
            dy = _as_array(dy, "dy", "fiu", "a real-valued array of the shape of y")
            dx, _ = self.core.backward(_backend.array_module(dy).asarray(dy, dtype=self.core.dtype))
            return dx
        y_shape = self._need_cache(self._y_shape, "LSTM")
        dy = _check_dy(dy, y_shape)
        L, D, H = self.core.num_layers, self.core.num_directions, self.core._hout
        # h_n's last layer, [D, B, H] ([D, H] for an unbatched input), receives dy; the rest get zero
        dh_n = _backend.array_module(dy).zeros((L * D,) + y_shape[:-1] + (H,), self.core.dtype)
        for d in range(D):
            dh_n[(L - 1) * D + d] = dy[..., d * H:(d + 1) * H]
        dx, _ = self.core.backward(None, (dh_n, None))
        self._y_shape = None
        return dx

    def output_shape(self, input_shape):
        _check_features(input_shape, self.core.input_size, "LSTM", ranks=(2, 3))  # 2: unbatched [T, F]
        width = self.core.num_directions * self.core._hout
        if self.return_sequences:
            return tuple(input_shape[:-1]) + (width,)
        return tuple(input_shape[:-2]) + (width,)


@_register
class RNN(Module):
    """A plain tanh RNN (Elman), h[t] = tanh(x[t] W_ih^T + b_ih + h[t-1] W_hh^T + b_hh), in NumPy.

    The baseline for the adding problem: its gradient through tanh and W_hh shrinks (or explodes)
    geometrically with distance, which is why it cannot learn long-range dependencies an LSTM learns.
    Batch-first [B, T, input_size]; PyTorch nn.RNN's parameter names, shapes and init.
    """

    _saved_for_backward = ("_cache",)

    def __init__(self, input_size, hidden_size, return_sequences=True, dtype="float32", seed=None):
        self.input_size = V.positive_int(input_size, "input_size")
        self.hidden_size = V.positive_int(hidden_size, "hidden_size")
        self.return_sequences = V.boolean(return_sequences, "return_sequences")
        self.dtype = V.float_dtype(dtype)
        rng = np.random.default_rng(V.seed(seed))
        H, bound = self.hidden_size, 1.0 / math.sqrt(self.hidden_size)
        V.memory(2 * H * (self.input_size + H + 2) * self.dtype.itemsize, "RNN parameters and gradients",
                 advice="use fewer or smaller layers")
        self.weight_ih = _param("weight_ih_l0", (H, self.input_size), bound, rng, self.dtype)
        self.weight_hh = _param("weight_hh_l0", (H, H), bound, rng, self.dtype)
        self.bias_ih = _param("bias_ih_l0", (H,), bound, rng, self.dtype)
        self.bias_hh = _param("bias_hh_l0", (H,), bound, rng, self.dtype)
        self._config = dict(input_size=self.input_size, hidden_size=H, return_sequences=self.return_sequences,
                            dtype=self.dtype.name)
        self._cache = None

    def _own_parameters(self):
        for p in (self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh):
            yield p.name, p

    def forward(self, x):
        x = _as_array(x, "x", "fiu", f"a real-valued array of shape (B, T, {self.input_size})")
        if x.ndim != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected shape (B, T, {self.input_size}), got {tuple(x.shape)}")
        x = np.ascontiguousarray(x, dtype=self.dtype)
        B, T, _ = x.shape
        if T == 0 or B == 0:
            raise ValueError(f"x: expected at least one time step and one sequence, got shape {x.shape}")
        H = self.hidden_size
        pre = (x.reshape(B * T, -1) @ self.weight_ih.data.T).reshape(B, T, H) + (self.bias_ih.data + self.bias_hh.data)
        hs = np.empty((B, T + 1, H), self.dtype)  # hs[:, 0] = h0 = 0
        hs[:, 0] = 0
        w_hh_t = self.weight_hh.data.T
        for t in range(T):
            hs[:, t + 1] = np.tanh(pre[:, t] + hs[:, t] @ w_hh_t)
        self._cache = (x, hs) if self.training else None
        return hs[:, 1:].copy() if self.return_sequences else hs[:, -1].copy()

    def backward(self, dy):
        x, hs = self._need_cache(self._cache, "RNN")
        B, T, _ = x.shape
        H = self.hidden_size
        dy = _check_dy(dy, (B, T, H) if self.return_sequences else (B, H))
        self._cache = None
        dys = np.zeros((B, T, H), self.dtype)
        if self.return_sequences:
            dys[...] = dy
        else:
            dys[:, -1] = dy
        dpre = np.empty((B, T, H), self.dtype)
        dh = np.zeros((B, H), self.dtype)
        w_hh = self.weight_hh.data
        for t in reversed(range(T)):
            h = hs[:, t + 1]
            dpre[:, t] = (dys[:, t] + dh) * (1 - h * h)
            dh = dpre[:, t] @ w_hh
        d2 = dpre.reshape(B * T, H)
        self.weight_ih.grad += d2.T @ x.reshape(B * T, -1)
        self.weight_hh.grad += d2.T @ hs[:, :-1].reshape(B * T, H)
        db = d2.sum(axis=0)
        self.bias_ih.grad += db
        self.bias_hh.grad += db
        return (d2 @ self.weight_ih.data).reshape(B, T, -1)

    def output_shape(self, input_shape):
        _check_features(input_shape, self.input_size, "RNN", ranks=(3,))
        if self.return_sequences:
            return tuple(input_shape[:-1]) + (self.hidden_size,)
        return (input_shape[0], self.hidden_size)


@_register
class Sequential(Module):
    """Layers applied in order; backward runs them in reverse. Parameter names: '<index>.<name>'."""

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"layers[{i}]: expected a fastlstm.nn.Module, got {V.describe(layer)}")
        self.layers = list(layers)
        self._input_shape = None

    def _children(self):
        return self.layers

    def named_parameters(self, prefix: str = ""):
        for i, layer in enumerate(self.layers):
            yield from layer.named_parameters(f"{prefix}{i}.")

    def zero_grad(self) -> None:
        for layer in self.layers:
            layer.zero_grad()

    def forward(self, x):
        x = _as_array(x, "x", "biuf", "a numeric array")  # the first layer checks the dtype it needs
        self._input_shape = (None,) + tuple(x.shape[1:])
        for layer in self.layers:
            x = layer(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def config(self) -> dict:
        if type(self) is not Sequential:  # a subclass of the user's rebuilds its layers itself, from its _config
            return super().config()
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}

    @classmethod
    def _from_config(cls, kwargs):
        if cls is not Sequential:
            return super()._from_config(kwargs)
        unknown = sorted(set(kwargs) - {"layers"})
        if unknown:
            raise ValueError(f"config: a Sequential's config has 'layers' only, got also {unknown}")
        layers = kwargs.get("layers", [])
        if not isinstance(layers, (list, tuple)):
            raise TypeError(f"config['layers']: expected a list of layer configs, got {V.describe(layers)}")
        return cls(*(from_config(c, init=not skip_init.get()) for c in layers))

    def output_shape(self, input_shape):
        for layer in self.layers:
            if input_shape is None:
                break
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        return self._children_repr()

    def summary(self, input_shape=None, print_fn=print) -> str:
        """A Keras-style table: layer, output shape, parameter count; totals at the bottom.

        input_shape: the input's shape without the batch (e.g. (100, 2)); default: the last input seen.
        """
        if print_fn is not None and not callable(print_fn):
            raise TypeError(f"print_fn: expected a callable (print) or None, got {V.describe(print_fn)}")
        shape = self._input_shape if input_shape is None else (None,) + _sizes(input_shape)
        rows = [("Layer (type)", "Output shape", "Params")]
        for i, layer in enumerate(self.layers):
            if shape is not None:
                shape = layer.output_shape(shape)
            shown = "?" if shape is None else "(" + ", ".join("None" if s is None else str(s) for s in shape) + ")"
            rows.append((f"{i} ({type(layer).__name__})", shown, f"{layer.num_parameters():,}"))
        widths = [max(len(r[c]) for r in rows) for c in range(3)]
        line = "-" * (sum(widths) + 6)
        out = [line, f"{rows[0][0]:<{widths[0]}}   {rows[0][1]:<{widths[1]}}   {rows[0][2]:>{widths[2]}}", line]
        out += [f"{a:<{widths[0]}}   {b:<{widths[1]}}   {c:>{widths[2]}}" for a, b, c in rows[1:]]
        out += [line, f"Total params: {self.num_parameters():,}", line]
        text = "\n".join(out)
        if print_fn is not None:
            print_fn(text)
        return text


_BUILT_IN = frozenset(_REGISTRY)  # the library's own layer names, which register() refuses to shadow
