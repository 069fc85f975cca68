"""Benchmark on a GPU (``fastlstm bench --device cuda``): fastlstm's CUDA layer against torch.nn.LSTM on
cuda (cuDNN), timed in one process.

What this is: the CPU sweep's problems plus T=100, B in 1, 8, 64, 256 and H = I in 256, 512, 1024,
2048; single layer, unidirectional, float32 with TF32 off everywhere (torch's cuDNN and matmul flags
are cleared; CuPy uses TF32 only when CUPY_TF32=1, which this refuses). For each problem, inference
(``forward``: eval mode) and training (``fwd+bwd``: train-mode forward, then backward with a fixed dy,
dx included on both sides) are timed with CUDA events on the legacy default stream, where both
libraries enqueue their work: warm-up, then alternating rounds (6, 2 with --quick, or --rounds),
median of all reps. Reported: median ms, achieved TFLOP/s (forward = 2*T*B*4H*(I+H) flops, fwd+bwd =
3x) against the fp32 peak measured in the same run (cuBLAS SGEMM 8192^3 through CuPy), the strategy
fastlstm's heuristic chose, and the speedup over cuDNN. Before timing, fastlstm's forward output is
compared with torch's.

What it is not: a test (slowness never fails), or a sweep of stacked / bidirectional / float64 layers.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from .bench import DEFAULT_CONFIGS, MODES, Config, Method, make_timer, measure, render_table, timing_plan

SWEEP = tuple((100, b, h, h) for b in (1, 8, 64, 256) for h in (256, 512, 1024, 2048))
QUICK = ((20, 1, 64, 64), (20, 64, 128, 128))
GUARD_ATOL = 1e-3  # fastlstm vs torch forward output, float32 over T steps: warn past this


def _sgemm_peak_tflops(cp, timer, plan, n: int) -> float:
    a = cp.random.default_rng(0).standard_normal((n, n), dtype=cp.float32)
    b = cp.random.default_rng(1).standard_normal((n, n), dtype=cp.float32)
    c = cp.empty((n, n), cp.float32)
    sgemm = Method("sgemm", lambda: cp.matmul(a, b, out=c))
    ms = measure([sgemm], timer, dataclasses.replace(plan, repeat=plan.sgemm_reps))["sgemm"].median_ms
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def run(args, fastlstm, torch, csv_path) -> int:
    """Time the sweep (args: bench.py's parsed options); write rows to csv_path unless it is None."""
    cp = fastlstm._backend.cupy_or_none()
    if os.environ.get("CUPY_TF32", "0") != "0":
        print("bench_cuda: CUPY_TF32 is set; unset it (this benchmark is fp32 without TF32)", file=sys.stderr)
        return 2
    if torch is not None and not torch.cuda.is_available():
        print("note: torch has no CUDA here; cuDNN columns skipped", flush=True)
        torch = None
    if torch is not None:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    timer = make_timer("cuda")
    plan = timing_plan(args)
    dev = cp.cuda.Device()
    name = fastlstm.build_info()["cuda_device_names"][dev.id]
    peak = _sgemm_peak_tflops(cp, timer, plan, 2048 if args.quick else 8192)
    configs = ([(c.T, c.B, c.I, c.H) for c in args.configs] if args.configs
               else list(QUICK if args.quick else dict.fromkeys(DEFAULT_CONFIGS + SWEEP)))  # (CPU sweep first)
    md = args.markdown
    print(f"{'**GPU**: ' if md else 'GPU: '}{name} (device {dev.id}); fastlstm {fastlstm.__version__}, "
          f"torch {torch.__version__ if torch else 'absent'}"
          f"{', cuDNN ' + str(torch.backends.cudnn.version()) if torch else ''}; fp32, TF32 off")
    print(f"{'**fp32 peak**: ' if md else 'fp32 peak: '}{peak:.1f} TFLOP/s measured (cuBLAS SGEMM through CuPy, "
          f"same run)\n")
    rows = []
    for T, B, I, H in configs:
        rng = np.random.default_rng(0)
        lstm = fastlstm.LSTM(I, H, device="cuda", seed=0)
        x = cp.asarray(rng.standard_normal((T, B, I)).astype(np.float32))
        dy = cp.asarray(rng.standard_normal((T, B, H)).astype(np.float32))
        module = xt = dyt = None
        if torch is not None:
            module = torch.nn.LSTM(I, H).cuda()
            weights = lstm.state_dict()
            with torch.no_grad():
                for k, v in module.named_parameters():
                    v.copy_(torch.as_tensor(weights[k], device="cuda"))
            xt = torch.as_tensor(cp.asnumpy(x), device="cuda").requires_grad_(True)
            dyt = torch.as_tensor(cp.asnumpy(dy), device="cuda")
            module.eval()
            with torch.inference_mode():
                diff = float((torch.as_tensor(cp.asnumpy(lstm.eval()(x)[0]), device="cuda") - module(xt)[0]).abs().max())
            if diff > GUARD_ATOL:
                print(f"warning: T,B,I,H={T},{B},{I},{H}: fastlstm and torch forward differ by {diff:.2e}", flush=True)
        for mode in MODES:
            training = mode != "forward"
            lstm.train(training)
            strategy = fastlstm._C.cuda_strategy(B, H, 1, training, False, dev.id)

            def ours():
                lstm(x)
                if training:
                    lstm.backward(dy)

            methods = [Method("fastlstm", ours)]
            if module is not None:
                module.train(training)

                def theirs():
                    if training:
                        xt.grad = None
                        module.zero_grad(set_to_none=True)
                        module(xt)[0].backward(dyt)
                    else:
                        with torch.inference_mode():
                            module(xt)

                methods.append(Method("cudnn", theirs))
            print(f"  T,B,I,H={T},{B},{I},{H} {mode} ...", file=sys.stderr, flush=True)
            ms = {key: m.median_ms for key, m in measure(methods, timer, plan).items()}
            flops = Config(T, B, I, H).flops(mode)
            tf = flops / (ms["fastlstm"] * 1e-3) / 1e12
            rows.append(dict(T=T, B=B, I=I, H=H, mode=mode, strategy=strategy, fastlstm_ms=ms["fastlstm"],
                             tflops=tf, pct_peak=100 * tf / peak, cudnn_ms=ms.get("cudnn"),
                             speedup=(ms["cudnn"] / ms["fastlstm"]) if "cudnn" in ms else None, device=name,
                             peak_tflops=peak))
    _print_table(rows, md)
    if csv_path is not None:
        path = Path(csv_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _print_table(rows, markdown: bool) -> None:
    head = ["T,B,I,H", "mode", "strategy", "fastlstm ms", "TFLOP/s", "% peak", "cuDNN ms", "vs cuDNN"]
    body = [[f"{r['T']},{r['B']},{r['I']},{r['H']}", r["mode"], r["strategy"], f"{r['fastlstm_ms']:.3f}",
             f"{r['tflops']:.2f}", f"{r['pct_peak']:.0f}", "-" if r["cudnn_ms"] is None else f"{r['cudnn_ms']:.3f}",
             "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"] for r in rows]
    print(render_table(head, body, markdown, left=3))
