"""Projections (LSTMP, proj_size) in the fused kernels: against the NumPy reference on every ISA and
thread count (with lengths, zoneout and recurrent dropout too); against torch.nn.LSTM(proj_size=...) in
test_torch_parity.py."""

import numpy as np
import pytest

import fastlstm

from conftest import check_layer_against_reference, random_state_dict


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,P,lengths,zoneout,rec", [(33, 7, None, 0.0, 0.0), (17, 16, [3, 5, 1], 0.0, 0.0),
                                                     (40, 9, [5, 4, 2], (0.3, 0.2), 0.25)])  # sorted: the masks follow the kernel order
def test_projection_matches_the_reference(isa, H, P, lengths, zoneout, rec, dtype):
    T, B, I, L, D = 5, 3, 4, 2, 2
    rng = np.random.default_rng(H + P)
    params = random_state_dict(rng, I, H, L, True, proj_size=P)
    x = rng.standard_normal((T, B, I))
    state = rng.standard_normal((L * D, B, P)), rng.standard_normal((L * D, B, H))
    grads = rng.standard_normal((T, B, D * P)), rng.standard_normal((L * D, B, P)), rng.standard_normal((L * D, B, H))
    make = lambda bf: fastlstm.LSTM(I, H, num_layers=L, bidirectional=True, proj_size=P, batch_first=bf, zoneout=zoneout,
                                    recurrent_dropout=rec, dtype=np.dtype(dtype).name, seed=3)
    check_layer_against_reference(make, params, x, state, grads, lengths, dtype, isa)


def test_projection_streams_and_takes_unbatched_input():
    x = np.random.default_rng(2).standard_normal((12, 2, 3)).astype(np.float32)
    stream = fastlstm.LSTM(3, 8, proj_size=2, stateful=True, seed=0).eval()
    whole = fastlstm.LSTM(3, 8, proj_size=2, seed=0).eval()
    np.testing.assert_array_equal(np.concatenate([stream(x[:5])[0], stream(x[5:])[0]]), whole(x)[0])
    y, (h, c) = whole(x[:, 0])
    assert y.shape == (12, 2) and h.shape == (1, 2) and c.shape == (1, 8)


def test_projection_argument_errors():
    with pytest.raises(ValueError, match="proj_size: expected 0 .* less than hidden_size=8"):
        fastlstm.LSTM(3, 8, proj_size=8)
    lstm = fastlstm.LSTM(3, 8, proj_size=2)
    with pytest.raises(ValueError, match=r"hx\[0\]: expected shape \(1, 4, 2\)"):
        lstm(np.zeros((5, 4, 3), np.float32), (np.zeros((1, 4, 8), np.float32), np.zeros((1, 4, 8), np.float32)))
    with pytest.raises(ValueError, match="Keras's LSTM has no projection"):
        lstm.keras_weights()
