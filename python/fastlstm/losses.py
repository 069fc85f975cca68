"""Losses: each returns the mean loss and its gradient with respect to the prediction, in one call.

What this is: ``CrossEntropyLoss`` (softmax cross-entropy over sequences of logits, with an ignore
index and/or a mask) and ``MSELoss``. Both also report ``sum_and_count`` so evaluation over many
batches weighs every token or element equally. NumPy or CuPy arrays, computed on their device.
Predictions and logits must be floating point (a model's output; an integer prediction is refused,
as in PyTorch, rather than promoted to a precision nobody chose); targets and masks may be lists.

    loss_fn = CrossEntropyLoss(ignore_index=0)
    loss, dlogits = loss_fn(logits, targets)     # logits [..., V], targets [...] integer ids

Tests: tests/test_nn.py (gradients against central finite differences, hand-computed values);
tests/test_nn_errors.py (bad arguments).
"""

from __future__ import annotations

import numbers

from . import _backend
from .nn import _as_array

__all__ = ["CrossEntropyLoss", "MSELoss"]


class CrossEntropyLoss:
    """mean over counted positions of -log softmax(logits)[target].

    ignore_index: targets equal to it count for nothing; mask: an array shaped like targets whose
    nonzero entries count (both may be given). The mean divides by the number of counted positions
    (a batch with none gives loss 0 and a zero gradient).
    """

    name = "cross_entropy"

    def __init__(self, ignore_index=None):
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral)):
            raise TypeError(f"ignore_index: expected an int or None, got {type(ignore_index).__name__}")
        self.ignore_index = ignore_index

    def _parts(self, logits, targets, mask):
        logits = _as_array(logits, "logits", "f", "a floating-point array of shape (..., classes)")
        targets = _as_array(targets, "targets", "iu", "integer class ids")
        xp = _backend.array_module(logits)
        if logits.ndim < 1 or logits.shape[-1] == 0:
            raise ValueError(f"logits: expected shape (..., classes) with at least one class, "
                             f"got {tuple(logits.shape)}")
        if tuple(targets.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"targets: expected shape {tuple(logits.shape[:-1])} (logits' without the class axis), "
                             f"got {tuple(targets.shape)}")
        V = logits.shape[-1]
        counted = xp.ones(targets.shape, bool)
        if self.ignore_index is not None:
            counted &= targets != self.ignore_index
        if mask is not None:
            mask = _as_array(mask, "mask", "biuf", f"an array of shape {tuple(targets.shape)} (nonzero counts)")
            if tuple(mask.shape) != tuple(targets.shape):
                raise ValueError(f"mask: expected shape {tuple(targets.shape)}, got {tuple(mask.shape)}")
            counted &= mask != 0
        safe = xp.where(counted, targets, 0)
        if targets.size and (int(safe.min()) < 0 or int(safe.max()) >= V):
            raise ValueError(f"targets: expected class ids in [0, {V}), got min {int(safe.min())} max {int(safe.max())}")
        shifted = logits - logits.max(axis=-1, keepdims=True)
        expd = xp.exp(shifted)
        total = expd.sum(axis=-1, keepdims=True)
        picked = xp.take_along_axis(shifted, safe[..., None], axis=-1)[..., 0]
        # positions that count for nothing give exactly 0, even with a -inf or NaN logit there (0 * inf is NaN)
        nll = xp.where(counted, xp.log(total[..., 0]) - picked, 0)
        return xp, counted, safe, expd / total, nll

    def __call__(self, logits, targets, mask=None):
        """(mean loss as a Python float, dL/dlogits shaped like logits)."""
        xp, counted, safe, probs, nll = self._parts(logits, targets, mask)
        count = float(counted.sum())
        scale = 1.0 / count if count > 0 else 0.0
        loss = float(nll.sum()) * scale
        grad = probs
        onehot_rows = xp.take_along_axis(grad, safe[..., None], axis=-1) - 1
        xp.put_along_axis(grad, safe[..., None], onehot_rows, axis=-1)
        grad *= grad.dtype.type(scale)
        return loss, xp.where(counted[..., None], grad, grad.dtype.type(0))

    def sum_and_count(self, logits, targets, mask=None):
        _, counted, _, _, nll = self._parts(logits, targets, mask)
        return float(nll.sum()), float(counted.sum())


class MSELoss:
    """mean over all elements of (prediction - target)^2."""

    name = "mse"

    @staticmethod
    def _diff(pred, target):
        """pred - target in the prediction's floating dtype."""
        pred = _as_array(pred, "pred", "f", "a floating-point array of predictions")
        target = _as_array(target, "target", "fiu",
                           f"a real-valued array of the prediction's shape {tuple(pred.shape)}")
        if tuple(pred.shape) != tuple(target.shape):
            raise ValueError(f"target: expected the prediction's shape {tuple(pred.shape)}, got {tuple(target.shape)}")
        return pred - target.astype(pred.dtype, copy=False)

    def __call__(self, pred, target):
        diff = self._diff(pred, target)
        n = diff.size
        loss = float((diff * diff).sum()) / n if n else 0.0
        return loss, diff * diff.dtype.type(2.0 / n if n else 0.0)

    def sum_and_count(self, pred, target):
        diff = self._diff(pred, target)
        return float((diff * diff).sum()), float(diff.size)
