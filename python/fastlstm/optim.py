"""Optimizers, gradient clipping and learning-rate schedules, with PyTorch's update rules.

What this is: ``SGD`` (momentum, Nesterov, L2 weight decay), ``Adam`` (L2 weight decay, as
torch.optim.Adam) and ``AdamW`` (decoupled weight decay, as torch.optim.AdamW); ``clip_grad_norm``
(global L2 norm, as torch.nn.utils.clip_grad_norm_); schedules ``ConstantLR``, ``StepLR`` and
``CosineLR`` (linear warm-up, cosine decay) as callables step -> learning rate. Every update is in
place on the parameter's own array, so it stays on its device and the layer sees it on the next call.

    opt = Adam(model.parameters(), lr=3e-3)
    clip_grad_norm(model.parameters(), 1.0)
    opt.step(); opt.zero_grad()
    state = opt.state_dict()          # steps taken, lr and per-parameter buffers (copies): resume with
    opt2.load_state_dict(state)       # an optimizer of the same kind over parameters of the same shapes

Tests: tests/test_optim.py (each rule against values computed by hand, and against torch when present).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _backend
from . import _validate as V

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm", "ConstantLR", "StepLR", "CosineLR"]


def _parameters(params) -> list:
    """params (an iterable of Parameters: model.parameters()) as a list; a TypeError naming it otherwise."""
    if isinstance(params, (str, bytes)) or not hasattr(params, "__iter__"):
        if hasattr(params, "parameters"):
            raise TypeError(f"params: expected an iterable of Parameters, got a {type(params).__name__} model; "
                            "pass model.parameters()")
        raise TypeError(f"params: expected an iterable of Parameters (model.parameters()), got {V.describe(params)}")
    params = list(params)
    for i, p in enumerate(params):
        if not (hasattr(p, "data") and hasattr(p, "grad")):
            raise TypeError(f"params[{i}]: expected a Parameter (with .data and .grad), got {type(p).__name__}")
    return params


class Optimizer:
    """Holds the parameters (objects with .data and .grad arrays), the learning rate and per-parameter state."""

    state_names: tuple = ()  # the per-parameter buffers a subclass keeps (all of them, or none before a first step)

    def __init__(self, params, lr):
        self.params = _parameters(params)
        if not self.params:
            raise ValueError("params: expected at least one parameter, got none")
        self.lr = V.finite_number(lr, "lr")
        self.steps = 0
        self.state = [dict() for _ in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad[...] = 0

    def step(self) -> None:
        self.steps += 1
        for p, st in zip(self.params, self.state):
            self._update(p.data, p.grad, st)

    def _update(self, w, g, st) -> None:
        raise NotImplementedError

    @property
    def buffered(self) -> bool:
        """Whether a step gives every parameter its state_names buffers (SGD: only with momentum)."""
        return bool(self.state_names)

    def state_dict(self) -> dict:
        """{"type": class name, "steps": steps taken, "lr": the current rate, "state": {"<i>.<buffer>": a copy of
        parameter i's buffer}}: what load_state_dict needs to continue exactly where this optimizer is."""
        state = {}
        for i, st in enumerate(self.state):
            for name, buf in st.items():
                if name not in self.state_names or not hasattr(buf, "copy"):
                    raise TypeError(f"{type(self).__name__}: parameter {i}'s state {name!r} is not an array listed in "
                                    f"its state_names {self.state_names}; a subclass names its buffers there")
                state[f"{i}.{name}"] = buf.copy()
        return {"type": type(self).__name__, "steps": self.steps, "lr": self.lr, "state": state}

    def load_state_dict(self, state_dict) -> None:
        """Take steps, lr and buffers from state_dict (as state_dict() gives them, e.g. from a checkpoint), copied
        to each parameter's dtype and device. All or nothing: a bad entry raises before anything changes.
        Hyperparameters (betas, momentum, ...) stay as this optimizer was built."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict: expected a dict (Optimizer.state_dict()), got {V.describe(state_dict)}")
        unknown = sorted(set(state_dict) - {"type", "steps", "lr", "state"})
        if unknown:
            raise ValueError(f"state_dict: unexpected keys {unknown}; expected type, steps, lr and state")
        kind = state_dict.get("type", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"state_dict: holds the state of a {kind}, not of this {type(self).__name__}")
        steps = state_dict.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise TypeError(f"state_dict['steps']: expected a non-negative int, got {V.describe(steps)}")
        if steps < 0:
            raise ValueError(f"state_dict['steps']: expected a non-negative int, got {steps}")
        lr = V.finite_number(state_dict["lr"], "state_dict['lr']", allow_zero=True) if "lr" in state_dict else self.lr
        buffers = state_dict.get("state", {})
        if not isinstance(buffers, dict):
            raise TypeError(f"state_dict['state']: expected a dict of arrays, got {V.describe(buffers)}")
        new = [dict() for _ in self.params]
        for key, value in buffers.items():
            index, _, name = str(key).partition(".")
            if not (index.isascii() and index.isdigit() and int(index) < len(self.params) and name in self.state_names):
                raise ValueError(f"state_dict['state']: unexpected key {key!r}; expected '<i>.<buffer>' with i < "
                                 f"{len(self.params)} and a buffer among {list(self.state_names)}")
            w = self.params[int(index)].data
            xp = _backend.array_module(w)
            where = f"state_dict['state'][{key!r}]"
            if not hasattr(value, "shape"):
                raise TypeError(f"{where}: expected an array of shape {tuple(w.shape)}, got {V.describe(value)}")
            arr = _backend.to_numpy(value) if xp is np else xp.asarray(value)
            if arr.dtype.kind not in "fiu":
                raise TypeError(f"{where}: expected an array of real numbers, got {V.describe(value)}")
            if tuple(arr.shape) != tuple(w.shape):
                raise ValueError(f"{where}: expected shape {tuple(w.shape)} (parameter {index}'s), got {tuple(arr.shape)}")
            new[int(index)][name] = arr.astype(w.dtype, copy=True)
        # buffers come with the first step, for every parameter: a state that lacks some does not continue exactly
        # (an optimizer over more parameters than the one saved, or one whose hyperparameters differ)
        for i, st in enumerate(new):
            if (st or (steps and self.buffered)) and len(st) != len(self.state_names):
                missing = sorted(set(self.state_names) - set(st))
                raise ValueError(f"state_dict['state']: parameter {i} has {sorted(st) or 'no buffers'} but not {missing} "
                                 f"(after {steps} steps this {type(self).__name__} keeps {list(self.state_names)} "
                                 "for every parameter)")
            if st and not self.buffered:
                raise ValueError(f"state_dict['state']: holds {sorted(st)} for parameter {i}, which this "
                                 f"{type(self).__name__} does not keep (its hyperparameters differ from the saved one's)")
        self.steps, self.lr, self.state = int(steps), lr, new


class SGD(Optimizer):
    """g = grad + wd*w;  buf = momentum*buf + (1-dampening)*g (buf = g at the first step);
    w -= lr * (g + momentum*buf if nesterov else buf)   (plain SGD when momentum = 0)."""

    state_names = ("momentum",)

    @property
    def buffered(self) -> bool:
        return self.momentum != 0

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        self.momentum = V.finite_number(momentum, "momentum", allow_zero=True)
        self.dampening = V.finite_number(dampening, "dampening", allow_zero=True)
        self.weight_decay = V.finite_number(weight_decay, "weight_decay", allow_zero=True)
        self.nesterov = V.boolean(nesterov, "nesterov")
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError("nesterov: needs momentum > 0 and dampening = 0")

    def _update(self, w, g, st):
        dt = w.dtype.type
        if self.weight_decay:
            g = g + dt(self.weight_decay) * w
        if self.momentum:
            buf = st.get("momentum")
            if buf is None:
                buf = st["momentum"] = g.copy()
            else:
                buf *= dt(self.momentum)
                buf += dt(1 - self.dampening) * g
            g = g + dt(self.momentum) * buf if self.nesterov else buf
        w -= dt(self.lr) * g


class Adam(Optimizer):
    """m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2;  w -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps),
    with g = grad + wd*w (L2 penalty, torch.optim.Adam's weight_decay)."""

    decoupled = False
    state_names = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas: expected a pair of numbers in [0, 1), got {betas!r}")
        self.betas = tuple(V.probability(b, f"betas[{i}]") for i, b in enumerate(betas))
        self.eps = V.finite_number(eps, "eps")
        self.weight_decay = V.finite_number(weight_decay, "weight_decay", allow_zero=True)

    def _update(self, w, g, st):
        xp = _backend.array_module(w)
        dt = w.dtype.type
        b1, b2 = self.betas
        if self.weight_decay:
            if self.decoupled:
                w *= dt(1 - self.lr * self.weight_decay)
            else:
                g = g + dt(self.weight_decay) * w
        if "m" not in st:
            st["m"] = xp.zeros_like(w)
            st["v"] = xp.zeros_like(w)
        m, v = st["m"], st["v"]
        m *= dt(b1)
        m += dt(1 - b1) * g
        v *= dt(b2)
        v += dt(1 - b2) * (g * g)
        t = self.steps
        step_size = self.lr / (1 - b1 ** t)
        denom = xp.sqrt(v) / dt(math.sqrt(1 - b2 ** t))
        denom += dt(self.eps)
        w -= dt(step_size) * (m / denom)


class AdamW(Adam):
    """Adam with decoupled weight decay: w *= 1 - lr*wd before the Adam step (torch.optim.AdamW)."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


def clip_grad_norm(params, max_norm: float) -> float:
    """Scale all gradients by max_norm / (norm + 1e-6) when their global L2 norm exceeds max_norm.

    Returns the norm before clipping (inf or nan when a gradient is; then nothing is scaled).
    """
    max_norm = V.finite_number(max_norm, "max_norm")
    params = _parameters(params)
    total = 0.0
    for p in params:
        g = p.grad
        total += float((g.astype("float64") * g).sum()) if g.dtype.itemsize < 8 else float((g * g).sum())
    norm = math.sqrt(total)
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for p in params:
            p.grad *= p.grad.dtype.type(scale)
    return norm


class ConstantLR:
    """lr at every step."""

    def __init__(self, lr):
        self.lr = V.finite_number(lr, "lr")

    def __call__(self, step: int) -> float:
        return self.lr


class StepLR:
    """lr * gamma ** (step // step_size)."""

    def __init__(self, lr, step_size, gamma=0.1):
        self.lr = V.finite_number(lr, "lr")
        if isinstance(step_size, bool) or not isinstance(step_size, numbers.Integral) or step_size < 1:
            raise ValueError(f"step_size: expected a positive int, got {step_size!r}")
        self.step_size = step_size
        self.gamma = V.finite_number(gamma, "gamma")

    def __call__(self, step: int) -> float:
        return self.lr * self.gamma ** (step // self.step_size)


class CosineLR:
    """Linear warm-up from 0 over warmup_steps, then cosine decay from lr to min_lr at total_steps."""

    def __init__(self, lr, total_steps, warmup_steps=0, min_lr=0.0):
        self.lr = V.finite_number(lr, "lr")
        if isinstance(total_steps, bool) or not isinstance(total_steps, numbers.Integral) or total_steps < 1:
            raise ValueError(f"total_steps: expected a positive int, got {total_steps!r}")
        if (isinstance(warmup_steps, bool) or not isinstance(warmup_steps, numbers.Integral)
                or not 0 <= warmup_steps <= total_steps):
            raise ValueError(f"warmup_steps: expected an int in [0, total_steps={total_steps}], got {warmup_steps!r}")
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.min_lr = V.finite_number(min_lr, "min_lr", allow_zero=True)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: expected at most lr={self.lr} (the decay ends there), got {self.min_lr}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))
