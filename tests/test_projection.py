"""Projections (LSTMP, proj_size) in the fused kernels: against the NumPy reference on every ISA and
thread count (with lengths, zoneout and recurrent dropout too), and against torch.nn.LSTM(proj_size=...)."""

import numpy as np
import pytest

import fastlstm
from fastlstm import reference as R

from conftest import assert_close, using_threads


def proj_params(rng, I, H, P, L, D):
    params = {}
    for layer in range(L):
        for d in range(D):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            inp = I if layer == 0 else D * P
            params["weight_ih" + sfx] = rng.uniform(-0.4, 0.4, (4 * H, inp))
            params["weight_hh" + sfx] = rng.uniform(-0.4, 0.4, (4 * H, P))
            params["bias_ih" + sfx] = rng.uniform(-0.2, 0.2, 4 * H)
            params["bias_hh" + sfx] = rng.uniform(-0.2, 0.2, 4 * H)
            params["weight_hr" + sfx] = rng.uniform(-0.4, 0.4, (P, H))
    return params


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,P,lengths,zoneout,rec", [(33, 7, None, 0.0, 0.0), (17, 16, [3, 5, 1], 0.0, 0.0),
                                                     (40, 9, [5, 4, 2], (0.3, 0.2), 0.25)])  # sorted: the masks follow the kernel order
def test_projection_matches_the_reference(isa, H, P, lengths, zoneout, rec, dtype):
    T, B, I, L, D = 5, 3, 4, 2, 2
    results = []
    for threads, bf in [(1, False), (2, True), (3, False)]:
        rng = np.random.default_rng(H + P)
        params = proj_params(rng, I, H, P, L, D)
        x = rng.standard_normal((T, B, I))
        h0, c0 = rng.standard_normal((L * D, B, P)), rng.standard_normal((L * D, B, H))
        dy = rng.standard_normal((T, B, D * P))
        dh_n, dc_n = rng.standard_normal((L * D, B, P)), rng.standard_normal((L * D, B, H))
        lstm = fastlstm.LSTM(I, H, num_layers=L, bidirectional=True, proj_size=P, batch_first=bf, zoneout=zoneout,
                             recurrent_dropout=rec, dtype=np.dtype(dtype).name, seed=3)
        lstm.load_state_dict(params)
        sw = (lambda a: a.swapaxes(0, 1)) if bf else (lambda a: a)
        cast = lambda a: np.ascontiguousarray(a.astype(dtype))
        with using_threads(threads):
            y, (hn, cn) = lstm(cast(sw(x)), (cast(h0), cast(c0)), lengths=lengths)
            regs = [layer["reg"] for layer in lstm._ctx["layers"]]
            dx, (dh0, dc0) = lstm.backward(cast(sw(dy)), (cast(dh_n), cast(dc_n)))
        zo = None if regs[0].get("zoneout_h") is None else [
            (r["zoneout_h"][d].astype(np.float64), r["zoneout_c"][d].astype(np.float64)) for r in regs for d in range(D)]
        rm = None if regs[0].get("rec_mask") is None else [r["rec_mask"][d].astype(np.float64) for r in regs for d in range(D)]
        yr, (hr, cr), cache = R.lstm_forward(x, params, L, True, h0, c0, None, lengths, zo, rm)
        live = 1 if lengths is None else (np.arange(T)[:, None] < np.asarray(lengths)[None, :])[:, :, None]
        dxr, dh0r, dc0r, gr = R.lstm_backward(dy * live, dh_n, dc_n, cache)
        got = dict(y=sw(y), hn=hn, cn=cn, dx=sw(dx), dh0=dh0, dc0=dc0, **{k: p.grad for k, p in lstm.named_parameters()})
        ref = dict(y=yr, hn=hr, cn=cr, dx=dxr, dh0=dh0r, dc0=dc0r, **gr)
        assert set(got) == set(ref)
        for key in ref:
            assert_close(got[key], ref[key], dtype, f"{isa} {key} threads={threads} batch_first={bf}")
        results.append(got)
    for key in results[0]:
        np.testing.assert_array_equal(results[0][key], results[2][key], err_msg=f"{key}: 1 vs 3 threads")


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
def test_projection_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    T, B, I, H, P = 7, 5, 4, 24, 6
    tl = torch.nn.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    ours = fastlstm.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P)
    ours.load_state_dict({k: v.detach().numpy() for k, v in tl.state_dict().items()})
    assert list(ours.state_dict()) == list(tl.state_dict())
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    xt = torch.tensor(x, requires_grad=True)
    yt, (hnt, cnt) = tl(xt)
    y, (hn, cn) = ours(x)
    assert_close(y, yt.detach().numpy(), np.float32, "y")
    assert_close(hn, hnt.detach().numpy(), np.float32, "h_n")
    assert_close(cn, cnt.detach().numpy(), np.float32, "c_n")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    (yt * torch.tensor(dy)).sum().backward()
    dx, _ = ours.backward(dy)
    assert_close(dx, xt.grad.numpy(), np.float32, "dx")
    for name, p in ours.named_parameters():
        assert_close(p.grad, dict(tl.named_parameters())[name].grad.numpy(), np.float32, name)


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
