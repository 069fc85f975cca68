"""fastlstm.LSTM against torch.nn.LSTM: a PyTorch state_dict loads unchanged and gives the same
outputs and gradients to float32 rounding (relative error ~1e-5), for mixes of the layer's options
(proj_size included).

Skipped where torch is not installed (`pip install torch==2.13.0`; .ci/run installs it).
"""

import itertools

import numpy as np
import pytest

import fastlstm
from conftest import assert_close

torch = pytest.importorskip("torch")

CONFIGS = list(itertools.product([1, 2], [False, True], [False, True], [False, True], [True, False]))


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")
@pytest.mark.parametrize("proj_size", [0, 6])
@pytest.mark.parametrize("num_layers,bidirectional,batch_first,with_state,bias", CONFIGS)
def test_matches_torch_outputs_and_gradients(num_layers, bidirectional, batch_first, with_state, bias, proj_size):
    torch.manual_seed(num_layers * 16 + bidirectional * 8 + batch_first * 4 + with_state * 2 + bias + proj_size * 32)
    T, B, I, H = 7, 3, 10, 20
    D = 2 if bidirectional else 1
    ref = torch.nn.LSTM(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                        bidirectional=bidirectional, proj_size=proj_size).double()
    lstm = fastlstm.LSTM(I, H, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         bidirectional=bidirectional, proj_size=proj_size)
    lstm.load_state_dict({k: v.numpy().astype(np.float32) for k, v in ref.state_dict().items()})

    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    hx = tuple(rng.standard_normal((num_layers * D, B, width)).astype(np.float32)
               for width in (proj_size or H, H)) if with_state else None
    y, (hn, cn) = lstm(x, hx)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dhn, dcn = (rng.standard_normal(a.shape).astype(np.float32) for a in (hn, cn))
    dx, (dh0, dc0) = lstm.backward(dy, (dhn, dcn))

    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    hxt = tuple(torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in hx) if with_state else None
    yt, (hnt, cnt) = ref(xt, hxt)
    loss = (yt * torch.from_numpy(dy).double()).sum() + (hnt * torch.from_numpy(dhn).double()).sum() + \
        (cnt * torch.from_numpy(dcn).double()).sum()
    loss.backward()
    for name, got, want in [("y", y, yt), ("h_n", hn, hnt), ("c_n", cn, cnt), ("dx", dx, xt.grad)]:
        assert_close(got, want.detach().numpy(), np.float32, name)
    if with_state:
        assert_close(dh0, hxt[0].grad.numpy(), np.float32, "dh0")
        assert_close(dc0, hxt[1].grad.numpy(), np.float32, "dc0")
    torch_params = dict(ref.named_parameters())
    assert [n for n, _ in lstm.named_parameters()] == list(torch_params)
    for name, p in lstm.named_parameters():
        assert_close(p.grad, torch_params[name].grad.numpy(), np.float32, name)


def test_state_dict_loads_into_torch():
    lstm = fastlstm.LSTM(4, 6, num_layers=2, bidirectional=True, seed=0).eval()
    ref = torch.nn.LSTM(4, 6, num_layers=2, bidirectional=True)
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in lstm.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((5, 2, 4)).astype(np.float32)
    with torch.no_grad():
        yt, _ = ref(torch.from_numpy(x))
    assert_close(lstm(x)[0], yt.numpy().astype(np.float64), np.float32, "y")
