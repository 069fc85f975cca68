"""fastlstm.LSTM: a stacked, optionally bidirectional LSTM with torch.nn.LSTM's semantics on NumPy (CPU) or
CuPy (GPU) arrays.

What this is: the layer users call. It owns the parameters (PyTorch's names, shapes and gate order),
validates inputs, runs one fused recurrent kernel per layer (both directions in one call, concurrently
when threads allow) between big GEMMs over all time steps, and implements backward (BPTT) with
explicit ``backward(dy, (dh_n, dc_n))``. What it is not: an autograd system; the training library
(layers, losses, optimizers) composes these explicit forward/backward calls.

Data flow of layer l (D = 1 or 2 directions, all directions' weights stacked so each GEMM is one call;
Ho = proj_size or H is the width of h):
    gx  = x W_ih^T                 [rows, D*4H]   _C.gemm (rows = T*B, any time/batch order), or on the
                                                  CPU inside _C.lstm_forward (_C.fuse_input_projection)
    y   = recurrence(gx + b, W_hh) [.., D*Ho]     _C.lstm_forward, saving gates and c when training
  backward:
    dG  = recurrence'(dy, W_hh)    [rows, D*4H]   _C.lstm_backward
    dW_ih += dG^T x;  dW_hh += dG^T h[t-1];  dx = dG W_ih   (_C.gemm; time-major reads h[t-1] from y,
    db += sum dG                                     and on the CPU one pass over dG gives dW_ih, dW_hh, db)
    dW_hr += dh^T (o tanh c~)                      (with a projection; dh saved by _C.lstm_backward)
Options handled inside the kernels: lengths (the batch is sorted longest first here and unsorted
after; GEMMs skip the padding rows), zoneout and recurrent dropout (masks drawn here from the layer's
seed), projections, stateful streaming (step_offset keeps chunks bit-identical to one call).

Tests: tests/test_layer.py (against fastlstm.reference), tests/test_torch_parity.py (against PyTorch),
tests/test_lengths.py, test_regularisation.py, test_projection.py, test_cell.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import numbers
import threading
import warnings
from typing import Optional

import numpy as np

from . import _C
from . import _backend
from . import _validate as V

__all__ = ["LSTM", "Parameter"]

# One reusable buffer per thread for the input projection gx, which lives only inside one forward call
# (consumed by the recurrence before the next layer's projection). Fresh pages cost a page fault each:
# ~4 ms of a 150 ms eval call at T=100, B=64, H=512. Per thread, so concurrent eval calls never share it;
# buffers past _GX_CACHE_MAX are not kept.
_gx_cache = threading.local()
_GX_CACHE_MAX = 1 << 30

# Set while a checkpoint rebuilds a model whose every parameter it loads next (nn.from_config(init=False)):
# parameters are allocated but not drawn, so a damaged file that describes a huge model fails on its missing
# weights at once, without drawing gigabytes of numbers first.
skip_init = contextvars.ContextVar("fastlstm_skip_init", default=False)

_STRATEGIES = ("auto", "persistent", "streaming")


_LAYER_OVERHEAD = 4096  # bytes of Python objects per layer besides its arrays' data (see LSTM.__init__)


def _live_rows(lengths, T, B, batch_first):
    """Indices of the [T*B] (or [B*T]) rows where a sequence exists, for the GEMMs to skip padding."""
    if lengths is None:
        return None
    live = np.arange(T)[:, None] < lengths[None, :]  # [T, B]
    return np.flatnonzero(live.T if batch_first else live).astype(np.int64)


def _take(a, order, axis):
    """a with its entries along `axis` in `order` (a host index array), on a's device, C-contiguous."""
    xp = _backend.array_module(a)
    return xp.ascontiguousarray(xp.take(a, xp.asarray(order), axis=axis))


def _rows(state, order):
    """A [L*D, B, H] state with its sequences (axis 1) in `order`, C-contiguous."""
    return _take(state, order, 1)


def _gx_buffer(shape, dtype) -> np.ndarray:
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _GX_CACHE_MAX:
        return np.empty(shape, dtype)
    buf = getattr(_gx_cache, "buf", None)
    if buf is None or buf.nbytes < nbytes:
        buf = _backend.host_workspace((nbytes,), np.uint8)
        _gx_cache.buf = buf
    return buf[:nbytes].view(dtype).reshape(shape)


def _host_values(value, name) -> np.ndarray:
    """A value given for weights (NumPy/CuPy array, torch tensor, nested list) as a NumPy array, or a
    TypeError naming `name` (a ragged list, a dtype NumPy cannot hold such as torch.bfloat16)."""
    if value is None:
        raise TypeError(f"{name}: expected an array, got None")
    try:
        return _backend.to_numpy(V.from_torch(value, name))
    except ValueError as err:  # a ragged nested list
        raise TypeError(f"{name}: expected an array, got {V.describe(value)} ({err})") from None


class Parameter:
    """A parameter's value and gradient, both views into the owning layer's stacked buffers.

    ``p.data`` may be modified in place (as optimizers do) or assigned (the value is copied in, so the
    layer keeps seeing it); ``p.grad`` accumulates across backward calls until ``zero_grad()``.
    """

    __slots__ = ("_data", "_grad", "name", "_owner")

    def __init__(self, name: str, data: np.ndarray, grad: np.ndarray, owner=None):
        self.name, self._data, self._grad, self._owner = name, data, grad, owner

    # pickle and copy.deepcopy: a copy of a view would be an array of its own, which the layer's kernels
    # never see. A layer's parameter travels as its name and its layer instead; the layer's copy points it
    # at views of its own buffers (LSTM.__setstate__), whichever of the two is rebuilt first.
    def __getstate__(self) -> dict:
        owner = self._owner
        if owner is not None and any(p is self for p in owner._params.values()):
            return {"name": self.name, "_owner": owner}
        # (a parameter of no layer, or one its layer has replaced: .to(device) binds new ones)
        return {"name": self.name, "_owner": None, "_data": self._data, "_grad": self._grad}

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # (None, slots): pickled by fastlstm 0.1.0 before __getstate__ existed
            state = dict(state[1], _owner=None)
        for key, value in state.items():
            setattr(self, key, value)

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value) -> None:
        if value is self._data:  # `p.data -= u` lands here with the same array
            return
        self._data[...] = self._incoming(value, self.name, self._data)

    @staticmethod
    def _incoming(value, name, target):
        """value as an array on target's device, checked to fit target (shape; real numbers)."""
        if value is None:  # (PyTorch clears a gradient so; here it is a buffer the kernels add into)
            hint = "; clear gradients with zero_grad()" if name.endswith(".grad") else ""
            raise TypeError(f"{name}: expected an array of shape {target.shape}, got None{hint}")
        value = _host_values(value, name) if _backend.device_of(target) == "cpu" else value
        value = _backend.to_device(value, _backend.device_of(target))
        if value.dtype.kind not in "fiu":
            raise TypeError(f"{name}: expected real numbers, got dtype {value.dtype}")
        if value.shape != target.shape:
            raise ValueError(f"{name}: expected shape {target.shape}, got {value.shape}")
        return value

    @property
    def grad(self) -> np.ndarray:
        return self._grad

    @grad.setter
    def grad(self, value) -> None:  # `p.grad += g` lands here with the same array; other values are copied in
        if value is not self._grad:
            self._grad[...] = self._incoming(value, self.name + ".grad", self._grad)

    @property
    def shape(self):
        return self._data.shape

    @property
    def dtype(self):
        return self._data.dtype

    def __repr__(self) -> str:
        return f"Parameter({self.name}, shape={self._data.shape}, dtype={self._data.dtype})"


class _LayerWeights:
    """One layer's parameters (all directions stacked) and their gradients."""

    def __init__(self, D: int, H: int, I: int, dtype: np.dtype, bias: bool, P: int = 0):
        self.w_ih = np.zeros((D * 4 * H, I), dtype)   # weight_ih of direction d: rows [d*4H, (d+1)*4H)
        self.w_hh = np.zeros((D, 4 * H, P or H), dtype)
        self.w_hr = np.zeros((D, P, H), dtype) if P else None  # the projection (proj_size)
        zeros = lambda a: np.zeros(a.shape, a.dtype)  # (not zeros_like: pages stay untouched until written)
        self.g_w_hr = None if self.w_hr is None else zeros(self.w_hr)
        self.b_ih = np.zeros((D, 4 * H), dtype) if bias else None
        self.b_hh = np.zeros((D, 4 * H), dtype) if bias else None
        self.g_w_ih = zeros(self.w_ih)
        self.g_w_hh = zeros(self.w_hh)
        self.g_b_ih = None if self.b_ih is None else zeros(self.b_ih)
        self.g_b_hh = None if self.b_hh is None else zeros(self.b_hh)

    _ARRAYS = ("w_ih", "w_hh", "w_hr", "b_ih", "b_hh", "g_w_ih", "g_w_hh", "g_w_hr", "g_b_ih", "g_b_hh")

    def to(self, device: str) -> None:
        """Move every array to `device` ('cpu', 'cuda' or 'cuda:N'), values and gradients alike."""
        for name in self._ARRAYS:
            a = getattr(self, name)
            if a is not None:
                setattr(self, name, _backend.to_device(a, device))


class LSTM:
    """Multi-layer LSTM with torch.nn.LSTM's arguments, parameters and results, on NumPy arrays (CuPy arrays
    with device="cuda").

    >>> lstm = LSTM(10, 20, num_layers=2, seed=0)
    >>> y, (h_n, c_n) = lstm(np.zeros((5, 3, 10), np.float32))    # x: [T, B, I]
    >>> dx, (dh0, dc0) = lstm.backward(np.ones_like(y))             # grads in lstm.named_parameters()

    Layers start in training mode (as PyTorch modules do): forward saves what backward needs and applies
    inter-layer dropout. Call ``eval()`` for inference: nothing is saved, and the layer may then be
    called from several threads at once (unless stateful).

    Beyond torch.nn.LSTM: ``lstm(x, hx, lengths=...)`` (variable lengths), ``stateful=True`` (feed a
    long sequence in chunks; ``reset_state()``), ``zoneout`` (a probability, or a pair for h and c) and
    ``recurrent_dropout`` (training; eval uses zoneout's expectation), ``unit_forget_bias`` and Keras
    weights (``keras_weights`` / ``load_keras_weights``).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, dtype="float32", device="cpu", seed=None,
                 stateful=False, unit_forget_bias=False, zoneout=0.0, recurrent_dropout=0.0):
        self.input_size = V.positive_int(input_size, "input_size")
        self.hidden_size = V.positive_int(hidden_size, "hidden_size")
        self.num_layers = V.positive_int(num_layers, "num_layers")
        self.bias = V.boolean(bias, "bias")
        self.batch_first = V.boolean(batch_first, "batch_first")
        self.dropout = V.probability(dropout, "dropout")
        self.bidirectional = V.boolean(bidirectional, "bidirectional")
        self.dtype = V.float_dtype(dtype)
        proj_size = V.non_negative_int(proj_size, "proj_size")
        if proj_size >= self.hidden_size:
            raise ValueError(f"proj_size: expected 0 (none) or less than hidden_size={self.hidden_size}, got {proj_size}")
        self.proj_size = proj_size
        device = self._check_device(device)
        if device != "cpu":
            self._check_cuda_options()  # before any weight is allocated
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn("dropout > 0 only acts between layers; with num_layers=1 it does nothing", stacklevel=2)
        self.stateful = V.boolean(stateful, "stateful")
        if self.stateful and self.bidirectional:
            raise ValueError("stateful: a bidirectional layer cannot stream (its reverse direction needs the "
                             "whole sequence); use bidirectional=False or stateful=False")
        self.unit_forget_bias = V.boolean(unit_forget_bias, "unit_forget_bias")
        if self.unit_forget_bias and not self.bias:
            raise ValueError("unit_forget_bias: needs bias=True")
        if isinstance(zoneout, (tuple, list)):
            if len(zoneout) != 2:
                raise ValueError(f"zoneout: expected a probability or a pair (for h, for c), got {zoneout!r}")
            self.zoneout = (V.probability(zoneout[0], "zoneout[0]"), V.probability(zoneout[1], "zoneout[1]"))
        else:
            z = V.probability(zoneout, "zoneout")
            self.zoneout = (z, z)
        self.recurrent_dropout = V.probability(recurrent_dropout, "recurrent_dropout")
        self.state = None  # (h_n, c_n) carried between calls when stateful
        self._streamed = 0  # steps consumed since the state was last reset
        self._rng = np.random.default_rng(V.seed(seed))
        self.training = True
        self._ctx = None
        self._workspace = {}  # training-mode scratch reused across calls (eval mode shares nothing)

        D, H, P, L = self.num_directions, self.hidden_size, self.proj_size, self.num_layers
        def per_layer(inputs):
            return D * (4 * H * (inputs + self._hout + (2 if self.bias else 0)) + P * H)

        nparams = per_layer(self.input_size) + (L - 1) * per_layer(D * self._hout)
        # (+ the Python objects of each layer: its weight and gradient arrays and Parameters, ~3.5 KiB measured)
        V.memory(2 * nparams * self.dtype.itemsize + L * _LAYER_OVERHEAD, "LSTM parameters and gradients",
                 advice="use fewer or smaller layers")
        self._layers = [_LayerWeights(D, H, self._layer_input(l), self.dtype, self.bias, P) for l in range(self.num_layers)]
        self.device = "cpu"
        self._cuda_strategy = "auto"
        self._bind_params()
        if not skip_init.get():
            self.reset_parameters()
        if device != "cpu":
            with self._device_scope(device):
                self._move(device)

    def _bind_params(self, keep: Optional[dict] = None) -> None:
        """The Parameter views (PyTorch's names) into the stacked per-layer buffers. keep: {name: Parameter}
        to point at the views instead of making new ones (a copy's, which an optimizer copied along holds)."""
        D, H, P = self.num_directions, self.hidden_size, self.proj_size
        self._params = {}

        def bind(name, data, grad):
            p = keep.get(name) if keep else None
            # (a shallow copy's are still the original's: it gets its own, viewing the buffers they share)
            if p is None or getattr(p, "_owner", self) is not self:
                p = Parameter(name, data, grad, owner=self)
            else:
                p._data, p._grad, p._owner = data, grad, self
            self._params[name] = p

        for l, w in enumerate(self._layers):
            for d in range(D):
                sfx = f"_l{l}" + ("_reverse" if d == 1 else "")
                rows = slice(d * 4 * H, (d + 1) * 4 * H)
                bind("weight_ih" + sfx, w.w_ih[rows], w.g_w_ih[rows])
                bind("weight_hh" + sfx, w.w_hh[d], w.g_w_hh[d])
                if self.bias:
                    bind("bias_ih" + sfx, w.b_ih[d], w.g_b_ih[d])
                    bind("bias_hh" + sfx, w.b_hh[d], w.g_b_hh[d])
                if P:
                    bind("weight_hr" + sfx, w.w_hr[d], w.g_w_hr[d])

    # pickle and copy.deepcopy: the configuration, weights, gradients, random generator and stream state.
    # Not the training scratch, nor a forward saved for backward: the copy's backward needs its own forward.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_workspace={}, _ctx=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._bind_params(keep=self._params)

    # ---- configuration -----------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _hout(self) -> int:
        """The width of h (and of each direction's y): proj_size with a projection, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _layer_input(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.num_directions * self._hout

    @staticmethod
    def _check_device(device) -> str:
        """'cpu', 'cuda' (CuPy's current device) or 'cuda:N' -> 'cpu' or 'cuda:N'; raises if unusable here."""
        if not isinstance(device, str):
            raise TypeError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {V.describe(device)}")
        if device == "cpu":
            return device
        kind, _, index = device.partition(":")
        if kind != "cuda" or (index and not index.isdigit()):
            raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        _backend.require_cuda(f"device={device!r}")
        if not index:
            return f"cuda:{_backend.cupy_or_none().cuda.Device().id}"
        count = _backend.cuda_device_count()
        if int(index) >= count:
            raise ValueError(f"device: {device!r} does not exist; this machine has {count} CUDA device(s)")
        return f"cuda:{int(index)}"

    def _cuda_device_id(self) -> int:
        return int(self.device.partition(":")[2])

    def _device_scope(self, device=None):
        """A with-block in which CuPy allocates, multiplies and streams on `device` (default: this layer's;
        nothing to do for the CPU)."""
        device = device or self.device
        if device == "cpu":
            return contextlib.nullcontext()
        return _backend.cupy_or_none().cuda.Device(int(device.partition(":")[2]))

    @property
    def cuda_strategy(self) -> str:
        """How the CUDA kernels run the recurrence: 'auto' (default: picked per problem, see
        csrc/cuda/lstm_cuda.cu), 'persistent' (one cooperative kernel, weights in shared memory; an error
        where they do not fit) or 'streaming' (one fused kernel per step). No effect on the CPU."""
        return self._cuda_strategy

    @cuda_strategy.setter
    def cuda_strategy(self, value) -> None:
        if value not in _STRATEGIES:
            raise ValueError(f"cuda_strategy: expected one of {_STRATEGIES}, got {value!r}")
        self._cuda_strategy = value

    @property
    def _xp(self):
        return np if self.device == "cpu" else _backend.cupy_or_none()

    def reset_parameters(self) -> None:
        """PyTorch's default init: every parameter ~ U(-1/sqrt(H), 1/sqrt(H)), from the layer's seed.

        With unit_forget_bias (Keras's option), the biases then start at 0 except the forget gate's,
        which starts at 1 (in bias_ih; bias_hh is 0), so early training does not forget.
        """
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self._params.values():  # drawn on the host, so a seed means the same weights on every device
            p.data[...] = self._xp.asarray(self._rng.uniform(-k, k, size=p.shape), dtype=self.dtype)
        if self.unit_forget_bias:
            H = self.hidden_size
            for name, p in self._params.items():
                if name.startswith("bias_"):
                    p.data[...] = 0
                    if name.startswith("bias_ih"):
                        p.data[H:2 * H] = 1

    def reset_state(self) -> None:
        """Forget the state a stateful layer carries (the next call starts from zeros)."""
        self.state = None
        self._streamed = 0

    # ---- Keras weights -------------------------------------------------------------------------------
    def keras_weights(self, layer: int = 0) -> list:
        """Layer `layer` as Keras's LSTM.get_weights(): [kernel [I, 4H], recurrent_kernel [H, 4H], bias [4H]]
        (no bias entry with bias=False); for a bidirectional layer, Bidirectional.get_weights(): the
        forward direction's list followed by the backward's. Gate order i, f, c, o: PyTorch's i, f, g, o."""
        self._check_layer_index(layer)
        w, H, out = self._layers[layer], self.hidden_size, []
        host = _backend.to_numpy
        for d in range(self.num_directions):
            out.append(np.ascontiguousarray(host(w.w_ih[d * 4 * H:(d + 1) * 4 * H]).T))
            out.append(np.ascontiguousarray(host(w.w_hh[d]).T))
            if self.bias:
                out.append(host(w.b_ih[d] + w.b_hh[d]))
        return out

    def load_keras_weights(self, weights, layer: int = 0) -> None:
        """Load Keras LSTM (or Bidirectional(LSTM)) weights, as keras_weights returns them, into layer `layer`.

        Keras has one bias per gate; it goes to bias_ih, and bias_hh becomes 0. Outputs then equal
        Keras's (recurrent_activation='sigmoid', activation='tanh', its defaults). All-or-nothing.
        """
        self._check_layer_index(layer)
        D, H, I = self.num_directions, self.hidden_size, self._layer_input(layer)
        per = 3 if self.bias else 2
        if not isinstance(weights, (list, tuple)) or len(weights) != per * D:
            raise ValueError(f"weights: expected a list of {per * D} arrays (kernel, recurrent_kernel"
                             f"{', bias' if self.bias else ''}{' per direction' if D == 2 else ''}), "
                             f"got {V.describe(weights)}")
        shapes = [(I, 4 * H), (H, 4 * H), (4 * H,)][:per] * D
        arrays = []
        for i, (a, shape) in enumerate(zip(weights, shapes)):
            a = _host_values(a, f"weights[{i}]")
            if a.shape != shape:
                raise ValueError(f"weights[{i}]: expected shape {shape}, got {a.shape}")
            if not np.issubdtype(a.dtype, np.floating):
                raise TypeError(f"weights[{i}]: expected a floating-point array, got dtype {a.dtype}")
            arrays.append(a)
        w = self._layers[layer]
        arrays = [self._xp.asarray(a) for a in arrays]
        for d in range(D):
            k = arrays[d * per:(d + 1) * per]
            w.w_ih[d * 4 * H:(d + 1) * 4 * H] = k[0].T
            w.w_hh[d] = k[1].T
            if self.bias:
                w.b_ih[d] = k[2]
                w.b_hh[d] = 0

    def _check_layer_index(self, layer):
        if self.proj_size:
            raise ValueError("proj_size: Keras's LSTM has no projection; Keras weights need proj_size=0")
        if isinstance(layer, (bool, np.bool_)) or not isinstance(layer, numbers.Integral):
            raise TypeError(f"layer: expected an int in [0, {self.num_layers}), got {V.describe(layer)}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer: expected an int in [0, {self.num_layers}), got {layer!r}")

    def train(self, mode: bool = True) -> "LSTM":
        self.training = V.boolean(mode, "mode")
        if not self.training:
            self._ctx = None
            self._workspace.clear()
        return self

    def eval(self) -> "LSTM":
        return self.train(False)

    def to(self, device) -> "LSTM":
        """Move the parameters, gradients and any carried state to `device` ('cpu', 'cuda' or 'cuda:N');
        returns the layer. A saved training forward is dropped (call forward again before backward)."""
        device = self._check_device(device)
        if device != "cpu":
            self._check_cuda_options()
        if device != self.device:
            with self._device_scope(device):
                self._move(device)
        return self

    def _move(self, device) -> None:
        for w in self._layers:
            w.to(device)
        self._bind_params()
        if self.state is not None:
            self.state = tuple(_backend.to_device(a, device) for a in self.state)
        self._ctx = None
        self._workspace.clear()
        self.device = device

    def _check_cuda_options(self) -> None:
        """The option the CUDA kernels do not have yet: raises before anything moves."""
        if self.proj_size:
            raise NotImplementedError("proj_size: not supported on CUDA yet (the CPU layer has it); use device='cpu' "
                                      "or proj_size=0")

    # ---- parameters ----------------------------------------------------------------------------------
    def named_parameters(self):
        """(name, Parameter) pairs in PyTorch's order: per layer and direction, w_ih, w_hh, b_ih, b_hh."""
        return iter(self._params.items())

    def parameters(self):
        return list(self._params.values())

    def zero_grad(self) -> None:
        for w in self._layers:
            for g in (w.g_w_ih, w.g_w_hh, w.g_b_ih, w.g_b_hh, w.g_w_hr):
                if g is not None:
                    g.fill(0)

    def state_dict(self) -> dict:
        """NumPy copies of the parameters under PyTorch's names (loadable by torch.nn.LSTM after
        torch.from_numpy), whatever the layer's device."""
        return {name: np.array(_backend.to_numpy(p.data)) for name, p in self._params.items()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy values in (a PyTorch state_dict converted to NumPy loads unchanged); all-or-nothing."""
        if not hasattr(state, "keys"):
            raise TypeError(f"state: expected a dict of arrays, got {V.describe(state)}")
        missing = [k for k in self._params if k not in state]
        unexpected = [k for k in state if k not in self._params]
        if strict and (missing or unexpected):
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        values = {}
        for name in self._params:
            if name not in state:
                continue
            v = _host_values(state[name], f"state[{name!r}]")  # NumPy, CuPy or torch, onto either device
            if v.shape != self._params[name].shape:
                raise ValueError(f"state[{name!r}]: expected shape {self._params[name].shape}, got {v.shape}")
            if not np.issubdtype(v.dtype, np.floating):
                raise TypeError(f"state[{name!r}]: expected a floating-point array, got dtype {v.dtype}")
            values[name] = v
        for name, v in values.items():
            self._params[name].data[...] = self._xp.asarray(v, dtype=self.dtype)

    def __repr__(self) -> str:
        extra = [f"num_layers={self.num_layers}"] if self.num_layers != 1 else []
        for key, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False),
                             ("proj_size", 0), ("stateful", False), ("unit_forget_bias", False),
                             ("recurrent_dropout", 0.0)):
            if getattr(self, key) != default:
                extra.append(f"{key}={getattr(self, key)}")
        if self.zoneout != (0.0, 0.0):
            z = self.zoneout
            extra.append(f"zoneout={z[0] if z[0] == z[1] else z}")
        if self.dtype != np.float32:
            extra.append(f"dtype='{self.dtype.name}'")
        if self.device != "cpu":
            extra.append(f"device='{self.device}'")
        return f"LSTM({', '.join([str(self.input_size), str(self.hidden_size)] + extra)})"

    def _saved_buffer(self, key, shape):
        """Where forward saves what backward reads: reused across calls (one saved forward at a time), or
        fresh when several forwards wait for their backward (LSTMCell keeps a stack of them)."""
        return self._xp.empty(shape, self.dtype) if self._keep_every_forward else self._scratch(key, shape)

    _keep_every_forward = False

    def _scratch(self, key, shape, dtype=None):
        """A training-mode buffer reused across calls (fresh pages cost a page fault each)."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        buf = self._workspace.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._xp.empty(shape, dtype) if self._xp is not np else _backend.host_workspace(shape, dtype)
            self._workspace[key] = buf
        return buf

    # ---- forward ---------------------------------------------------------------------------------------
    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def forward(self, x, hx=None, lengths=None):
        """y, (h_n, c_n) = lstm(x, (h0, c0)); shapes exactly as torch.nn.LSTM.

        x: [T, B, I] ([B, T, I] with batch_first) or unbatched [T, I]; h0: [L*D, B, Ho], c0: [L*D, B, H]
        (Ho = proj_size or H; [L*D, Ho] / [L*D, H] unbatched) or hx=None for zeros. Returns
        y [T, B, D*Ho] (batch_first: [B, T, D*Ho]), h_n, c_n.
        lengths: None, or one integer per sequence in 1..T: PyTorch's pack_padded_sequence semantics
        without packing. y is 0 past each sequence's length, h_n/c_n come from its last valid step, the
        reverse direction starts at its own end; the kernels skip the missing steps.
        """
        with self._device_scope():
            return self._forward(x, hx, lengths)

    def _forward(self, x, hx=None, lengths=None):
        L, D, H, dt = self.num_layers, self.num_directions, self.hidden_size, self.dtype
        doc = f"(T, B, {self.input_size})" if not self.batch_first else f"(B, T, {self.input_size})"
        xp, cuda = self._xp, self.device != "cpu"
        x = V.array(x, "x", dt, doc + " or unbatched (T, %d)" % self.input_size, self.device)
        if x.ndim not in (2, 3):
            raise ValueError(f"x: expected 3 dimensions {doc} or 2 (T, {self.input_size}), got shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected the last dimension to be input_size={self.input_size}, got shape {x.shape}")
        unbatched = x.ndim == 2
        bf = self.batch_first and not unbatched
        if 0 in x.shape[:-1]:
            raise ValueError(f"x: expected at least one time step and one sequence, got shape {x.shape}")
        if unbatched:
            x = x[:, None, :]
        T, B = (x.shape[1], x.shape[0]) if bf else (x.shape[0], x.shape[1])
        if hx is None and self.stateful and self.state is not None:
            expected = (L * D, self._hout) if unbatched else (L * D, B, self._hout)
            if self.state[0].shape != expected:
                raise ValueError(f"x: this stateful layer carries a state of shape {self.state[0].shape} from its "
                                 f"previous call, which does not fit x of shape {x.shape}; call reset_state() first")
            hx = self.state
        h0, c0 = self._check_state(hx, "hx", B, unbatched)
        lengths, order = self._check_lengths(lengths, B, T)
        if order is not None:  # the kernels take sequences longest first: sort, and unsort the results
            x = _take(x, order, 0 if bf else 1)
            h0 = None if h0 is None else _rows(h0, order)
            c0 = None if c0 is None else _rows(c0, order)

        training = self.training
        rows = T * B
        Ho = self._hout
        # gx and y; in training the saved gates, c (and h_raw with a projection); the layer's input
        for_backward = rows * D * (4 * H + H + (H if self.proj_size else 0)) if training else 0
        per_layer = rows * D * (4 * H + Ho) + for_backward + rows * max(self.input_size, D * Ho)
        if training and any(self.zoneout):
            per_layer += rows * D * (Ho + H)  # the zoneout masks
        if not cuda:  # (CuPy raises OutOfMemoryError itself, before anything runs)
            V.memory(per_layer * dt.itemsize * (L if training else 1), "this forward call")

        seq = (lambda cols: (B, T, cols)) if bf else (lambda cols: (T, B, cols))
        live = None if cuda else _live_rows(lengths, T, B, bf)  # (cuBLAS computes the padding rows too)
        kernel_lengths = None if lengths is None else xp.asarray(lengths)
        h_n = xp.empty((L * D, B, Ho), dt)
        c_n = xp.empty((L * D, B, H), dt)
        inp = xp.ascontiguousarray(x)
        saved = []
        for l, w in enumerate(self._layers):
            I_l = inp.shape[-1]
            # on the CPU, x W_ih^T is computed inside the recurrent loop while both weights fit in cache
            fused = not cuda and _C.fuse_input_projection(I_l, H, w.w_hh.shape[2], D, dt.itemsize)
            if fused:
                gx, x_in = None, dict(x=inp, w_ih=w.w_ih.reshape(D, 4 * H, I_l))
            else:
                gx = xp.empty((rows, D * 4 * H), dt) if cuda else _gx_buffer((rows, D * 4 * H), dt)
                _backend.matmul(inp.reshape(rows, -1), w.w_ih, gx, trans_b=True, m_rows=live)
                gx, x_in = gx.reshape(seq(D * 4 * H)), {}
            bias = (w.b_ih + w.b_hh) if self.bias else None
            y = xp.empty(seq(D * Ho), dt)
            keep = self._saved_buffer if training else (lambda key, shape: None)
            gates = keep(("gates", l), (D, T, B, 4 * H))
            cell = keep(("cell", l), (D, T, B, H))
            proj = dict(w_hr=w.w_hr, h_raw=keep(("h_raw", l), (D, T, B, H))) if self.proj_size else {}
            ks = slice(l * D, (l + 1) * D)
            h0l = None if h0 is None else h0[ks]
            c0l = None if c0 is None else c0[ks]
            reg = self._regularisation(training, D, T, B)
            if cuda:
                _C.cuda_lstm_forward(gx, w.w_hh, bias, h0l, c0l, y, h_n[ks], c_n[ks], gates,
                                     cell, bf, lengths=kernel_lengths, **reg, **self._cuda_launch())
            else:
                _C.lstm_forward(gx, w.w_hh, bias, h0l, c0l, y, h_n[ks], c_n[ks],
                                gates, cell, bf, lengths=lengths, step_offset=self._streamed if self.stateful else 0,
                                **reg, **proj, **x_in)
            mask = None
            if training and self.dropout > 0 and l < L - 1:
                kept = self._rng.random(y.shape, dtype=dt) >= self.dropout  # on the host: the same seed, the same
                mask = xp.asarray(kept.astype(dt) * dt.type(1.0 / (1.0 - self.dropout)))  # masks on every device
            if training:
                # h0 and c0 are small: kept as copies, so the caller may refill its state arrays before backward
                # (truncated BPTT does); x too where several forwards wait (LSTMCell's recorded calls)
                h0l, c0l = (None if a is None else a.copy() for a in (h0l, c0l))
                if self._keep_every_forward:
                    inp = inp.copy()
                saved.append(dict(inp=inp, y=y, gates=gates, cell=cell, h0=h0l, c0=c0l, mask=mask, reg=reg,
                                  h_raw=proj.get("h_raw")))
            inp = y if mask is None else y * mask
        y = inp
        if training:
            self._ctx = dict(layers=saved, T=T, B=B, bf=bf, unbatched=unbatched, y_shape=y.shape, lengths=lengths,
                             order=order, kernel_lengths=kernel_lengths)
        if order is not None:
            inverse = np.argsort(order)
            y = _take(y, inverse, 0 if bf else 1)
            h_n, c_n = _rows(h_n, inverse), _rows(c_n, inverse)
        if unbatched:
            y, h_n, c_n = y[:, 0, :], h_n[:, 0, :], c_n[:, 0, :]
        if self.stateful:
            self.state = (h_n.copy(), c_n.copy())
            self._streamed += T
        return y, (h_n, c_n)

    def _cuda_launch(self) -> dict:
        """Where the CUDA kernels run: this layer's device, CuPy's current stream there, the strategy."""
        return dict(device=self._cuda_device_id(), stream=_backend.current_stream(), strategy=self._cuda_strategy)

    def _regularisation(self, training, D, T, B) -> dict:
        """Zoneout and recurrent-dropout arguments of one layer's kernel call: fresh seeded masks in
        training; in eval zoneout mixes with its probabilities (the expectation) and dropout is off."""
        (zh, zc), p, dt, H, Ho = self.zoneout, self.recurrent_dropout, self.dtype, self.hidden_size, self._hout
        reg = {}
        if not training:
            if zh or zc:
                reg.update(zoneout_h_p=zh, zoneout_c_p=zc)
            return reg
        if zh or zc:
            reg["zoneout_h"] = (self._rng.random((D, T, B, Ho)) < zh).astype(dt)
            reg["zoneout_c"] = (self._rng.random((D, T, B, H)) < zc).astype(dt)
        if p:
            reg["rec_mask"] = (self._rng.random((D, B, Ho)) >= p).astype(dt) * dt.type(1.0 / (1.0 - p))
        # drawn on the host from the layer's seed (the same masks on every device), then moved
        return {k: self._xp.asarray(v) for k, v in reg.items()}

    @staticmethod
    def _check_lengths(lengths, B, T):
        """lengths -> (int64 [B] sorted longest first, or None when all are T; the sorting order, or None)."""
        if lengths is None:
            return None, None
        if isinstance(lengths, (list, tuple)) and any(isinstance(v, (bool, np.bool_)) for v in lengths):
            raise TypeError(f"lengths: expected integers, one per sequence, got {lengths!r}")  # (NumPy: 1s)
        try:
            arr = np.asarray(lengths)
        except ValueError:  # ragged
            raise TypeError(f"lengths: expected integers, one per sequence, got {V.describe(lengths)}") from None
        if arr.dtype == object and not all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                                           for v in arr.ravel()):
            raise TypeError(f"lengths: expected integers, one per sequence, got {lengths!r}")
        if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == object):
            raise TypeError(f"lengths: expected integers, one per sequence, got dtype {arr.dtype}")
        if arr.shape != (B,):
            raise ValueError(f"lengths: expected shape ({B},) (one per sequence), got {arr.shape}")
        if B and (arr.min() < 1 or arr.max() > T):  # (in their own type: no wrap-around on the way to int64)
            raise ValueError(f"lengths: expected values in 1..{T} (the time steps of x), got min {arr.min()} "
                             f"max {arr.max()}")
        arr = arr.astype(np.int64)
        if np.all(arr == T):
            return None, None
        if np.all(arr[:-1] >= arr[1:]):
            return np.ascontiguousarray(arr), None
        order = np.argsort(-arr, kind="stable")
        return np.ascontiguousarray(arr[order]), order

    def _check_state(self, pair, name, B, unbatched, allow_none_members=False):
        """(h, c) pair -> contiguous [L*D, B, Ho] and [L*D, B, H] arrays (or None); None -> (None, None)."""
        if pair is None:
            return None, None
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"{name}: expected a pair (h, c) of arrays or None, got {V.describe(pair)}")
        LD = self.num_layers * self.num_directions
        out = []
        for member, part, width, wname in zip(pair, ("[0]", "[1]"), (self._hout, self.hidden_size),
                                              ("proj_size" if self.proj_size else "hidden_size", "hidden_size")):
            expected = (LD, width) if unbatched else (LD, B, width)
            doc = (f"(num_layers * num_directions, {wname})" if unbatched
                   else f"(num_layers * num_directions, batch, {wname})")
            if member is None and allow_none_members:
                out.append(None)
                continue
            member = V.array(member, name + part, self.dtype, str(expected), self.device)
            V.shape(member, name + part, expected, doc)
            member = self._xp.ascontiguousarray(member)
            out.append(member[:, None, :] if unbatched else member)
        return out[0], out[1]

    # ---- backward --------------------------------------------------------------------------------------
    def backward(self, dy, dhx=None):
        """dx, (dh0, dc0) = lstm.backward(dy, (dh_n, dc_n)) after a training-mode forward.

        dy: gradient of the loss w.r.t. y (same shape as y), or None; dhx: None or a pair whose members
        (gradients w.r.t. h_n and c_n) may be None. Adds the parameter gradients into ``p.grad`` and
        releases what the forward saved (a second backward needs a new forward).
        The training forward keeps x and the y it returned (no copies) for this: change either in place
        before backward and the weight gradients follow the changed values (copy first). h0 and c0 are
        kept as copies. The weights are read when backward runs: update them after it, not between the
        forward and its backward (an error in PyTorch; here the gradients would mix the two weights).
        """
        with self._device_scope():
            return self._backward(dy, dhx)

    def _backward(self, dy, dhx=None):
        ctx = self._ctx
        if ctx is None:
            raise ValueError("backward: no saved forward to differentiate; call the layer in training mode "
                             "(lstm.train()) right before backward, once per forward")
        dt, L, D, H = self.dtype, self.num_layers, self.num_directions, self.hidden_size
        T, B, bf, unbatched = ctx["T"], ctx["B"], ctx["bf"], ctx["unbatched"]
        y_shape = ctx["y_shape"]
        if dy is not None:
            shown = (y_shape[0], y_shape[2]) if unbatched else y_shape
            dy = V.array(dy, "dy", dt, str(shown), self.device)
            V.shape(dy, "dy", shown, "(the shape of y)")
            dy = self._xp.ascontiguousarray(dy[:, None, :] if unbatched else dy)
        dh_n, dc_n = self._check_state(dhx, "dhx", B, unbatched, allow_none_members=True)
        self._ctx = None
        lengths, order = ctx["lengths"], ctx["order"]
        if order is not None:  # into the forward's longest-first order
            dy = None if dy is None else _take(dy, order, 0 if bf else 1)
            dh_n = None if dh_n is None else _rows(dh_n, order)
            dc_n = None if dc_n is None else _rows(dc_n, order)

        seq = (lambda cols: (B, T, cols)) if bf else (lambda cols: (T, B, cols))
        rows = T * B
        xp, cuda = self._xp, self.device != "cpu"
        live = None if cuda else _live_rows(lengths, T, B, bf)
        # the projection's kernel-side arrays are time-major whatever the layout: their live rows
        live_tm = live if not bf else _live_rows(lengths, T, B, False)
        Ho = self._hout
        dh0 = xp.empty((L * D, B, Ho), dt)
        dc0 = xp.empty((L * D, B, H), dt)
        dout = dy
        for l in reversed(range(L)):
            s, w = ctx["layers"][l], self._layers[l]
            ks = slice(l * D, (l + 1) * D)
            dg = self._scratch("dg", seq(D * 4 * H))
            db = self._scratch(("db", l), (D, 4 * H), np.float64) if self.bias else None  # dG summed, in double
            proj = {}
            if self.proj_size:
                dh_proj = self._scratch(("dh_proj", l), (D, T, B, self.proj_size))
                proj = dict(w_hr=w.w_hr, h_raw=s["h_raw"], dh_proj=dh_proj)
            dh_nl = None if dh_n is None else dh_n[ks]
            dc_nl = None if dc_n is None else dc_n[ks]
            masks = {k: v for k, v in s["reg"].items() if k in ("zoneout_h", "zoneout_c", "rec_mask")}
            if cuda:
                _C.cuda_lstm_backward(w.w_hh, s["gates"], s["cell"], s["c0"], dout, dh_nl, dc_nl, dg, dh0[ks], dc0[ks],
                                      bf, lengths=ctx["kernel_lengths"], **self._cuda_launch(), **masks)
                if db is not None:  # the bias gradient: dG summed over steps and sequences
                    db[...] = xp.sum(dg.reshape(rows, D, 4 * H), axis=0, dtype=xp.float64)
            else:  # (the CPU sums dG for the bias gradient where it packs dG^T for dW_ih below)
                _C.lstm_backward(w.w_hh, s["gates"], s["cell"], s["c0"], dout, dh_nl, dc_nl, dg, dh0[ks], dc0[ks], bf,
                                 None, lengths, **masks, **proj)
            if self.proj_size:  # dW_hr += sum over steps of dh_proj^T h_raw (both [T, B, ...] in the kernels' order)
                for d in range(D):
                    _C.gemm(dh_proj[d].reshape(rows, -1), s["h_raw"][d].reshape(rows, H), w.g_w_hr[d], trans_a=True,
                            accumulate=True, k_rows=live_tm)
            dg2, inp = dg.reshape(rows, D * 4 * H), s["inp"].reshape(rows, -1)
            rec_mask = s["reg"].get("rec_mask")
            # on the CPU, time-major without a recurrent mask, h[t-1] is y one step away: a direction's dW_ih and
            # dW_hh then come from one pass over its dG (one packing of dG^T: 1.03-1.17x at the benchmark shapes)
            together = not cuda and not bf and rec_mask is None
            if cuda:
                _backend.matmul(dg2, inp, w.g_w_ih, trans_a=True, accumulate=True)
            elif not together:
                _C.gemm(dg2, inp, w.g_w_ih, trans_a=True, accumulate=True, k_rows=live,
                        a_sums=None if db is None else db.reshape(-1))
            for d in range(D):
                self._grad_w_hh(w.g_w_hh[d], dg, s["y"], s["h0"], d, T, B, bf, lengths, live,
                                None if rec_mask is None else rec_mask[d],
                                (inp, w.g_w_ih[d * 4 * H:(d + 1) * 4 * H], None if db is None else db[d])
                                if together else None)
            if self.bias:
                w.g_b_ih += db
                w.g_b_hh += db
            dx = (xp.empty if live is None else xp.zeros)((rows, self._layer_input(l)), dt)
            _backend.matmul(dg2, w.w_ih, dx, m_rows=live)
            dx = dx.reshape(seq(self._layer_input(l)))
            if l > 0 and ctx["layers"][l - 1]["mask"] is not None:
                dx *= ctx["layers"][l - 1]["mask"]
            dout = dx
        if order is not None:
            inverse = np.argsort(order)
            dout = _take(dout, inverse, 0 if bf else 1)
            dh0, dc0 = _rows(dh0, inverse), _rows(dc0, inverse)
        if unbatched:
            return dout[:, 0, :], (dh0[:, 0, :], dc0[:, 0, :])
        return dout, (dh0, dc0)

    def _grad_w_hh(self, g_w_hh, dg, y, h0, d, T, B, bf, lengths=None, live=None, mask=None, with_ih=None):
        """g_w_hh += sum over steps of dG[t]^T h[t-1] for direction d (h[t-1]: the state before step t
        in processing order, h0 or zeros before the first; times the recurrent-dropout mask if any).
        with_ih = (inp, g_w_ih, db of direction d): also g_w_ih += dG^T inp and db = dG summed over its rows
        (unless db is None), in the same pass over dG (CPU, time-major, no mask)."""
        dt, H, G = self.dtype, self._hout, 4 * self.hidden_size  # H: h[t-1]'s width; G: dG's per direction
        gcols, hcols = slice(d * G, (d + 1) * G), slice(d * H, (d + 1) * H)
        h0d = None if h0 is None else (h0[d] if mask is None else h0[d] * mask)
        if d == 1 and lengths is not None and h0d is not None:
            # a shorter sequence's reverse direction starts at its own end, from h0 (y there is 0)
            short = np.nonzero(lengths < T)[0]
            if short.size:
                xp = self._xp
                dg3 = dg if not bf else dg.swapaxes(0, 1)  # [T, B, ...]
                first, rows = xp.asarray(lengths[short] - 1), xp.asarray(short)
                g_first = xp.ascontiguousarray(dg3[first, rows][:, gcols])
                _backend.matmul(g_first, xp.ascontiguousarray(h0d[rows]), g_w_hh, trans_a=True, accumulate=True)
        if not bf and mask is None:
            # time-major: the rows of step t and of step t-1 (d=0) or t+1 (d=1) are B rows apart, so
            # both products read y and dG in place
            dg2, y2 = dg.reshape(T * B, -1), y.reshape(T * B, -1)
            head, tail = slice(B, None), slice(None, (T - 1) * B)
            if with_ih is not None:  # B2 = y moved one step: rows past either end are zeros (h0 comes below)
                inp, g_w_ih, db = with_ih
                b2, offset = (y2[tail, hcols], B) if d == 0 else (y2[head, hcols], 0)
                _C.gemm(dg2[:, gcols], inp, g_w_ih, trans_a=True, accumulate=True, k_rows=live, b2=b2, c2=g_w_hh,
                        b2_offset=offset, a_sums=db)
            elif T > 1:
                g_rows, h_rows = (head, tail) if d == 0 else (tail, head)
                k_rows = None
                if live is not None:  # the rows of the sliced dG where a sequence exists
                    k_rows = live[live >= B] - B if d == 0 else live[live < (T - 1) * B]
                _backend.matmul(dg2[g_rows, gcols], y2[h_rows, hcols], g_w_hh, trans_a=True, accumulate=True,
                                k_rows=k_rows)
            if h0d is not None:
                first = slice(None, B) if d == 0 else slice((T - 1) * B, None)
                _backend.matmul(dg2[first, gcols], h0d, g_w_hh, trans_a=True, accumulate=True)
            return
        # otherwise gather h[t-1] in processing order (and mask it)
        yt = y.swapaxes(0, 1) if bf else y            # [T, B, ...] views
        hp = self._xp.empty((B, T, H) if bf else (T, B, H), dt)
        hpt = hp.swapaxes(0, 1) if bf else hp
        first, rest, src = (0, slice(1, None), slice(None, -1)) if d == 0 else (T - 1, slice(None, -1), slice(1, None))
        hpt[first] = 0 if h0d is None else h0d
        hpt[rest] = yt[src, :, hcols] if mask is None else yt[src, :, hcols] * mask
        _backend.matmul(dg.reshape(T * B, -1)[:, gcols], hp.reshape(T * B, H), g_w_hh, trans_a=True, accumulate=True,
                        k_rows=live)
