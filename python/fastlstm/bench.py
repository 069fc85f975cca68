#!/usr/bin/env python
"""Benchmark: fastlstm's LSTM against torch.nn.LSTM and the NumPy reference, timed in one process.

What this is: a sweep over single-layer, unidirectional, float32, time-major LSTM problems (T, B, I, H)
that times, for each problem, inference (``forward``: eval mode) and training (``fwd+bwd``: a forward
in train mode, then backward with a fixed random dy) for

    fastlstm    fastlstm.LSTM with its default settings (all threads; it picks fewer for small problems)
    torch       torch.nn.LSTM with the same weights, at 1 thread and at fastlstm's thread count
                (forward under eval() + torch.inference_mode(); fwd+bwd via autograd); the speedup
                column compares against the faster of the two
    reference   fastlstm.reference, the pure-NumPy specification (few reps; skipped past ~20 s a run)

and reports median milliseconds, GFLOP/s (forward = 2*T*B*4H*(I+H) flops, fwd+bwd = 3x that), the
percentage of this machine's SGEMM peak (the better of NumPy's and fastlstm's 2048^3 float32 matmul,
measured at the start of the same run) and the speedups. Before a problem is timed, fastlstm's forward
output is checked against torch's (a warning is printed past 1e-4; nothing aborts).

Timing: wall clock (time.perf_counter). Every method is warmed up (at least 2 runs and 0.2 s), then
measured in blocks, in rounds that alternate the methods (A B C, then C B A, ...: 6 rounds, 2 with
--quick, ``--rounds N``); each block starts with untimed runs (at least one, at least 10 ms) after a
short pause, so the thread pools of the method before (torch's OpenMP threads and fastlstm's pool spin
for a moment after their work) do not bill the next one. The reported time is the median over all reps
of all rounds. On a shared machine the load changes over seconds: short alternating blocks spread a busy
spell over every method instead of billing it to one, and the per-round column (the lowest and highest
of the speedups computed round by round) shows how far a single round could be off.

What it is not: a test (it never fails on slowness), or a multi-layer / bidirectional / float64 sweep.
``--device cuda`` runs the GPU benchmark instead (fastlstm/bench_cuda.py: CUDA events, cuDNN through
torch as the baseline); it exits with status 2 where the build has no CUDA kernels or no GPU is usable.

How to run (with fastlstm installed; ``python bench/bench_lstm.py`` in the repository is the same
program, writing its CSV under bench/results/)::

    fastlstm bench                      # default sweep, a few minutes
    fastlstm bench --quick              # smoke test, seconds
    fastlstm bench --configs 100,16,256,256 --repeat 20 --no-reference
    fastlstm bench --markdown           # the table as Markdown, for the README
    fastlstm bench --scaling            # also: each thread budget, small problems to large (see below)

--scaling times fastlstm under each set_num_threads budget up to its own on problems from too small to split to
(100, 16, 256, 256), and with every kernel forced to use all threads (fastlstm._C.force_threads, a diagnostic): the
evidence that a small problem never gets slower with more threads, and what choosing fewer saves.

Results are also written to ./fastlstm_bench_cpu.csv (``--csv PATH``; ``--csv ''`` writes none).
Progress goes to stderr; the header, warnings and the table go to stdout.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

DEFAULT_CONFIGS = ((100, 1, 128, 128), (100, 16, 256, 256), (100, 64, 512, 512), (50, 32, 1024, 1024),
                   (1000, 1, 32, 64))
QUICK_CONFIGS = ((20, 1, 32, 32), (20, 4, 64, 64))
MODES = ("forward", "fwd+bwd")
DEFAULT_CSV = Path("fastlstm_bench_cpu.csv")  # bench/bench_lstm.py passes bench/results/bench_cpu.csv
SEED = 0
BUSY_WARN = 0.10          # warn when other processes keep this share of the CPUs busy
GUARD_ATOL = 1e-4          # fastlstm vs torch forward output: warn past this max abs difference
BLOCK_PAUSE_S = 0.02       # idle time before each measured block (lets other pools stop spinning)
BLOCK_WARMUP_S = 0.01      # then untimed runs for at least this long (at least one) to wake this method up
EXIT_OK = 0
EXIT_UNAVAILABLE = 2       # the requested device has no backend in this build
EXIT_USAGE = 2             # a bad argument (as argparse's own)


# ---- what is measured ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Config:
    """One problem: sequence length T, batch B, input size I, hidden size H (1 layer, 1 direction)."""

    T: int
    B: int
    I: int
    H: int

    @property
    def label(self) -> str:
        return f"{self.T},{self.B},{self.I},{self.H}"

    def flops(self, mode: str) -> int:
        forward = 2 * self.T * self.B * 4 * self.H * (self.I + self.H)
        return forward if mode == "forward" else 3 * forward


@dataclasses.dataclass(frozen=True)
class TimingPlan:
    """How long to warm up and how many reps to take (``repeat`` fixes the measured reps per method)."""

    warmup_runs: int = 2
    warmup_s: float = 0.2
    target_s: float = 1.0          # auto reps: about this much measured time per method
    min_reps: int = 5
    max_reps: int = 50
    rounds: int = 6                # alternating rounds (each method's reps are spread over them)
    repeat: Optional[int] = None
    slow_target_s: float = 3.0     # the reference: 1-3 reps, skipped when one run exceeds slow_skip_s
    slow_max_reps: int = 3
    slow_skip_s: float = 20.0
    sgemm_n: int = 2048
    sgemm_reps: int = 5


FULL_PLAN = TimingPlan()
QUICK_PLAN = TimingPlan(warmup_runs=2, warmup_s=0.01, target_s=0.02, min_reps=4, max_reps=10, rounds=2,
                        slow_target_s=0.0, slow_max_reps=1, sgemm_n=1024, sgemm_reps=4)


@dataclasses.dataclass
class Method:
    """A timed callable. ``enter`` runs before each block (e.g. sets torch's threads); ``slow`` methods
    (the reference) get few reps, a time budget and no untimed run at the start of a block."""

    key: str
    run: Callable[[], object]
    enter: Callable[[], object] = lambda: None
    slow: bool = False


@dataclasses.dataclass
class Measurement:
    rounds: list = dataclasses.field(default_factory=list)  # per round, its reps in seconds (maybe none)
    status: str = "ok"                                        # ok | skipped

    @property
    def times(self) -> list:
        """Every rep of every round, in seconds."""
        return [t for reps in self.rounds for t in reps]

    @property
    def median_ms(self) -> Optional[float]:
        times = self.times
        return statistics.median(times) * 1e3 if self.status == "ok" and times else None

    def round_median_ms(self, r: int) -> Optional[float]:
        """Median of round r's reps, or None where it has none."""
        ok = self.status == "ok" and r < len(self.rounds) and self.rounds[r]
        return statistics.median(self.rounds[r]) * 1e3 if ok else None


# ---- timers: one per device --------------------------------------------------------------------------
class CpuTimer:
    """Wall-clock time of host-synchronous work: every CPU method has finished when its call returns.

    CudaTimer has the same two methods, so the measuring code below serves both devices.
    """

    device = "cpu"

    def time_once(self, fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def synchronize(self) -> None:
        pass


def device_unavailable(device: str) -> Optional[str]:
    """None when ``device`` can be benchmarked, else the one-line reason."""
    if device == "cpu":
        return None
    from . import _backend
    try:
        _backend.require_cuda("bench_lstm --device cuda")
    except RuntimeError as e:
        return f"{e}; use --device cpu"
    return None


class CudaTimer:
    """GPU time of the work a method enqueues on the legacy default stream, between two CUDA events (in
    seconds, as CpuTimer)."""

    device = "cuda"

    def __init__(self, cp):
        self.cp = cp
        self.start, self.end = cp.cuda.Event(), cp.cuda.Event()

    def time_once(self, fn: Callable[[], object]) -> float:
        null = self.cp.cuda.Stream.null
        self.start.record(null)
        fn()
        self.end.record(null)
        self.end.synchronize()
        return self.cp.cuda.get_elapsed_time(self.start, self.end) * 1e-3

    def synchronize(self) -> None:
        self.cp.cuda.Stream.null.synchronize()


def make_timer(device: str):
    if device == "cpu":
        return CpuTimer()
    from . import _backend
    return CudaTimer(_backend.cupy_or_none())


# ---- measuring -----------------------------------------------------------------------------------------
def warm_up(method: Method, timer: CpuTimer, plan: TimingPlan) -> Optional[float]:
    """Run ``method`` until warm; return an estimate of one run's seconds, or None if it is too slow."""
    if method.slow:
        t = timer.time_once(method.run)
        return None if t > plan.slow_skip_s else t
    times, spent = [], 0.0
    while len(times) < plan.warmup_runs or spent < plan.warmup_s:
        times.append(timer.time_once(method.run))
        spent += times[-1]
    return statistics.median(times[1:] or times)


def choose_reps(method: Method, seconds: float, plan: TimingPlan) -> int:
    """Measured reps in total (all rounds): --repeat, or enough for about target_s within the caps (and
    at least one a round)."""
    if method.slow:
        auto = math.ceil(plan.slow_target_s / max(seconds, 1e-9))
        cap = plan.slow_max_reps if plan.repeat is None else min(plan.repeat, plan.slow_max_reps)
        return max(1, min(auto, cap))
    if plan.repeat is not None:
        return plan.repeat
    auto = max(plan.min_reps, min(plan.max_reps, math.ceil(plan.target_s / max(seconds, 1e-9))))
    return max(auto, plan.rounds)


def reps_per_round(total: int, rounds: int) -> list:
    """total reps spread over the rounds as evenly as they go, earlier rounds taking the remainder
    (a method with fewer reps than rounds, the reference, sits out the last rounds)."""
    return [total // rounds + (1 if r < total % rounds else 0) for r in range(rounds)]


def measure_block(method: Method, reps: int, timer: CpuTimer) -> list:
    method.enter()
    time.sleep(BLOCK_PAUSE_S)
    if not method.slow:  # untimed: caches, thread pools and CPU clocks back to this method
        start = time.perf_counter()
        method.run()
        while time.perf_counter() - start < BLOCK_WARMUP_S:
            method.run()
    gc.disable()
    try:
        return [timer.time_once(method.run) for _ in range(reps)]
    finally:
        gc.enable()


def measure(methods: list, timer: CpuTimer, plan: TimingPlan) -> dict:
    """Warm up each method, then time them in ``plan.rounds`` alternating rounds; {key: Measurement}."""
    results, per_round = {}, {}
    for m in methods:
        m.enter()
        estimate = warm_up(m, timer, plan)
        results[m.key] = Measurement(status="ok" if estimate is not None else "skipped")
        if estimate is not None:
            per_round[m.key] = reps_per_round(choose_reps(m, estimate, plan), plan.rounds)
    active = [m for m in methods if m.key in per_round]
    gc.collect()  # once: a full collection with torch loaded takes tens of ms
    for r in range(plan.rounds):
        for m in (active if r % 2 == 0 else active[::-1]):
            reps = per_round[m.key][r]
            results[m.key].rounds.append(measure_block(m, reps, timer) if reps else [])
    timer.synchronize()
    return results


# ---- the methods -------------------------------------------------------------------------------------
def layer_step(lstm, x: np.ndarray, dy: np.ndarray, training: bool) -> Callable[[], None]:
    """One timed call of a fastlstm layer: a forward, or (training) a forward and backward with dy."""
    def forward():
        lstm(x)

    def forward_backward():
        lstm.zero_grad()
        lstm(x)
        lstm.backward(dy)

    return forward_backward if training else forward


def fastlstm_method(lstm, x: np.ndarray, dy: np.ndarray, mode: str) -> Method:
    training = mode != "forward"
    return Method("fastlstm", layer_step(lstm, x, dy, training), enter=lambda: lstm.train(training))


def torch_module(torch, state: dict, cfg: Config):
    module = torch.nn.LSTM(cfg.I, cfg.H, num_layers=1, bias=True)
    module.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return module


def torch_method(torch, module, x: np.ndarray, dy: np.ndarray, mode: str, threads: int) -> Method:
    def enter():
        torch.set_num_threads(threads)
        module.train(mode != "forward")

    if mode == "forward":
        xt = torch.from_numpy(x)

        def run():
            with torch.inference_mode():
                module(xt)
    else:
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        dyt = torch.from_numpy(dy)
        params = list(module.parameters())

        def run():
            xt.grad = None
            for p in params:
                p.grad = None
            y, _ = module(xt)
            y.backward(dyt)

    return Method(f"torch_{threads}t", run, enter=enter)


def reference_method(reference, params: dict, x: np.ndarray, dy: np.ndarray, mode: str) -> Method:
    def forward():
        reference.lstm_forward(x, params)

    def forward_backward():
        _, _, cache = reference.lstm_forward(x, params)
        reference.lstm_backward(dy, None, None, cache)

    return Method("reference", forward if mode == "forward" else forward_backward, slow=True)


def torch_max_abs_diff(torch, lstm, module, x: np.ndarray) -> float:
    """Correctness guard: max |fastlstm y - torch y| for one eval-mode forward."""
    lstm.eval()
    module.eval()
    y, _ = lstm(x)
    with torch.inference_mode():
        yt, _ = module(torch.from_numpy(x))
    return float(np.max(np.abs(y - yt.numpy())))


# ---- variable-length batches ---------------------------------------------------------------------------
VARLEN_CONFIG = Config(100, 64, 256, 256)
VARLEN_QUICK_CONFIG = Config(20, 8, 16, 16)


def varlen_patterns(T: int, B: int, rng) -> list:
    """(name, lengths): every sequence full; lengths uniform in 1..T; 90% short (< T/5) and 10% full."""
    short = np.where(rng.random(B) < 0.9, rng.integers(1, max(2, T // 5), size=B), T)
    return [("full", np.full(B, T)), ("uniform 1..T", rng.integers(1, T + 1, size=B)), ("90% short", short)]


def varlen_methods(fastlstm, torch, cfg: Config, lengths, x, dy, mode: str, threads: int) -> list:
    """fastlstm padded and with lengths; torch padded and packed (pack_padded_sequence), at `threads`."""
    training = mode != "forward"
    lstm = fastlstm.LSTM(cfg.I, cfg.H, seed=SEED)
    live = (np.arange(cfg.T)[:, None] < lengths[None, :])[:, :, None]
    dy_live = np.ascontiguousarray(dy * live)

    def ours(with_lengths):
        def run():
            if training:
                lstm.zero_grad()
                lstm(x, lengths=lengths if with_lengths else None)
                lstm.backward(dy_live)
            else:
                lstm(x, lengths=lengths if with_lengths else None)
        return run

    methods = [Method("fastlstm padded", ours(False), enter=lambda: lstm.train(training)),
               Method("fastlstm lengths", ours(True), enter=lambda: lstm.train(training))]
    if torch is None:
        return methods
    module = torch_module(torch, lstm.state_dict(), cfg)
    pack = torch.nn.utils.rnn.pack_padded_sequence
    lt = torch.from_numpy(lengths.astype(np.int64))

    def enter():
        torch.set_num_threads(threads)
        module.train(training)

    def theirs(packed):
        xt = torch.from_numpy(x.copy()).requires_grad_(training)
        dyt = torch.from_numpy(dy_live)
        params = list(module.parameters())

        def run():
            if not training:
                with torch.inference_mode():
                    module(pack(xt, lt, enforce_sorted=False) if packed else xt)
                return
            xt.grad = None
            for p in params:
                p.grad = None
            if packed:
                out, _ = module(pack(xt, lt, enforce_sorted=False))
                y, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=cfg.T)
            else:
                y, _ = module(xt)
            y.backward(dyt)
        return run

    return methods + [Method("torch padded", theirs(False), enter=enter), Method("torch packed", theirs(True), enter=enter)]


def bench_varlen(fastlstm, torch, cfg: Config, timer, plan: TimingPlan, log) -> list:
    """Rows of (pattern, fill, mode, {method: ms}) for the variable-length comparison."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(np.float32)
    dy = rng.standard_normal((cfg.T, cfg.B, cfg.H)).astype(np.float32)
    threads = fastlstm.get_num_threads()
    rows = []
    for name, lengths in varlen_patterns(cfg.T, cfg.B, rng):
        for mode in MODES:
            results = measure(varlen_methods(fastlstm, torch, cfg, lengths, x, dy, mode, threads), timer, plan)
            ms = {k: m.median_ms for k, m in results.items()}
            rows.append((name, float(lengths.sum()) / (cfg.T * cfg.B), mode, ms))
            log(f"  varlen {name:>12} {mode:<7} " + ", ".join(f"{k} {fmt_ms(v)} ms" for k, v in ms.items()))
    return rows


def render_table(head: list, body: list, markdown: bool, left: int = 0, title: Optional[str] = None) -> str:
    """Rows of strings as a Markdown table (the first `left` columns left-aligned, the rest right-aligned)
    or as plain text in right-aligned columns; `title` goes above (a blank line apart in Markdown)."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] * left + ["---:"] * (len(head) - left)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in body]
    else:
        widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in [head] + body]
    if title is not None:
        lines = [title] + ([""] if markdown else []) + lines
    return "\n".join(lines)


def varlen_table(rows: list, cfg: Config, markdown: bool) -> str:
    keys = list(rows[0][3])
    head = ["lengths", "fill", "mode"] + [f"{k} ms" for k in keys] + ["lengths vs padded"] + (
        ["lengths vs torch packed", "lengths vs torch padded"] if "torch packed" in keys else [])
    body = []
    for name, fill, mode, ms in rows:
        ours = ms["fastlstm lengths"]
        cells = [name, f"{fill:.2f}", mode] + [fmt_ms(ms[k]) for k in keys] + [fmt_x(ms["fastlstm padded"] / ours if ours else None)]
        if "torch packed" in keys:
            cells += [fmt_x(ms["torch packed"] / ours if ours and ms["torch packed"] else None),
                      fmt_x(ms["torch padded"] / ours if ours and ms["torch padded"] else None)]
        body.append(cells)
    title = (f"variable-length batches, T,B,I,H = {cfg.label}: fill = sum of lengths / (T*B); "
             "ratios > 1: fastlstm with lengths is faster")
    return render_table(head, body, markdown, left=3, title=title)


# ---- layer features -------------------------------------------------------------------------------------
FEATURES_CONFIG = Config(100, 16, 256, 256)
FEATURES_QUICK_CONFIG = Config(20, 4, 16, 16)


def feature_methods(fastlstm, cfg: Config, x, dy, mode: str) -> list:
    """The plain layer and the same layer with each feature, on the same input and weights."""
    training = mode != "forward"
    P = max(1, cfg.H // 4)
    variants = [("plain", {}), ("zoneout 0.1", dict(zoneout=0.1)), ("recurrent dropout 0.25", dict(recurrent_dropout=0.25)),
                ("both", dict(zoneout=0.1, recurrent_dropout=0.25)), (f"proj_size {P} (fewer flops)", dict(proj_size=P))]
    methods = []
    for name, kwargs in variants:
        if kwargs.get("proj_size", 0) >= cfg.H:
            continue
        lstm = fastlstm.LSTM(cfg.I, cfg.H, seed=SEED, **kwargs)
        dy_v = np.ascontiguousarray(dy[..., :kwargs.get("proj_size") or cfg.H])
        methods.append(Method(name, layer_step(lstm, x, dy_v, training), enter=lambda lstm=lstm: lstm.train(training)))
    if not training:  # step-by-step and chunked inference on the same weights
        cell = fastlstm.LSTMCell(cfg.I, cfg.H, seed=SEED).eval()
        stream = fastlstm.LSTM(cfg.I, cfg.H, seed=SEED, stateful=True).eval()
        chunks = np.array_split(x, 10)

        def cell_steps():
            h = c = None
            for t in range(cfg.T):
                h, c = cell(x[t], None if h is None else (h, c))

        def streamed():
            stream.reset_state()
            for chunk in chunks:
                stream(chunk)
        methods += [Method("LSTMCell, T calls", cell_steps), Method("stateful, 10 chunks", streamed)]
    return methods


def bench_features(fastlstm, cfg: Config, timer, plan: TimingPlan, log) -> list:
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(np.float32)
    dy = rng.standard_normal((cfg.T, cfg.B, cfg.H)).astype(np.float32)
    rows = []
    for mode in MODES:
        results = measure(feature_methods(fastlstm, cfg, x, dy, mode), timer, plan)
        for key, m in results.items():
            rows.append((mode, key, m.median_ms))
        log(f"  features {mode}: " + ", ".join(f"{k} {fmt_ms(m.median_ms)} ms" for k, m in results.items()))
    return rows


def features_table(rows: list, cfg: Config, markdown: bool) -> str:
    plain = {mode: ms for mode, key, ms in rows if key == "plain"}
    head = ["mode", "variant", "ms", "vs plain"]
    body = [[mode, key, fmt_ms(ms), fmt_x(ms / plain[mode] if ms and plain.get(mode) else None)] for mode, key, ms in rows]
    title = (f"layer features, T,B,I,H = {cfg.label}: time relative to the plain layer (> 1: the feature costs "
             "that factor)")
    return render_table(head, body, markdown, left=2, title=title)


# ---- thread scaling -------------------------------------------------------------------------------------
# From problems too small to split (a thread barrier each step costs more than half a step's work) to the main
# table's B = 16 size: where the default picks fewer threads than it may use, and what that saves.
SCALING_CONFIGS = ((1000, 1, 8, 8), (1000, 1, 16, 16), (1000, 1, 24, 24), (1000, 1, 32, 32), (1000, 1, 48, 48),
                   (1000, 1, 64, 64), (100, 1, 128, 128), (100, 4, 64, 64), (100, 16, 256, 256))
SCALING_QUICK_CONFIGS = ((20, 1, 8, 8), (20, 4, 32, 32))


def thread_budgets(n: int) -> list:
    """The set_num_threads budgets the scaling table times: 1, 2, 4, ... below n, and n."""
    budgets, b = [], 1
    while b < n:
        budgets.append(b)
        b *= 2
    return budgets + [n]


def scaling_methods(fastlstm, cfg: Config, x, dy, mode: str, budgets: list) -> list:
    """One layer timed under each thread budget (set_num_threads: its kernels choose up to that many threads),
    and with every kernel forced to use the largest budget (_C.force_threads, a diagnostic)."""
    training = mode != "forward"
    lstm = fastlstm.LSTM(cfg.I, cfg.H, seed=SEED)
    run = layer_step(lstm, x, dy, training)

    def setting(budget: int, forced: int):
        def enter():
            fastlstm.set_num_threads(budget)
            fastlstm._C.force_threads(forced)
            lstm.train(training)
        return enter

    n = budgets[-1]
    return [Method(f"budget {b}", run, enter=setting(b, 0)) for b in budgets] + [
        Method(f"forced {n}", run, enter=setting(n, n))]


def bench_scaling(fastlstm, configs, budgets: list, timer, plan: TimingPlan, log) -> list:
    """Rows of (config, mode, {method key: ms}) for the thread-scaling table."""
    rows = []
    try:
        for cfg in configs:
            rng = np.random.default_rng(SEED)
            x = rng.standard_normal((cfg.T, cfg.B, cfg.I), dtype=np.float32)
            dy = rng.standard_normal((cfg.T, cfg.B, cfg.H), dtype=np.float32)
            for mode in MODES:
                results = measure(scaling_methods(fastlstm, cfg, x, dy, mode, budgets), timer, plan)
                ms = {k: m.median_ms for k, m in results.items()}
                rows.append((cfg, mode, ms))
                log(f"  scaling {cfg.label:>14} {mode:<7} " + ", ".join(f"{k} {fmt_ms(v)} ms" for k, v in ms.items()))
    finally:
        fastlstm._C.force_threads(0)
        fastlstm.set_num_threads(budgets[-1])
    return rows


def scaling_table(rows: list, budgets: list, markdown: bool) -> str:
    n = budgets[-1]
    head = ["T", "B", "I", "H", "mode"] + [f"{b} thread{'s' if b > 1 else ''} ms" for b in budgets] + [
        f"{n} forced ms", "default vs best", "forced vs default"]
    body = []
    for cfg, mode, ms in rows:
        default, forced = ms[f"budget {n}"], ms[f"forced {n}"]
        best = min((ms[f"budget {b}"] for b in budgets if ms[f"budget {b}"] is not None), default=None)
        body.append([str(cfg.T), str(cfg.B), str(cfg.I), str(cfg.H), mode]
                    + [fmt_ms(ms[f"budget {b}"]) for b in budgets] + [fmt_ms(forced)]
                    + [fmt_x(best / default if best and default else None),
                       fmt_x(forced / default if forced and default else None)])
    title = (f"thread scaling: fastlstm under each set_num_threads budget (the default, {n}, lets each kernel pick "
             f"fewer threads for a small problem) and with every kernel forced to use {n} (at most one a tile of units); "
             "default vs best = the fastest budget's time / the default's (1.00x: more threads were never slower), "
             "forced vs default = forced time / the default's (> 1: picking fewer threads saved that factor)")
    return render_table(head, body, markdown, left=0, title=title)


# ---- machine -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Machine:
    fastlstm_version: str
    isa_selected: str
    fastlstm_threads: int
    torch_version: str
    torch_default_threads: Optional[int]
    numpy_version: str
    blas: str
    cpu_model: str
    logical_cpus: int
    python_version: str
    busy_at_start: Optional[float] = None
    sgemm_numpy_gflops: float = float("nan")
    sgemm_fastlstm_gflops: float = float("nan")

    @property
    def sgemm_peak_gflops(self) -> float:
        return max(self.sgemm_numpy_gflops, self.sgemm_fastlstm_gflops)

    def csv_fields(self) -> dict:
        out = dataclasses.asdict(self)
        out["busy_at_start"] = "" if self.busy_at_start is None else f"{self.busy_at_start:.3f}"
        out["sgemm_numpy_gflops"] = f"{self.sgemm_numpy_gflops:.1f}"
        out["sgemm_fastlstm_gflops"] = f"{self.sgemm_fastlstm_gflops:.1f}"
        out["sgemm_peak_gflops"] = f"{self.sgemm_peak_gflops:.1f}"
        return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def logical_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_busy_share(seconds: float = 0.3) -> Optional[float]:
    """Share of all CPUs busy over ``seconds`` while this process sleeps (so: other processes), or None."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    total = total1 - total0
    return None if total <= 0 else 1.0 - (idle1 - idle0) / total


def busy_warning(share: Optional[float], when: str) -> Optional[str]:
    if share is None or share < BUSY_WARN:
        return None
    return (f"WARNING: other processes kept {100 * share:.0f}% of the CPUs busy {when}; "
            "timings (multi-threaded ones most) are unreliable")


def numpy_blas() -> str:
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]
        return str(deps["blas"]["name"])
    except Exception:  # older NumPy, or a layout this does not know
        return "unknown"


def describe_machine(fastlstm, torch) -> Machine:
    info = fastlstm.build_info()
    return Machine(fastlstm_version=info["version"], isa_selected=info["isa_selected"],
                   fastlstm_threads=fastlstm.get_num_threads(),
                   torch_version=torch.__version__ if torch else "-",
                   torch_default_threads=torch.get_num_threads() if torch else None,
                   numpy_version=np.__version__, blas=numpy_blas(), cpu_model=cpu_model(),
                   logical_cpus=logical_cpus(), python_version=platform.python_version())


def measure_sgemm(fastlstm, timer: CpuTimer, plan: TimingPlan) -> tuple:
    """GFLOP/s of an n^3 float32 matmul: (NumPy, fastlstm._C.gemm)."""
    n = plan.sgemm_n
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), np.float32)
    methods = [Method("numpy", lambda: np.matmul(a, b, out=c)),
               Method("fastlstm", lambda: fastlstm._C.gemm(a, b, c))]
    fixed = dataclasses.replace(plan, repeat=plan.sgemm_reps)
    results = measure(methods, timer, fixed)
    flops = 2.0 * n ** 3
    return tuple(flops / (results[k].median_ms / 1e3) / 1e9 for k in ("numpy", "fastlstm"))


# ---- one row per (config, mode) ------------------------------------------------------------------------
@dataclasses.dataclass
class Row:
    cfg: Config
    mode: str
    fastlstm: Measurement
    torch: dict                       # threads -> Measurement
    reference: Optional[Measurement]  # None: not run (--no-reference)
    max_abs_diff: Optional[float]
    peak_gflops: float

    @property
    def flops(self) -> int:
        return self.cfg.flops(self.mode)

    @property
    def fastlstm_ms(self) -> float:
        return self.fastlstm.median_ms

    @property
    def gflops(self) -> float:
        return self.flops / (self.fastlstm_ms / 1e3) / 1e9

    @property
    def pct_peak(self) -> float:
        return 100.0 * self.gflops / self.peak_gflops

    def torch_ms(self, threads: int) -> Optional[float]:
        m = self.torch.get(threads)
        return None if m is None else m.median_ms

    @property
    def torch_best(self) -> tuple:
        """(threads, ms) of torch's faster thread count, or (None, None) without torch."""
        timed = [(ms, t) for t, ms in ((t, self.torch_ms(t)) for t in self.torch) if ms is not None]
        if not timed:
            return None, None
        ms, threads = min(timed)
        return threads, ms

    @property
    def speedup_vs_torch(self) -> Optional[float]:
        ms = self.torch_best[1]
        return None if ms is None else ms / self.fastlstm_ms

    @property
    def speedup_vs_torch_rounds(self) -> list:
        """The speedup against torch's faster thread count computed within each round (its medians)."""
        threads = self.torch_best[0]
        if threads is None:
            return []
        torch = self.torch[threads]
        ours = self.fastlstm
        pairs = ((torch.round_median_ms(r), ours.round_median_ms(r)) for r in range(len(ours.rounds)))
        return [t / f for t, f in pairs if t is not None and f is not None]

    @property
    def reference_ms(self) -> Optional[float]:
        return None if self.reference is None else self.reference.median_ms

    @property
    def reference_status(self) -> str:
        return "off" if self.reference is None else self.reference.status

    @property
    def speedup_vs_reference(self) -> Optional[float]:
        ms = self.reference_ms
        return None if ms is None else ms / self.fastlstm_ms


def bench_config(cfg: Config, ctx: dict, timer: CpuTimer, plan: TimingPlan, log) -> list:
    """Both modes of one problem: the correctness guard, then the measurements; a list of Rows."""
    fastlstm, torch, reference = ctx["fastlstm"], ctx["torch"], ctx["reference"]
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((cfg.T, cfg.B, cfg.I), dtype=np.float32)
    dy = rng.standard_normal((cfg.T, cfg.B, cfg.H), dtype=np.float32)
    lstm = fastlstm.LSTM(cfg.I, cfg.H, seed=SEED)
    state = lstm.state_dict()
    module = torch_module(torch, state, cfg) if torch else None
    diff = None
    if module is not None:
        diff = torch_max_abs_diff(torch, lstm, module, x)
        if diff > GUARD_ATOL:
            print(f"WARNING: {cfg.label}: fastlstm forward differs from torch by max abs {diff:.3g} "
                  f"(> {GUARD_ATOL:g})", flush=True)
    rows, reference_skipped = [], False
    for mode in MODES:
        methods = [fastlstm_method(lstm, x, dy, mode)]
        methods += [torch_method(torch, module, x, dy, mode, t) for t in ctx["torch_threads"]] if module else []
        if reference is not None and not reference_skipped:
            methods.append(reference_method(reference, state, x, dy, mode))
        results = measure(methods, timer, plan)
        ref = None
        if reference is not None:
            # fwd+bwd costs more than forward: once forward is over budget, skip it without running
            ref = results.get("reference", Measurement(status="skipped"))
            reference_skipped = ref.status == "skipped"
        row = Row(cfg, mode, results["fastlstm"],
                  {t: results[f"torch_{t}t"] for t in ctx["torch_threads"]} if module else {},
                  ref, diff, ctx["machine"].sgemm_peak_gflops)
        rows.append(row)
        log(progress_line(row))
    return rows


# ---- output --------------------------------------------------------------------------------------------
def fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "-"
    return f"{ms:.3f}" if ms < 10 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def fmt_x(ratio: Optional[float]) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def fmt_range(ratios: list) -> str:
    return "-" if not ratios else f"{min(ratios):.2f}-{max(ratios):.2f}x"


def progress_line(row: Row) -> str:
    parts = [f"{row.cfg.label:>16} {row.mode:<7}  fastlstm {fmt_ms(row.fastlstm_ms)} ms"]
    parts += [f"torch {t}t {fmt_ms(row.torch_ms(t))} ms" for t in row.torch]
    if row.reference is not None:
        parts.append(f"reference {fmt_ms(row.reference_ms) if row.reference_status == 'ok' else 'skipped'}")
    return ", ".join(parts)


def table_columns(torch_threads: list, with_reference: bool) -> list:
    """[(group, header, cell function)]; groups are separated by ' | ' in the plain table."""
    cols = [("cfg", "T", lambda r: str(r.cfg.T)), ("cfg", "B", lambda r: str(r.cfg.B)),
            ("cfg", "I", lambda r: str(r.cfg.I)), ("cfg", "H", lambda r: str(r.cfg.H)),
            ("mode", "mode", lambda r: r.mode),
            ("fast", "fastlstm ms", lambda r: fmt_ms(r.fastlstm_ms)),
            ("fast", "GFLOP/s", lambda r: f"{r.gflops:.1f}"),
            ("fast", "% of SGEMM peak", lambda r: f"{r.pct_peak:.1f}")]
    for t in torch_threads:
        def cell(r, t=t):
            best = len(torch_threads) > 1 and r.torch_best[0] == t
            return fmt_ms(r.torch_ms(t)) + ("*" if best else "")
        cols.append(("torch", f"torch {t}t ms", cell))
    if torch_threads:
        cols.append(("torch", "speedup vs torch best", lambda r: fmt_x(r.speedup_vs_torch)))
        cols.append(("torch", "per round", lambda r: fmt_range(r.speedup_vs_torch_rounds)))
    if with_reference:
        cols += [("ref", "reference ms",
                  lambda r: "skipped" if r.reference_status == "skipped" else fmt_ms(r.reference_ms)),
                 ("ref", "speedup vs reference", lambda r: fmt_x(r.speedup_vs_reference))]
    return cols


def plain_table(rows: list, torch_threads: list, with_reference: bool) -> str:
    cols = table_columns(torch_threads, with_reference)
    cells = [[fn(r) for _, _, fn in cols] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(cols)]

    def line(values):
        out = ""
        for i, (group, _, _) in enumerate(cols):
            if i:
                out += " | " if group != cols[i - 1][0] else "  "
            out += values[i].ljust(widths[i]) if group == "mode" else values[i].rjust(widths[i])
        return out

    rule = "-" * len(line([""] * len(cols)))
    return "\n".join([line([h for _, h, _ in cols]), rule] + [line(c) for c in cells])


def markdown_table(rows: list, torch_threads: list, with_reference: bool) -> str:
    cols = table_columns(torch_threads, with_reference)
    head = "| " + " | ".join(h for _, h, _ in cols) + " |"
    align = "|" + "|".join(":---" if g == "mode" else "---:" for g, _, _ in cols) + "|"
    body = ["| " + " | ".join(fn(r) for _, _, fn in cols) + " |" for r in rows]
    return "\n".join([head, align] + body)


def header_lines(machine: Machine, torch_threads: list, plan: TimingPlan) -> list:
    n = plan.sgemm_n
    counts = " and ".join(str(t) for t in torch_threads)
    torch_line = (f"torch {machine.torch_version}: default {machine.torch_default_threads} threads, measured at "
                  f"{counts} thread{'s' if torch_threads != [1] else ''}" if torch_threads else "torch: not measured")
    return [
        "fastlstm CPU benchmark: 1 layer, unidirectional, float32, time-major [T, B, I]",
        f"fastlstm {machine.fastlstm_version}: isa_selected={machine.isa_selected}, "
        f"num_threads={machine.fastlstm_threads}",
        torch_line,
        f"numpy {machine.numpy_version} (BLAS: {machine.blas}), Python {machine.python_version}",
        f"CPU: {machine.cpu_model} ({machine.logical_cpus} logical CPUs available to this process)",
        f"SGEMM {n}x{n}x{n} float32: numpy {machine.sgemm_numpy_gflops:.1f} GFLOP/s, "
        f"fastlstm._C.gemm {machine.sgemm_fastlstm_gflops:.1f} GFLOP/s "
        f"-> SGEMM peak {machine.sgemm_peak_gflops:.1f} GFLOP/s",
        f"timing: median ms over {plan.rounds} alternating rounds after warm-up (time.perf_counter); "
        "FLOPs: forward 2*T*B*4H*(I+H), fwd+bwd 3x",
    ]


def print_header(lines: list, markdown: bool) -> None:
    for line in lines:
        print(f"- {line}" if markdown else line)
    print(flush=True)


def table_notes(torch_threads: list, with_reference: bool) -> list:
    notes = []
    if len(torch_threads) > 1:
        notes.append("* torch's faster thread count; speedup vs torch best = that time / fastlstm's "
                     "(> 1: fastlstm is faster); per round = the lowest and highest of that speedup computed "
                     "from each round's medians")
    if with_reference:
        notes.append("speedup vs reference = NumPy reference time / fastlstm's; 'skipped': one run took over "
                     "the time budget")
    return notes


CSV_FIELDS = ["T", "B", "I", "H", "mode", "flops", "fastlstm_ms", "fastlstm_gflops", "pct_of_sgemm_peak",
              "torch_1t_ms", "torch_nt_ms", "torch_nt_threads", "torch_best_ms", "torch_best_threads",
              "speedup_vs_torch_best", "speedup_round_min", "speedup_round_max", "reference_ms", "reference_status",
              "speedup_vs_reference",
              "max_abs_diff_vs_torch", "fastlstm_reps", "torch_reps", "reference_reps"]
MACHINE_FIELDS = [f.name for f in dataclasses.fields(Machine)] + ["sgemm_peak_gflops", "timestamp"]


def csv_record(row: Row, torch_threads: list, machine_fields: dict) -> dict:
    def num(v, digits=4):
        return "" if v is None else f"{v:.{digits}f}"

    n_threads = [t for t in torch_threads if t != 1]
    best_t, best_ms = row.torch_best
    rounds = row.speedup_vs_torch_rounds
    rec = dict(T=row.cfg.T, B=row.cfg.B, I=row.cfg.I, H=row.cfg.H, mode=row.mode, flops=row.flops,
               fastlstm_ms=num(row.fastlstm_ms), fastlstm_gflops=num(row.gflops, 2),
               pct_of_sgemm_peak=num(row.pct_peak, 2),
               torch_1t_ms=num(row.torch_ms(1)) if 1 in row.torch else "",
               torch_nt_ms=num(row.torch_ms(n_threads[0])) if n_threads and row.torch else "",
               torch_nt_threads=n_threads[0] if n_threads and row.torch else "",
               torch_best_ms=num(best_ms), torch_best_threads="" if best_t is None else best_t,
               speedup_vs_torch_best=num(row.speedup_vs_torch, 3),
               speedup_round_min=num(min(rounds), 3) if rounds else "",
               speedup_round_max=num(max(rounds), 3) if rounds else "",
               reference_ms=num(row.reference_ms), reference_status=row.reference_status,
               speedup_vs_reference=num(row.speedup_vs_reference, 3),
               max_abs_diff_vs_torch="" if row.max_abs_diff is None else f"{row.max_abs_diff:.3g}",
               fastlstm_reps=len(row.fastlstm.times),
               torch_reps=";".join(f"{t}t:{len(m.times)}" for t, m in row.torch.items()),
               reference_reps="" if row.reference is None else len(row.reference.times))
    rec.update(machine_fields)
    return rec


def csv_problem(path: Path, default: Path) -> Optional[str]:
    """Why the results could not be written to path, or None; checked before minutes of measuring. Only
    the default file's directory is made where missing (bench/results in a fresh checkout)."""
    try:
        if path.is_dir():
            return f"--csv {path}: a directory; give a file name"
        parent = path.parent
        if not parent.is_dir():
            if parent.exists() or path.resolve() != default.resolve():
                return f"--csv {path}: no directory {parent}"
            return None
        writable = os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK | os.X_OK)
    except OSError as err:  # (a directory on the way that may not be searched)
        return f"--csv {path}: cannot check it ({err.strerror or err})"
    return None if writable else f"--csv {path}: no permission to write it"


def write_csv(path: Path, rows: list, torch_threads: list, machine: Machine) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)  # (csv_problem allowed it for the default file only)
    machine_fields = machine.csv_fields()
    machine_fields["timestamp"] = datetime.datetime.now().isoformat(timespec="seconds")
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS + MACHINE_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(csv_record(row, torch_threads, machine_fields))


# ---- command line ----------------------------------------------------------------------------------------
def parse_config(text: str) -> Config:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,I,H as four positive integers, got {text!r}")
    return Config(*values)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line, the way every other fastlstm failure prints (the CLI's
    parser too)."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{error_prefix(self.prog)} {message} (see {self.prog} --help)\n")


def error_prefix(prog: str) -> str:
    """'fastlstm: error:' for the CLI's subcommand, 'bench_lstm.py: error:' for the script."""
    return f"{prog.split()[0]}: error:"


def build_parser(prog: str = "fastlstm bench", default_csv: Path = DEFAULT_CSV) -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=prog,
        description="Time fastlstm.LSTM (forward, fwd+bwd) against torch.nn.LSTM and the NumPy reference.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to run (default cpu; cuda times the GPU sweep against cuDNN, and exits with status 2 "
                        "where there is no GPU)")
    p.add_argument("--configs", nargs="+", type=parse_config, metavar="T,B,I,H",
                   help="problems to time (default: " + " ".join(Config(*c).label for c in DEFAULT_CONFIGS) + ")")
    p.add_argument("--quick", action="store_true",
                   help="smoke test in seconds: small problems, few reps (--configs still applies)")
    p.add_argument("--repeat", type=positive_int, metavar="N",
                   help="measured reps per method, over all rounds (default: about 1 s each, 5 to 50 and at "
                        "least one a round; the reference takes at most 3)")
    p.add_argument("--rounds", type=positive_int, metavar="N",
                   help=f"alternating rounds the reps are spread over (default {FULL_PLAN.rounds}, "
                        f"{QUICK_PLAN.rounds} with --quick)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="fastlstm's thread budget, and torch's multi-thread column (default: fastlstm's)")
    p.add_argument("--no-torch", action="store_true", help="do not time torch.nn.LSTM")
    p.add_argument("--no-reference", action="store_true", help="do not time the NumPy reference")
    p.add_argument("--features", action="store_true",
                   help=f"also time zoneout, recurrent dropout, LSTMCell steps and stateful chunks against the "
                        f"plain layer at {FEATURES_CONFIG.label}")
    p.add_argument("--varlen", action="store_true",
                   help=f"also time variable-length batches at {VARLEN_CONFIG.label}: fastlstm with lengths= "
                        "against its padded call and torch's padded and packed (pack_padded_sequence) calls")
    p.add_argument("--scaling", action="store_true",
                   help="also time fastlstm under each thread budget up to its own, from problems too small to "
                        "split to the main table's B = 16 size, and with every kernel forced to use all threads")
    p.add_argument("--markdown", action="store_true", help="print the header and table as Markdown")
    p.add_argument("--csv", metavar="PATH",
                   help=f"write the main table's rows here (default {default_csv}, its _cuda twin with --device "
                        "cuda; '' writes none)")
    return p


def timing_plan(args) -> TimingPlan:
    """The full or --quick plan with --repeat and --rounds applied."""
    plan = dataclasses.replace(QUICK_PLAN if args.quick else FULL_PLAN, repeat=args.repeat)
    return plan if args.rounds is None else dataclasses.replace(plan, rounds=args.rounds)


def load_torch(enabled: bool):
    if not enabled:
        return None
    try:
        import torch
    except Exception as err:  # not installed, or a broken install: skip its columns
        print(f"note: torch is not importable ({type(err).__name__}: {err}); torch columns skipped", flush=True)
        return None
    return torch


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def too_large(configs, fastlstm) -> Optional[str]:
    """Why one of the --configs cannot be timed on this machine (its layer, or the arrays the benchmark and the
    layer's training step hold, beyond the available memory), before anything is measured; None if all fit."""
    from . import _validate as V

    for cfg in configs:
        try:
            fastlstm.LSTM(cfg.I, cfg.H, seed=0)  # checks its own parameters and gradients
            # x, dy and dx, y, and the training forward's gates and cells, in float32, twice (fastlstm and torch)
            V.memory(2 * 4 * cfg.T * cfg.B * (2 * cfg.I + 2 * cfg.H + 5 * cfg.H), "timing it")
        except MemoryError as err:
            return f"--configs {cfg.label}: {err}"
    return None


def run(args, fastlstm, torch) -> int:
    plan = timing_plan(args)
    configs = args.configs or [Config(*c) for c in (QUICK_CONFIGS if args.quick else DEFAULT_CONFIGS)]
    timer = make_timer(args.device)
    reference = None
    if not args.no_reference:
        from fastlstm import reference
    if args.threads:
        fastlstm.set_num_threads(args.threads)
    n = fastlstm.get_num_threads()
    torch_threads = sorted({1, n}) if torch else []

    machine = describe_machine(fastlstm, torch)
    machine.busy_at_start = cpu_busy_share()
    log_stderr(f"measuring SGEMM {plan.sgemm_n}^3 ...")
    machine.sgemm_numpy_gflops, machine.sgemm_fastlstm_gflops = measure_sgemm(fastlstm, timer, plan)
    print_header(header_lines(machine, torch_threads, plan), args.markdown)
    warning = busy_warning(machine.busy_at_start, "at the start")
    if warning:
        print(warning, flush=True)

    ctx = dict(fastlstm=fastlstm, torch=torch, reference=reference, torch_threads=torch_threads, machine=machine)
    rows = []
    for cfg in configs:
        rows += bench_config(cfg, ctx, timer, plan, log_stderr)

    table = markdown_table if args.markdown else plain_table
    print(table(rows, torch_threads, reference is not None))
    print()
    for note in table_notes(torch_threads, reference is not None):
        print(note)
    if args.features:
        fcfg = FEATURES_QUICK_CONFIG if args.quick else FEATURES_CONFIG
        log_stderr(f"layer features at {fcfg.label} ...")
        print()
        print(features_table(bench_features(fastlstm, fcfg, timer, plan, log_stderr), fcfg, args.markdown))
    if args.varlen:
        vcfg = VARLEN_QUICK_CONFIG if args.quick else VARLEN_CONFIG
        log_stderr(f"variable-length batches at {vcfg.label} ...")
        print()
        print(varlen_table(bench_varlen(fastlstm, torch, vcfg, timer, plan, log_stderr), vcfg, args.markdown))
    if args.scaling:
        budgets = thread_budgets(n)
        print()
        if len(budgets) == 1:
            print("thread scaling: skipped, fastlstm has one thread here (set_num_threads / --threads)")
        else:
            log_stderr("thread scaling ...")
            scfgs = [Config(*c) for c in (SCALING_QUICK_CONFIGS if args.quick else SCALING_CONFIGS)]
            print(scaling_table(bench_scaling(fastlstm, scfgs, budgets, timer, plan, log_stderr), budgets, args.markdown))
    warning = busy_warning(cpu_busy_share(), "at the end")
    if warning:
        print(warning, flush=True)
    if args.csv:
        write_csv(Path(args.csv), rows, torch_threads, machine)
        log_stderr(f"wrote {args.csv}")
    return EXIT_OK


def main(argv=None, prog: str = "fastlstm bench", default_csv: Path = DEFAULT_CSV) -> int:
    try:
        args = build_parser(prog, default_csv).parse_args(argv)
    except SystemExit as exit_:  # --help, or a bad argument (argparse printed why)
        return exit_.code
    default = Path(default_csv)
    if args.device == "cuda":  # the default CPU file name becomes its CUDA twin
        default = default.with_name(default.name.replace("cpu", "cuda"))
    csv_path = default if args.csv is None else Path(args.csv) if args.csv else None
    args.csv = None if csv_path is None else str(csv_path)
    problem = csv_problem(csv_path, default) if csv_path else None
    if problem:
        print(f"{error_prefix(prog)} {problem}", file=sys.stderr)
        return EXIT_USAGE
    import fastlstm

    problem = too_large(args.configs or [], fastlstm)
    if problem:
        print(f"{error_prefix(prog)} {problem}", file=sys.stderr)
        return EXIT_USAGE

    reason = device_unavailable(args.device)
    if reason:
        print(reason, file=sys.stderr)
        return EXIT_UNAVAILABLE
    torch = load_torch(not args.no_torch)
    if args.device == "cuda":
        from .bench_cuda import run as run_cuda
        return run_cuda(args, fastlstm, torch, None if csv_path is None else str(csv_path))
    fastlstm_threads = fastlstm.get_num_threads()
    torch_threads = torch.get_num_threads() if torch else None
    try:
        return run(args, fastlstm, torch)
    except KeyboardInterrupt:
        print(f"{prog.split()[0]}: interrupted", file=sys.stderr)
        return 130
    finally:  # leave both libraries as they were (a test may call main() in its own process)
        if fastlstm.get_num_threads() != fastlstm_threads:
            fastlstm.set_num_threads(fastlstm_threads)
        if torch is not None:
            torch.set_num_threads(torch_threads)


if __name__ == "__main__":
    sys.exit(main())
