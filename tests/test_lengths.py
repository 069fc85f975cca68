"""Variable-length batches: lstm(x, hx, lengths=...) against the NumPy reference (every ISA, several
thread counts, both layouts, unsorted lengths) and against PyTorch's packed sequences."""

import numpy as np
import pytest

import fastlstm
from conftest import assert_close, check_layer_against_reference, random_state_dict


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lengths", [[5, 3, 3, 1], [2, 5, 1, 4], [5, 5, 5, 5], [1, 1, 1, 1]])
def test_lengths_match_the_reference(isa, input_projection, lengths, dtype):
    rng = np.random.default_rng(sum(lengths))
    T, B, I, H, L = 5, 4, 3, 33, 2
    params = random_state_dict(rng, I, H, num_layers=L, bidirectional=True)
    x = rng.standard_normal((T, B, I))
    state = rng.standard_normal((2 * L, B, H)), rng.standard_normal((2 * L, B, H))
    grads = rng.standard_normal((T, B, 2 * H)), rng.standard_normal((2 * L, B, H)), rng.standard_normal((2 * L, B, H))
    make = lambda bf: fastlstm.LSTM(I, H, num_layers=L, bidirectional=True, batch_first=bf, dtype=np.dtype(dtype).name)
    got = check_layer_against_reference(make, params, x, state, grads, lengths, dtype, isa)
    live = (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None]
    assert not got["y"][~np.broadcast_to(live, got["y"].shape)].any(), "outputs past a length are exactly 0"


def test_lengths_match_pytorch_packed_sequences():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    T, B, I, H = 7, 5, 4, 6
    lengths = [3, 7, 1, 5, 7]
    tl = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True)
    ours = fastlstm.LSTM(I, H, num_layers=2, bidirectional=True)
    ours.load_state_dict({k: v.detach().numpy() for k, v in tl.state_dict().items()})
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    h0 = rng.standard_normal((4, B, H)).astype(np.float32)
    c0 = rng.standard_normal((4, B, H)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(xt, torch.tensor(lengths), enforce_sorted=False)
    out, (hn_t, cn_t) = tl(packed, (torch.tensor(h0), torch.tensor(c0)))
    y_t, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=T)
    y, (hn, cn) = ours(x, (h0, c0), lengths=lengths)
    assert_close(y, y_t.detach().numpy(), np.float32, "y")
    assert_close(hn, hn_t.detach().numpy(), np.float32, "h_n")
    assert_close(cn, cn_t.detach().numpy(), np.float32, "c_n")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dh = rng.standard_normal(hn.shape).astype(np.float32)
    ((y_t * torch.tensor(dy)).sum() + (hn_t * torch.tensor(dh)).sum()).backward()
    dx, _ = ours.backward(dy, (dh, None))
    assert_close(dx, xt.grad.numpy(), np.float32, "dx")
    for name, p in ours.named_parameters():
        assert_close(p.grad, dict(tl.named_parameters())[name].grad.numpy(), np.float32, name)


def test_full_lengths_equal_the_plain_call():
    rng = np.random.default_rng(1)
    lstm = fastlstm.LSTM(3, 8, bidirectional=True, seed=0).eval()
    x = rng.standard_normal((6, 4, 3)).astype(np.float32)
    y, (hn, cn) = lstm(x)
    y2, (hn2, cn2) = lstm(x, lengths=np.full(4, 6))
    np.testing.assert_array_equal(y, y2)
    np.testing.assert_array_equal(hn, hn2)


@pytest.mark.parametrize("lengths,err,match", [
    ([3, 2], ValueError, r"lengths: expected shape \(3,\)"),
    ([3, 0, 1], ValueError, r"lengths: expected values in 1..4"),
    ([3, 5, 1], ValueError, r"lengths: expected values in 1..4"),
    ([1.5, 2.0, 1.0], TypeError, "lengths: expected integers"),
    ([True, True, False], TypeError, "lengths: expected integers"),
])
def test_bad_lengths_are_clear_errors(lengths, err, match):
    lstm = fastlstm.LSTM(2, 3)
    with pytest.raises(err, match=match):
        lstm(np.zeros((4, 3, 2), np.float32), lengths=lengths)
