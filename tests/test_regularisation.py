"""Zoneout and variational recurrent dropout inside the fused kernels, against the NumPy reference
(the masks the layer drew, read back from its saved forward), on every ISA and thread count."""

import numpy as np
import pytest

import fastlstm
from fastlstm import reference as R

from conftest import assert_close, check_layer_against_reference, random_state_dict


I, H, L = 4, 17, 2  # input and hidden sizes, layers (bidirectional)


def make_layer(dtype, zoneout, rec, batch_first=False):
    return fastlstm.LSTM(I, H, num_layers=L, bidirectional=True, zoneout=zoneout, recurrent_dropout=rec,
                         batch_first=batch_first, dtype=np.dtype(dtype).name, seed=7)


def layer_and_inputs(rng, dtype, zoneout, rec):
    T, B = 5, 3
    params = random_state_dict(rng, I, H, num_layers=L, bidirectional=True)
    lstm = make_layer(dtype, zoneout, rec)
    lstm.load_state_dict(params)
    x = rng.standard_normal((T, B, I))
    h0, c0 = rng.standard_normal((2 * L, B, H)), rng.standard_normal((2 * L, B, H))
    dy = rng.standard_normal((T, B, 2 * H))
    dh_n, dc_n = rng.standard_normal((2 * L, B, H)), rng.standard_normal((2 * L, B, H))
    return lstm, params, x, h0, c0, dy, dh_n, dc_n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("zoneout,rec,lengths", [((0.3, 0.2), 0.0, None), (0.0, 0.4, None),
                                                 ((0.25, 0.5), 0.3, [5, 4, 2])])
def test_training_masks_match_the_reference(isa, zoneout, rec, lengths, dtype):
    _, params, x, h0, c0, dy, dh_n, dc_n = layer_and_inputs(np.random.default_rng(11), dtype, zoneout, rec)
    check_layer_against_reference(lambda bf: make_layer(dtype, zoneout, rec, bf), params, x, (h0, c0),
                                  (dy, dh_n, dc_n), lengths, dtype, isa)


def test_eval_mode_uses_the_expectation_and_no_dropout():
    rng = np.random.default_rng(3)
    lstm, params, x, h0, c0, *_ = layer_and_inputs(rng, np.float64, (0.3, 0.1), 0.5)
    lstm.eval()
    y, (hn, cn) = lstm(x, (h0, c0))
    yr, (hr, cr), _ = R.lstm_forward(x, params, 2, True, h0, c0, zoneout=[(0.3, 0.1)] * 4)
    assert_close(y, yr, np.float64, "y")
    assert_close(cn, cr, np.float64, "c_n")
    y2, _ = lstm(x, (h0, c0))
    np.testing.assert_array_equal(y, y2)


def test_masks_are_seeded_and_fresh_each_call():
    rng = np.random.default_rng(4)
    a = layer_and_inputs(rng, np.float32, 0.2, 0.2)[0]
    b = fastlstm.LSTM(4, 17, num_layers=2, bidirectional=True, zoneout=0.2, recurrent_dropout=0.2, seed=7)
    b.load_state_dict(a.state_dict())
    x = np.random.default_rng(0).standard_normal((5, 3, 4)).astype(np.float32)
    ya, _ = a(x)
    yb, _ = b(x)
    np.testing.assert_array_equal(ya, yb)
    ya2, _ = a(x)
    assert not np.array_equal(ya, ya2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(zoneout=1.0), "zoneout: expected"), (dict(zoneout=-0.1), "zoneout: expected"),
    (dict(zoneout=(0.1, 0.2, 0.3)), "zoneout: expected a probability or a pair"),
    (dict(recurrent_dropout=1.0), "recurrent_dropout: expected"),
])
def test_bad_regularisation_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastlstm.LSTM(3, 4, **kwargs)
