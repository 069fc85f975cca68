"""Optimizers, clipping and schedules (fastlstm.optim) against values computed by hand, and against
torch.optim when torch is installed."""

import math

import numpy as np
import pytest

from fastlstm import optim
from fastlstm.layer import Parameter


def param(values, grad):
    data = np.array(values, np.float64)
    return Parameter("p", data, np.array(grad, np.float64))


def test_sgd_plain_and_weight_decay():
    p = param([1.0, -2.0], [0.5, 0.25])
    optim.SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, -2.0 - 0.025])
    p = param([1.0], [0.5])
    optim.SGD([p], lr=0.1, weight_decay=0.2).step()  # g = 0.5 + 0.2 * 1
    np.testing.assert_allclose(p.data, [1.0 - 0.1 * 0.7])


def test_sgd_momentum_and_nesterov_by_hand():
    p = param([1.0], [1.0])
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    opt.step()                  # buf = 1           w = 1 - 0.1
    opt.step()                  # buf = 0.9 + 1     w = 0.9 - 0.19
    np.testing.assert_allclose(p.data, [0.71])
    q = param([1.0], [1.0])
    opt = optim.SGD([q], lr=0.1, momentum=0.9, nesterov=True)
    opt.step()                  # buf = 1, step g + 0.9 buf = 1.9
    opt.step()                  # buf = 1.9, step 1 + 0.9 * 1.9 = 2.71
    np.testing.assert_allclose(q.data, [1.0 - 0.19 - 0.271])


def test_adam_first_steps_by_hand():
    p = param([1.0], [0.5])
    opt = optim.Adam([p], lr=0.01, betas=(0.9, 0.999), eps=1e-8)
    opt.step()  # bias-corrected m = g, v = g^2 -> step lr * g / (|g| + eps)
    np.testing.assert_allclose(p.data, [1.0 - 0.01 * 0.5 / (0.5 + 1e-8)], rtol=1e-14)
    p.grad[...] = -1.0
    opt.step()
    m = 0.9 * 0.05 + 0.1 * -1.0
    v = 0.999 * 0.00025 + 0.001 * 1.0
    expected = 1.0 - 0.01 * 0.5 / (0.5 + 1e-8) - 0.01 / (1 - 0.81) * m / (math.sqrt(v) / math.sqrt(1 - 0.999 ** 2) + 1e-8)
    np.testing.assert_allclose(p.data, [expected], rtol=1e-12)


def test_adamw_decays_weights_apart_from_the_gradient():
    p = param([2.0], [0.0])
    optim.AdamW([p], lr=0.1, weight_decay=0.5).step()  # zero gradient: only w *= 1 - lr*wd
    np.testing.assert_allclose(p.data, [2.0 * (1 - 0.05)])
    q = param([2.0], [0.0])
    optim.Adam([q], lr=0.1, weight_decay=0.5).step()   # L2: g = 0.5 * 2 = 1 -> full Adam step
    np.testing.assert_allclose(q.data, [2.0 - 0.1 * 1.0 / (1.0 + 1e-8)], rtol=1e-12)


def test_matches_torch_optimizers_over_several_steps():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    cases = [(optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
             (optim.Adam, torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
             (optim.AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1))]
    for ours_cls, torch_cls, kw in cases:
        w0 = rng.standard_normal(6)
        p = param(w0.copy(), np.zeros(6))
        t = torch.tensor(w0.copy(), requires_grad=True)
        ours, theirs = ours_cls([p], **kw), torch_cls([t], **kw)
        for _ in range(5):
            g = rng.standard_normal(6)
            p.grad[...] = g
            t.grad = torch.tensor(g)
            ours.step()
            theirs.step()
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=ours_cls.__name__)


def test_clip_grad_norm_scales_to_the_limit_and_reports_the_norm():
    a, b = param([0.0, 0.0], [3.0, 0.0]), param([0.0], [4.0])
    norm = optim.clip_grad_norm([a, b], 1.0)
    assert norm == pytest.approx(5.0)
    total = math.sqrt(float((a.grad ** 2).sum() + (b.grad ** 2).sum()))
    assert total == pytest.approx(1.0, rel=1e-5)
    c = param([0.0], [0.5])
    assert optim.clip_grad_norm([c], 1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(c.grad, [0.5])


def test_schedules():
    cos = optim.CosineLR(1.0, total_steps=110, warmup_steps=10, min_lr=0.1)
    assert cos(0) == pytest.approx(0.1) and cos(9) == pytest.approx(1.0)
    assert cos(10) == pytest.approx(1.0) and cos(60) == pytest.approx(0.55) and cos(110) == pytest.approx(0.1)
    step = optim.StepLR(1.0, step_size=10, gamma=0.5)
    assert [step(s) for s in (0, 9, 10, 25)] == [1.0, 1.0, 0.5, 0.25]
    assert optim.ConstantLR(0.3)(1000) == 0.3


def test_numpy_scalars_are_accepted():
    p = param([1.0], [1.0])
    optim.Adam([p], lr=np.float32(1e-3)).step()
    assert optim.StepLR(0.1, step_size=np.int64(5))(5) == pytest.approx(0.01)


def test_bad_hyperparameters_are_clear_errors():
    p = param([1.0], [1.0])
    with pytest.raises(ValueError, match="lr: expected a finite positive number, got inf"):
        optim.SGD([p], lr=float("inf"))
    with pytest.raises(ValueError, match="lr: expected a finite positive number, got 0"):
        optim.SGD([p], lr=0)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="params: expected at least one parameter"):
        optim.Adam([])
    with pytest.raises(TypeError, match=r"params\[0\]"):
        optim.SGD([np.zeros(3)], lr=0.1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD([p], lr=0.1, nesterov=True)
    with pytest.raises(TypeError, match="nesterov: expected a bool"):
        optim.SGD([p], lr=0.1, momentum=0.9, nesterov=1)
    with pytest.raises(TypeError, match=r"betas\[0\]: expected a float in \[0, 1\), got str"):
        optim.Adam([p], betas=("a", "b"))
    with pytest.raises(TypeError, match="betas: expected a pair"):
        optim.Adam([p], betas=0.9)
    with pytest.raises(ValueError, match=r"betas\[1\]: expected a float in \[0, 1\), got 1.0"):
        optim.Adam([p], betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="min_lr: expected at most lr"):
        optim.CosineLR(0.1, 10, 0, min_lr=10.0)


def test_updates_are_in_place_so_the_layer_sees_them():
    import fastlstm

    lstm = fastlstm.LSTM(2, 3, seed=0)
    x = np.ones((4, 1, 2), np.float32)
    y, _ = lstm(x)
    lstm.backward(np.ones_like(y))
    before = lstm.eval()(x)[0].copy()
    optim.SGD(lstm.parameters(), lr=0.5).step()
    assert not np.array_equal(lstm(x)[0], before)


# ---- state_dict / load_state_dict: resuming where an optimizer stopped ----------------------------------------
OPTIMIZERS = {
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01),
}


def two_params(seed):
    rng = np.random.default_rng(seed)
    return [Parameter("a", rng.standard_normal((3, 2)), np.zeros((3, 2))),
            Parameter("b", rng.standard_normal(4).astype(np.float32), np.zeros(4, np.float32))]


def run_steps(opt, params, grads):
    for g in grads:
        for p, gp in zip(params, g):
            p.grad[...] = gp
        opt.step()


@pytest.mark.parametrize("make", OPTIMIZERS.values(), ids=OPTIMIZERS.keys())
def test_a_loaded_state_continues_exactly_where_the_optimizer_stopped(make):
    rng = np.random.default_rng(1)
    grads = [[rng.standard_normal((3, 2)), rng.standard_normal(4).astype(np.float32)] for _ in range(5)]
    straight = two_params(0)
    run_steps(make(straight), straight, grads)
    first = two_params(0)
    opt = make(first)
    run_steps(opt, first, grads[:2])
    state = opt.state_dict()
    resumed = [Parameter(p.name, p.data.copy(), np.zeros_like(p.grad)) for p in first]
    opt2 = make(resumed)
    opt2.load_state_dict(state)
    assert opt2.steps == 2 and opt2.lr == opt.lr
    run_steps(opt2, resumed, grads[2:])
    for p, q in zip(straight, resumed):
        np.testing.assert_array_equal(p.data, q.data)
        assert q.data.dtype == p.data.dtype


def test_state_dict_holds_copies_and_names_each_buffer():
    params = two_params(0)
    opt = optim.Adam(params, lr=0.01)
    run_steps(opt, params, [[np.ones((3, 2)), np.ones(4, np.float32)]])
    state = opt.state_dict()
    assert state["type"] == "Adam" and state["steps"] == 1 and sorted(state["state"]) == ["0.m", "0.v", "1.m", "1.v"]
    state["state"]["0.m"][...] = 99.0
    assert not np.any(opt.state[0]["m"] == 99.0)
    assert optim.SGD(params, lr=0.1).state_dict()["state"] == {}  # plain SGD keeps no buffers


@pytest.mark.parametrize("change,error,message", [
    (lambda s: s.update(type="SGD"), ValueError, "holds the state of a SGD, not of this Adam"),
    (lambda s: s.update(extra=1), ValueError, r"unexpected keys \['extra'\]"),
    (lambda s: s.update(steps=-1), ValueError, r"state_dict\['steps'\]: expected a non-negative int"),
    (lambda s: s.update(lr=float("nan")), ValueError, r"state_dict\['lr'\]"),
    (lambda s: s.update(state=[1]), TypeError, r"state_dict\['state'\]: expected a dict"),
    (lambda s: s["state"].update({"2.m": np.zeros(1)}), ValueError, r"unexpected key '2.m'"),
    (lambda s: s["state"].update({"0.momentum": np.zeros((3, 2))}), ValueError, r"unexpected key '0.momentum'"),
    (lambda s: s["state"].update({"0.m": np.zeros((2, 3))}), ValueError, r"expected shape \(3, 2\).*got \(2, 3\)"),
    (lambda s: s["state"].update({"0.m": [[0.0] * 2] * 3}), TypeError, "expected an array of shape"),
    (lambda s: s["state"].update({"0.m": np.array([["a"] * 2] * 3)}), TypeError, "real numbers"),
    (lambda s: s["state"].pop("1.v"), ValueError, r"parameter 1 has \['m'\] but not \['v'\]"),
], ids=["type", "key", "steps", "lr", "state", "index", "buffer", "shape", "list", "strings", "missing"])
def test_load_state_dict_refuses_a_bad_state_and_changes_nothing(change, error, message):
    params = two_params(0)
    opt = optim.Adam(params, lr=0.01)
    run_steps(opt, params, [[np.ones((3, 2)), np.ones(4, np.float32)]])
    good = opt.state_dict()
    bad = opt.state_dict()
    run_steps(opt, params, [[np.ones((3, 2)), np.ones(4, np.float32)]])
    before = opt.state_dict()
    change(bad)
    with pytest.raises(error, match=message):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["steps"] == before["steps"] == 2 and after["lr"] == before["lr"]
    for k in before["state"]:
        np.testing.assert_array_equal(after["state"][k], before["state"][k])
    opt.load_state_dict(good)
    assert opt.steps == 1
    with pytest.raises(TypeError, match="state_dict: expected a dict"):
        opt.load_state_dict([good])


def test_load_state_dict_needs_buffers_for_every_parameter_after_a_step():
    """Adam's state over two parameters given to an Adam over three: the third would start with zero moments
    under step 2's bias correction, so it is refused; likewise a state with steps but no buffers, and momentum
    buffers for an SGD without momentum."""
    params = two_params(0)
    opt = optim.Adam(params, lr=0.01)
    run_steps(opt, params, [[np.ones((3, 2)), np.ones(4, np.float32)]] * 2)
    more = optim.Adam(two_params(0) + [Parameter("c", np.zeros(2), np.zeros(2))], lr=0.01)
    with pytest.raises(ValueError, match=r"parameter 2 has no buffers but not \['m', 'v'\]"):
        more.load_state_dict(opt.state_dict())
    with pytest.raises(ValueError, match="parameter 0 has no buffers"):
        more.load_state_dict({"steps": 5, "state": {}})
    more.load_state_dict({"steps": 0, "state": {}})  # a fresh optimizer's state is fine
    sgd = optim.SGD(params, lr=0.1, momentum=0.9)
    run_steps(sgd, params, [[np.ones((3, 2)), np.ones(4, np.float32)]])
    with pytest.raises(ValueError, match="does not keep"):
        optim.SGD(params, lr=0.1).load_state_dict(sgd.state_dict())
    optim.SGD(params, lr=0.1).load_state_dict(optim.SGD(params, lr=0.1).state_dict())


def test_a_subclass_must_name_its_buffers_to_save_them():
    class Velocity(optim.Optimizer):
        def _update(self, w, g, st):
            st.setdefault("vel", np.zeros_like(w))
            st["vel"] += g
            w -= self.lr * st["vel"]

    params = two_params(0)
    opt = Velocity(params, lr=0.1)
    run_steps(opt, params, [[np.ones((3, 2)), np.ones(4, np.float32)]])
    with pytest.raises(TypeError, match=r"parameter 0's state 'vel' is not an array listed in its state_names"):
        opt.state_dict()
    Velocity.state_names = ("vel",)
    again = Velocity(two_params(0), lr=0.1)
    again.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(again.state[1]["vel"], opt.state[1]["vel"])
