"""fastlstm.LSTMCell: one LSTM step with torch.nn.LSTMCell's semantics, on the fused kernel.

What this is: ``h, c = cell(x, (h, c))`` for step-by-step generation, streaming and hand-written
loops. Each call is a fastlstm.LSTM call with T = 1 (the step GEMM fused with the gate math, and on
the CPU the input projection too while the weights fit in cache). In training mode each call records what
its backward needs on a stack; ``cell.backward(dh, dc)`` undoes the latest recorded call, returning
``dx, (dh_prev, dc_prev)`` and adding parameter gradients, so BPTT written by hand runs the calls'
backwards in reverse order. Parameters: ``weight_ih [4H, I]``, ``weight_hh [4H, H]``, ``bias_ih``,
``bias_hh`` (PyTorch's names, shapes, gate order i, f, g, o and init).

    cell = fastlstm.LSTMCell(10, 20, seed=0)
    h = c = None
    for x_t in xs:                       # x_t: [B, 10]
        h, c = cell(x_t, None if h is None else (h, c))
    dx, (dh, dc) = cell.backward(dh_last, dc_last)   # the last step; call again for the one before

Tests: tests/test_cell.py (against fastlstm.reference's BPTT, itself checked by finite differences, and
torch.nn.LSTMCell).
"""

from __future__ import annotations

import numpy as np

from . import _backend
from . import _validate as V
from .layer import LSTM

__all__ = ["LSTMCell"]

_NAMES = {"weight_ih_l0": "weight_ih", "weight_hh_l0": "weight_hh", "bias_ih_l0": "bias_ih", "bias_hh_l0": "bias_hh"}


class LSTMCell:
    """A single LSTM step: (x [B, I] or [I], (h, c) [B, H] or [H], or None for zeros) -> (h, c)."""

    def __init__(self, input_size, hidden_size, bias=True, dtype="float32", device="cpu", seed=None):
        self._core = LSTM(input_size, hidden_size, bias=bias, dtype=dtype, device=device, seed=seed)
        self._core._keep_every_forward = True  # every recorded call keeps its own gates and c
        self._bind_params()
        self._records = []  # one saved forward per training-mode call, newest last

    def _bind_params(self) -> None:
        self._params = {_NAMES[k]: p for k, p in self._core.named_parameters()}
        for new, p in self._params.items():
            p.name = new

    def __getstate__(self) -> dict:
        """pickle and copy.deepcopy: as LSTM's (weights, gradients, seed state), without recorded calls."""
        return dict(self.__dict__, _records=[])

    input_size = property(lambda self: self._core.input_size)
    hidden_size = property(lambda self: self._core.hidden_size)
    bias = property(lambda self: self._core.bias)
    dtype = property(lambda self: self._core.dtype)
    training = property(lambda self: self._core.training)
    device = property(lambda self: self._core.device)

    def to(self, device) -> "LSTMCell":
        """Move the parameters to `device` ('cpu', 'cuda' or 'cuda:N'); recorded calls are dropped."""
        self._core.to(device)
        self._bind_params()
        self._records.clear()
        return self

    def train(self, mode: bool = True) -> "LSTMCell":
        self._core.train(mode)
        if not self._core.training:
            self._records.clear()
        return self

    def eval(self) -> "LSTMCell":
        return self.train(False)

    def named_parameters(self):
        return iter(self._params.items())

    def parameters(self):
        return list(self._params.values())

    def zero_grad(self) -> None:
        self._core.zero_grad()

    def state_dict(self) -> dict:
        """NumPy copies of the parameters under torch.nn.LSTMCell's names, whatever the device."""
        return {k: np.array(_backend.to_numpy(p.data)) for k, p in self._params.items()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        if not hasattr(state, "keys"):
            raise TypeError(f"state: expected a dict of arrays, got {V.describe(state)}")
        inverse = {v: k for k, v in _NAMES.items()}
        unexpected = [k for k in state if k not in inverse]
        missing = [k for k in self._params if k not in state]
        if strict and (missing or unexpected):
            raise ValueError(f"state: missing keys {missing}, unexpected keys {unexpected}")
        self._core.load_state_dict({inverse[k]: v for k, v in state.items() if k in inverse}, strict=strict)

    def __repr__(self) -> str:
        return f"LSTMCell({self.input_size}, {self.hidden_size}" + ("" if self.bias else ", bias=False") + ")"

    def __call__(self, x, hx=None):
        return self.forward(x, hx)

    def forward(self, x, hx=None):
        """(h, c) after one step from state hx = (h, c) (zeros when None); shapes as torch.nn.LSTMCell."""
        x = V.array(x, "x", self.dtype, f"(batch, {self.input_size}) or ({self.input_size},)", self._core.device)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ValueError(f"x: expected shape (batch, {self.input_size}) or ({self.input_size},), got {x.shape}")
        unbatched = x.ndim == 1
        if not unbatched and x.shape[0] == 0:
            raise ValueError(f"x: expected at least one sequence, got shape {x.shape}")
        xb = x[None, :] if unbatched else x
        B, H = xb.shape[0], self.hidden_size
        state = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"hx: expected a pair (h, c) of arrays or None, got {V.describe(hx)}")
            state = []
            for member, part in zip(hx, ("[0]", "[1]")):
                member = V.array(member, "hx" + part, self.dtype, f"({H},)" if unbatched else f"({B}, {H})",
                                 self._core.device)
                V.shape(member, "hx" + part, (H,) if unbatched else (B, H), "(the batch of x, hidden_size)")
                state.append(self._core._xp.ascontiguousarray(member).reshape(1, B, H))
        y, (h_n, c_n) = self._core(xb[None], None if state is None else tuple(state))
        if self._core.training:
            self._records.append((self._core._ctx, unbatched))
            self._core._ctx = None
        h, c = h_n[0], c_n[0]
        return (h[0], c[0]) if unbatched else (h, c)

    def backward(self, dh, dc=None):
        """Undo the latest recorded call: dx, (dh_prev, dc_prev) from dL/dh and dL/dc of its outputs
        (either may be None); parameter gradients are added into p.grad."""
        if not self._records:
            raise ValueError("backward: no recorded forward to differentiate; call the cell in training mode "
                             "(cell.train()) first, once per backward")
        ctx, unbatched = self._records[-1]  # popped once the arguments are known good
        B, H = ctx["B"], self.hidden_size
        grads = []
        for g, name in ((dh, "dh"), (dc, "dc")):
            if g is not None:
                g = V.array(g, name, self.dtype, f"({H},)" if unbatched else f"({B}, {H})", self._core.device)
                V.shape(g, name, (H,) if unbatched else (B, H), "(the shape of h)")
                g = self._core._xp.ascontiguousarray(g).reshape(1, B, H)
            grads.append(g)
        self._records.pop()
        self._core._ctx = ctx
        dx, (dh0, dc0) = self._core.backward(None, tuple(grads))
        dx, dh0, dc0 = dx[0], dh0[0], dc0[0]
        return (dx[0], (dh0[0], dc0[0])) if unbatched else (dx, (dh0, dc0))
