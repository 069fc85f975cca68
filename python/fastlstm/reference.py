"""Pure-NumPy LSTM, forward and backward: the executable specification of fastlstm.

What this is: the slowest, plainest statement of what every fast path (scalar C++, AVX2, AVX-512,
CUDA) must compute, written for reading. What it is not: fast, or a layer object. Every kernel test
compares against these functions; they are themselves checked against central finite differences in
float64 (tests/test_reference.py).

Conventions (PyTorch's): gate order i, f, g, o; ``w_ih`` is [4H, I], ``w_hh`` is [4H, H]; sequences
are time-major [T, B, ...]; a stacked, possibly bidirectional LSTM takes its parameters as a dict with
PyTorch's state_dict names (``weight_ih_l0``, ``weight_hh_l0_reverse``, ...).

One step, one direction::

    z = x[t] W_ih^T + b_ih + h W_hh^T + b_hh          # [B, 4H]
    i, f, g, o = sigmoid(z_i), sigmoid(z_f), tanh(z_g), sigmoid(z_o)
    c = f * c + i * g
    h = o * tanh(c)
"""

from __future__ import annotations

import numpy as np

__all__ = ["sigmoid", "lstm_layer_forward", "lstm_layer_backward", "lstm_forward", "lstm_backward"]


def sigmoid(x):
    """Logistic function, accurate for large |x| (no overflow warning)."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def lstm_layer_forward(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, reverse=False, lengths=None,
                       zoneout=None, rec_mask=None, w_hr=None):
    """One direction of one layer.

    x: [T, B, I]; w_ih: [4H, I]; w_hh: [4H, H]; b_ih, b_hh: [4H] or None; h0, c0: [B, H] or None;
    lengths: [B] valid steps per sequence (1..T) or None for all T.
    Returns (y [T, B, H], h_n [B, H], c_n [B, H], cache for lstm_layer_backward).
    With reverse=True the sequence is processed from t = T-1 down to 0 (y stays indexed by t).
    With lengths, sequence b only exists at t < lengths[b] (PyTorch's packed sequences): at other steps
    its state is left as it is and its output is 0, so h_n is its last valid step's and the reverse
    direction starts at its own end.
    zoneout: None or (zh, zc), arrays broadcastable to [T, B, H] with values in [0, 1] (Krueger et al.
    2016): h[t] = zh h[t-1] + (1 - zh) o tanh(c~), c[t] = zc c[t-1] + (1 - zc) c~ with
    c~ = f c[t-1] + i g; 0/1 masks in training, the probabilities themselves (the expectation) in eval.
    rec_mask: None or [B, H], multiplies h[t-1] where it enters the recurrence (variational recurrent
    dropout, Gal & Ghahramani 2016: one mask per sequence for all steps, 0 or 1/(1-p)).
    w_hr: None or [P, H], a projection (LSTMP, PyTorch's proj_size): h[t] = W_hr (o * tanh(c)) has P
    values, and w_hh is [4H, P]; h0 is then [B, P] and y [T, B, P].
    """
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    h = np.zeros((B, P), x.dtype) if h0 is None else h0
    c = np.zeros((B, H), x.dtype) if c0 is None else c0
    bias = (0 if b_ih is None else b_ih) + (0 if b_hh is None else b_hh)
    order = range(T - 1, -1, -1) if reverse else range(T)
    y = np.zeros((T, B, P), x.dtype)
    steps = []
    zh, zc = (None, None) if zoneout is None else (np.broadcast_to(zoneout[0], (T, B, P)),
                                                   np.broadcast_to(zoneout[1], (T, B, H)))
    for t in order:
        live = np.ones((B, 1), bool) if lengths is None else (t < np.asarray(lengths))[:, None]
        h_in = h if rec_mask is None else h * rec_mask
        z = x[t] @ w_ih.T + h_in @ w_hh.T + bias
        i, f, g, o = sigmoid(z[:, :H]), sigmoid(z[:, H:2 * H]), np.tanh(z[:, 2 * H:3 * H]), sigmoid(z[:, 3 * H:])
        c_prev, h_prev = c, h
        c_tilde = f * c + i * g
        h_raw = o * np.tanh(c_tilde)
        h_new = h_raw if w_hr is None else h_raw @ w_hr.T
        c_new = c_tilde
        if zh is not None:
            h_new = zh[t] * h_prev + (1 - zh[t]) * h_new
            c_new = zc[t] * c_prev + (1 - zc[t]) * c_tilde
        c, h = np.where(live, c_new, c), np.where(live, h_new, h)
        y[t] = np.where(live, h_new, 0)
        steps.append((t, live, h_prev, h_in, c_prev, i, f, g, o, c_tilde, h_raw))
    cache = dict(x=x, w_ih=w_ih, w_hh=w_hh, w_hr=w_hr, steps=steps, zh=zh, zc=zc, rec_mask=rec_mask)
    return y, h, c, cache


def lstm_layer_backward(dy, dh_n, dc_n, cache):
    """Backpropagation through time for lstm_layer_forward.

    dy: [T, B, H] or None; dh_n, dc_n: [B, H] or None.
    Returns (dx, dh0, dc0, grads) with grads = dict(w_ih, w_hh, b_ih, b_hh).
    """
    x, w_ih, w_hh, steps = cache["x"], cache["w_ih"], cache["w_hh"], cache["steps"]
    zh, zc, rec_mask, w_hr = cache["zh"], cache["zc"], cache["rec_mask"], cache["w_hr"]
    B, P = steps[0][2].shape
    H = w_hh.shape[0] // 4
    dh = np.zeros((B, P), x.dtype) if dh_n is None else dh_n.copy()
    dc = np.zeros((B, H), x.dtype) if dc_n is None else dc_n.copy()
    dx = np.zeros_like(x)
    dw_ih, dw_hh = np.zeros_like(w_ih), np.zeros_like(w_hh)
    db = np.zeros(4 * H, x.dtype)
    dw_hr = None if w_hr is None else np.zeros_like(w_hr)
    for t, live, h_prev, h_in, c_prev, i, f, g, o, c, h_raw in reversed(steps):
        # a sequence absent at step t passed its state through unchanged: so do its gradients
        dh_t = dh if dy is None else dh + dy[t]
        dh_new, dc_state = dh_t, dc                   # gradients of o tanh(c~) and of c~ through c[t]
        if zh is not None:
            dh_new, dc_state = (1 - zh[t]) * dh_t, (1 - zc[t]) * dc
        if w_hr is not None:  # through the projection: dW_hr += dh h_raw^T, d h_raw = dh W_hr
            dw_hr += np.where(live, dh_new, 0).T @ h_raw
            dh_new = dh_new @ w_hr
        tc = np.tanh(c)
        do = dh_new * tc
        dc_t = dc_state + dh_new * o * (1 - tc ** 2)  # d c~
        di, df, dg = dc_t * g, dc_t * c_prev, dc_t * i
        dz = np.concatenate([di * i * (1 - i), df * f * (1 - f), dg * (1 - g ** 2), do * o * (1 - o)], axis=1)
        dz = np.where(live, dz, 0)
        dx[t] = dz @ w_ih
        dw_ih += dz.T @ x[t]
        dw_hh += dz.T @ h_in
        db += dz.sum(axis=0)
        dh_prev = dz @ w_hh if rec_mask is None else (dz @ w_hh) * rec_mask
        dc_prev = dc_t * f
        if zh is not None:
            dh_prev = dh_prev + zh[t] * dh_t
            dc_prev = dc_prev + zc[t] * dc
        dh = np.where(live, dh_prev, dh)
        dc = np.where(live, dc_prev, dc)
    grads = dict(w_ih=dw_ih, w_hh=dw_hh, b_ih=db, b_hh=db.copy())
    if w_hr is not None:
        grads["w_hr"] = dw_hr
    return dx, dh, dc, grads


def _suffix(d):
    return "_reverse" if d == 1 else ""


def lstm_forward(x, params, num_layers=1, bidirectional=False, h0=None, c0=None, dropout_masks=None,
                 lengths=None, zoneout=None, rec_masks=None):
    """A stacked (optionally bidirectional) LSTM, time-major, as torch.nn.LSTM computes it.

    x: [T, B, I]; params: PyTorch state_dict names -> arrays (biases may be absent);
    h0, c0: [L*D, B, H] or None; dropout_masks: None or a list of L-1 arrays [T, B, D*H] that
    multiply the output of layer l before it enters layer l+1 (already scaled by 1/(1-p));
    lengths: [B] valid steps per sequence or None; zoneout, rec_masks: None or one entry per layer and
    direction (index layer * D + d), as lstm_layer_forward's zoneout and rec_mask.
    Returns (y [T, B, D*H], (h_n, c_n) each [L*D, B, H], cache).
    """
    D = 2 if bidirectional else 1
    inp = x
    hn, cn, caches, inputs = [], [], [], []
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            sfx = f"_l{layer}{_suffix(d)}"
            y, h, c, cache = lstm_layer_forward(
                inp, params["weight_ih" + sfx], params["weight_hh" + sfx],
                params.get("bias_ih" + sfx), params.get("bias_hh" + sfx),
                None if h0 is None else h0[k], None if c0 is None else c0[k], reverse=d == 1, lengths=lengths,
                zoneout=None if zoneout is None else zoneout[k], rec_mask=None if rec_masks is None else rec_masks[k],
                w_hr=params.get("weight_hr" + sfx))
            outs.append(y)
            hn.append(h)
            cn.append(c)
            caches.append(cache)
        inputs.append(inp)
        out = np.concatenate(outs, axis=2)
        if dropout_masks is not None and layer < num_layers - 1:
            out = out * dropout_masks[layer]
        inp = out
    cache = dict(caches=caches, num_layers=num_layers, D=D, dropout_masks=dropout_masks)
    return inp, (np.stack(hn), np.stack(cn)), cache


def lstm_backward(dy, dh_n, dc_n, cache):
    """Backward of lstm_forward. dy: [T, B, D*H] or None; dh_n, dc_n: [L*D, B, H] or None.

    Returns (dx, dh0, dc0, grads by PyTorch name).
    """
    L, D, caches, masks = cache["num_layers"], cache["D"], cache["caches"], cache["dropout_masks"]
    H = caches[0]["w_hh"].shape[1]  # the width of h: hidden_size, or proj_size with a projection
    grads, dh0, dc0 = {}, [None] * (L * D), [None] * (L * D)
    dout = dy
    for layer in reversed(range(L)):
        dx_total = None
        for d in range(D):
            k = layer * D + d
            dyd = None if dout is None else dout[:, :, d * H:(d + 1) * H]
            dx, dh, dc, g = lstm_layer_backward(
                dyd, None if dh_n is None else dh_n[k], None if dc_n is None else dc_n[k], caches[k])
            dx_total = dx if dx_total is None else dx_total + dx
            dh0[k], dc0[k] = dh, dc
            sfx = f"_l{layer}{_suffix(d)}"
            names = {"w_ih": "weight_ih", "w_hh": "weight_hh", "b_ih": "bias_ih", "b_hh": "bias_hh", "w_hr": "weight_hr"}
            for name, value in g.items():
                grads[names[name] + sfx] = value
        if layer > 0 and masks is not None:
            dx_total = dx_total * masks[layer - 1]
        dout = dx_total
    return dout, np.stack(dh0), np.stack(dc0), grads
