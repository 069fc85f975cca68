"""The NumPy reference (fastlstm.reference) against central finite differences in float64.

The reference is the spec every kernel is tested against, so its own backward is checked here
numerically: every input, initial state and parameter, for stacked, bidirectional, dropout-masked
configurations.
"""

import numpy as np
import pytest

from conftest import numeric_grad, random_state_dict
from fastlstm import reference as R


def check_gradients(rng, x, params, num_layers, bidirectional, h0, c0, **options):
    """The reference's backward of loss = <y, wy> + <h_n, wh> + <c_n, wc> (random weights) against central
    differences, for x, h0, c0 and every parameter; options go to lstm_forward (masks, lengths, ...)."""
    y, (hn, cn), cache = R.lstm_forward(x, params, num_layers, bidirectional, h0, c0, **options)
    wy, wh, wc = (rng.standard_normal(a.shape) for a in (y, hn, cn))

    def loss():
        y, (hn, cn), _ = R.lstm_forward(x, params, num_layers, bidirectional, h0, c0, **options)
        return (y * wy).sum() + (hn * wh).sum() + (cn * wc).sum()

    dx, dh0, dc0, grads = R.lstm_backward(wy, wh, wc, cache)
    for name, analytic, arr in [("x", dx, x), ("h0", dh0, h0), ("c0", dc0, c0)] + [
            (k, grads[k], params[k]) for k in params]:
        numeric = numeric_grad(loss, arr)
        err = np.abs(analytic - numeric).max() / max(1.0, np.abs(numeric).max())
        assert err < 1e-7, f"d loss / d {name}: finite-difference mismatch {err:.2e}"
    return y, hn, cn


@pytest.mark.parametrize("num_layers,bidirectional,use_masks,lengths", [
    (1, False, False, None), (2, True, False, None), (2, False, True, None),
    (1, True, False, [4, 2, 1]), (2, True, True, [1, 3, 4])])
def test_reference_backward_matches_finite_differences(num_layers, bidirectional, use_masks, lengths):
    rng = np.random.default_rng(1)
    T, B, I, H = 4, 2 if lengths is None else len(lengths), 3, 5
    D = 2 if bidirectional else 1
    params = random_state_dict(rng, I, H, num_layers, bidirectional)
    x = rng.standard_normal((T, B, I))
    h0 = rng.standard_normal((num_layers * D, B, H))
    c0 = rng.standard_normal((num_layers * D, B, H))
    masks = [rng.choice([0.0, 2.0], size=(T, B, D * H)) for _ in range(num_layers - 1)] if use_masks else None
    check_gradients(rng, x, params, num_layers, bidirectional, h0, c0, dropout_masks=masks, lengths=lengths)


def test_reference_reverse_direction_is_time_reversal():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 2, 3))
    p = random_state_dict(rng, 3, 4)
    args = (p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"])
    y_rev, h_rev, _, _ = R.lstm_layer_forward(x, *args, reverse=True)
    y_fwd, h_fwd, _, _ = R.lstm_layer_forward(x[::-1], *args)
    np.testing.assert_allclose(y_rev, y_fwd[::-1], rtol=1e-14)
    np.testing.assert_allclose(h_rev, h_fwd, rtol=1e-14)


@pytest.mark.parametrize("expectation", [False, True])
def test_reference_zoneout_and_recurrent_dropout_gradients(expectation):
    rng = np.random.default_rng(5)
    T, B, I, H, L, D = 4, 2, 3, 4, 2, 2
    params = random_state_dict(rng, I, H, L, True)
    x = rng.standard_normal((T, B, I))
    if expectation:  # eval: the probabilities themselves
        zo = [(0.3, 0.1)] * (L * D)
        rm = None
    else:
        zo = [(rng.random((T, B, H)) < 0.3, rng.random((T, B, H)) < 0.2) for _ in range(L * D)]
        zo = [(a.astype(float), b.astype(float)) for a, b in zo]
        rm = [(rng.random((B, H)) >= 0.25) / 0.75 for _ in range(L * D)]
    lengths = [4, 2]
    h0, c0 = rng.standard_normal((L * D, B, H)), rng.standard_normal((L * D, B, H))
    check_gradients(rng, x, params, L, True, h0, c0, lengths=lengths, zoneout=zo, rec_masks=rm)


def test_reference_projection_gradients():
    rng = np.random.default_rng(8)
    T, B, I, H, P, L, D = 4, 2, 3, 5, 3, 2, 2
    params = random_state_dict(rng, I, H, L, True, proj_size=P)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((L * D, B, P)), rng.standard_normal((L * D, B, H))
    zo = [((rng.random((T, B, P)) < 0.3).astype(float), (rng.random((T, B, H)) < 0.3).astype(float)) for _ in range(L * D)]
    y, hn, cn = check_gradients(rng, x, params, L, True, h0, c0, lengths=[4, 3], zoneout=zo)
    assert y.shape == (T, B, D * P) and hn.shape == (L * D, B, P) and cn.shape == (L * D, B, H)


def test_reference_projection_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    T, B, I, H, P = 5, 3, 4, 6, 2
    tl = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P).double()
    params = {k: v.detach().numpy() for k, v in tl.state_dict().items()}
    x = rng.standard_normal((T, B, I))
    y, (hn, cn), _ = R.lstm_forward(x, params, 2, True)
    yt, (hnt, cnt) = tl(torch.tensor(x))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(hn, hnt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(cn, cnt.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_reference_lengths_are_separate_shorter_sequences():
    """With lengths, each sequence gives what it gives alone, cut to its length (both directions)."""
    rng = np.random.default_rng(3)
    T, I, H, lengths = 6, 3, 4, [6, 2, 4]
    p = random_state_dict(rng, I, H, bidirectional=True)
    x = rng.standard_normal((T, 3, I))
    y, (hn, cn), _ = R.lstm_forward(x, p, 1, True, lengths=lengths)
    for b, L in enumerate(lengths):
        yb, (hb, cb), _ = R.lstm_forward(x[:L, b:b + 1], p, 1, True)
        np.testing.assert_allclose(y[:L, b], yb[:, 0], rtol=1e-13)
        assert not y[L:, b].any()
        np.testing.assert_allclose(hn[:, b], hb[:, 0], rtol=1e-13)
        np.testing.assert_allclose(cn[:, b], cb[:, 0], rtol=1e-13)


def test_reference_sigmoid_has_no_overflow():
    x = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = R.sigmoid(x)
    np.testing.assert_allclose(s, [0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0], rtol=1e-15)
