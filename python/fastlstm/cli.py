"""The ``fastlstm`` command line (also ``python -m fastlstm``).

    fastlstm train                  the main job: an LSTM learns the adding problem (T=100) in about a
                                    minute on 2 cores; prints the validation MSE against always
                                    answering 1.0 (0.157 on its validation set), saves
                                    runs/adding/model.npz (+ loss.png with matplotlib)
    fastlstm train --resume         continue a stopped run from its checkpoint (Ctrl-C prints the command)
    fastlstm train --task charlm --text FILE     a character LM on any text (also: --task sine)
    fastlstm train --model rnn      the same budget with a plain tanh RNN, for comparison
    fastlstm sample CHECKPOINT --prime "The " --length 200 --temperature 0.8
    fastlstm bench [--quick ...]    the kernel benchmark against PyTorch and the NumPy reference
    fastlstm info                   what this build contains and selected

Bad arguments and bad files print one line (``fastlstm: error: ...``) and exit non-zero, no traceback.
Tests: tests/test_cli.py, tests/test_train_errors.py (bad options and files).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import math
import os
import shlex
import stat
import sys
import tempfile
import time


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def _info(args) -> int:
    import fastlstm

    info = fastlstm.build_info()
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        print(f"{key:<{width}}  {value}")
    return 0


def _read_text(path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        raise CliError(f"--text {path}: no such file") from None
    except UnicodeDecodeError as err:
        raise CliError(f"--text {path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise CliError(f"--text {path}: cannot read ({err.strerror})") from None


def _plot(history, path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return False
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(history["step"], history["loss_smooth"], label="training loss (smoothed)")
    if history.history.get("val_loss"):
        ax.plot(history["val_step"], history["val_loss"], "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _check_out_dir(path, option) -> None:
    """Check directory `path` exists and takes files, or can be created; create nothing (that comes after
    every other argument is checked)."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise CliError(f"{option} {path}: not a directory")
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            raise CliError(f"{option} {path}: cannot write files there ({err.strerror or err})") from None
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise CliError(f"{option} {path}: cannot create it, {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: cannot create it, no permission to write in {parent}")


def _make_out_dir(path, option) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise CliError(f"{option} {path}: cannot create this directory ({err.strerror or err})") from None


def _kind(path):
    """os.stat(path).st_mode, or None for a path that does not exist yet."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        return None  # a new file (or a dangling link to one)


def _open_for_writing(path, option, flags):
    """os.open for writing: a regular file or a new one, a character device (/dev/null, a terminal) or a
    FIFO or pipe (/dev/stdout piped on); a directory or socket is refused. It never blocks: O_NONBLOCK
    makes a FIFO without a reader fail with ENXIO, and the descriptor blocks again for the writes."""
    try:
        mode = _kind(path)
    except OSError as err:
        raise CliError(f"{option} {path}: cannot write this file ({err.strerror or err})") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise CliError(f"{option} {path}: cannot write this file (Is a directory)")
    if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
        raise CliError(f"{option} {path}: not a file, device or FIFO; give a file name")
    try:
        fd = os.open(path, flags | os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0), 0o666)
    except OSError as err:
        why = "a FIFO with no reader" if err.errno == errno.ENXIO else (err.strerror or str(err))
        raise CliError(f"{option} {path}: cannot write this file ({why})") from None
    os.set_blocking(fd, True)  # (a pipe's reader may be slower than the write)
    return fd


def _writable_file(path, option) -> None:
    """Check file `path` can be written (a directory, a missing parent, no permission fail), leaving no
    trace and never blocking. A FIFO is not opened now: that would hand its reader an early end of file."""
    existed = os.path.lexists(path)
    try:
        if existed and stat.S_ISFIFO(_kind(path) or 0):
            return
    except OSError:
        pass  # (_open_for_writing says why)
    os.close(_open_for_writing(path, option, os.O_APPEND))
    if not existed:
        os.unlink(path)


def _write_report(path, option, report: dict) -> None:
    fd = _open_for_writing(path, option, os.O_TRUNC)  # (ignored by devices and FIFOs)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


# tasks.build and the data it makes name their arguments; the command line names its options
_OPTIONS = {"seq_len": "--seq-len", "hidden": "--hidden", "hidden_size": "--hidden", "layers": "--layers",
            "num_layers": "--layers", "seed": "--seed", "text": "--text", "model": "--model", "device": "--device"}


def _as_option(err: Exception) -> Exception:
    """`seq_len: expected ...` -> `--seq-len: expected ...` (same type; other messages unchanged)."""
    name, sep, rest = str(err).partition(":")
    if sep and name in _OPTIONS:
        return type(err)(f"{_OPTIONS[name]}:{rest}") if type(err) in (ValueError, TypeError) else err
    return err


def _compare(metric: float, baseline: float) -> str:
    """How the result stands against the baseline, in words that are right either way (lower is better)."""
    if not (math.isfinite(metric) and math.isfinite(baseline)):
        return "not comparable"
    if abs(metric - baseline) <= 0.005 * abs(baseline):  # (a ratio would print 1.0x lower or higher)
        return "level with the baseline" if metric != baseline else "the same as the baseline"
    ratio = (lambda r: f"{r:.2f}x" if r < 2 else f"{r:.1f}x")  # (1.02x, not a 1.0x that reads as level)
    if metric < baseline:
        return f"{ratio(baseline / metric)} lower" if metric > 0 else "lower than the baseline"
    if baseline > 0:
        return f"{ratio(metric / baseline)} higher: worse than the baseline"
    return "higher: worse than the baseline"


# what makes a run (the model, its data, their order, the optimizer and its schedule): a checkpoint of `fastlstm
# train` keeps them in meta["run"] (with steps, eval_every, the --text's digest and, once the run is over,
# finished), and --resume takes them from there; the options a resumed run may not change, with their types
_RUN_SETTINGS = {"task": str, "model": str, "hidden": int, "layers": int, "seq_len": int, "seed": int,
                 "batch_size": int, "lr": float, "clip": float}


def _resume_point(ckpt, given) -> tuple:
    """(model, meta, the run's settings) of the run in ckpt, checked against the options given (None: not given)."""
    from . import checkpoint, tasks

    if not os.path.isfile(ckpt):
        raise CliError(f"--resume: no checkpoint {ckpt} to resume (a run with the same --task, --model and --out "
                       "writes it)")
    model, meta = checkpoint.load_checkpoint(ckpt)
    run = meta.get("run")
    kinds = dict(_RUN_SETTINGS, steps=int, eval_every=int)
    if not (isinstance(run, dict) and isinstance(meta.get("step"), int) and set(kinds) <= set(run)
            and all(isinstance(run[k], (int, float) if t is float else t) and not isinstance(run[k], bool)
                    for k, t in kinds.items())
            and run["task"] in tasks.TASKS and run["model"] in ("lstm", "rnn")):
        raise CliError(f"--resume: {ckpt} does not record its run's settings (written by an older fastlstm, or not "
                       "by fastlstm train); train afresh")
    for name, value in given.items():
        if value is not None and value != run[name]:
            raise CliError(f"--{name.replace('_', '-')}: the run being resumed has {run[name]!r}, got {value!r} "
                           "(leave it out to keep the run's)")
    return model, meta, dict(run)


def _run_settings(args, defaults, task_name, model_kind, resumed, out_dir) -> tuple:
    """(the run's settings, the step it starts from): the options over the task's defaults, or, resuming,
    the checkpoint's run with --steps and --eval-every applied."""
    run = resumed[2] if resumed else {
        "task": task_name, "model": model_kind, "hidden": args.hidden or defaults.hidden,
        "layers": args.layers or 1, "seq_len": args.seq_len or defaults.seq_len, "seed": args.seed or 0,
        "batch_size": args.batch_size or defaults.batch_size, "lr": args.lr or defaults.lr,
        "clip": defaults.clip if args.clip is None else args.clip, "steps": args.steps or defaults.steps}
    initial_step = resumed[1]["step"] if resumed else 0
    if resumed and run.pop("finished", False) and args.steps is None:
        raise CliError(f"--resume: the run in {out_dir} finished its {run['steps']} steps (its best validation, "
                       f"the checkpoint, is from step {initial_step}); give --steps to train on from there")
    if args.steps is not None:  # a resumed run may be given more (or fewer) steps: its schedule follows
        run["steps"] = args.steps
    run["eval_every"] = args.eval_every or run.get("eval_every") or max(1, run["steps"] // 10)
    if initial_step >= run["steps"]:
        raise CliError(f"--steps {run['steps']}: the checkpoint being resumed is from step {initial_step}; give "
                       "more steps")
    return run, initial_step


def _train(args) -> int:
    from . import _backend, checkpoint, optim, tasks, train

    if args.device != "cpu":  # as fastlstm bench --device cuda reports it
        try:
            _backend.require_cuda(f"--device {args.device}")
        except RuntimeError as err:
            raise CliError(f"{err}; use --device cpu") from None
    task_name, model_kind = args.task or "adding", args.model or "lstm"
    out_dir = args.out if args.out is not None else os.path.join(
        "runs", task_name if model_kind == "lstm" else f"{task_name}-{model_kind}")
    # every argument is checked before anything is created
    _check_out_dir(out_dir, "--out")
    ckpt, plot = os.path.join(out_dir, "model.npz"), os.path.join(out_dir, "loss.png")
    for path, what in ((ckpt, "checkpoint"), (plot, "loss plot")):
        if os.path.isdir(path):
            raise CliError(f"--out {out_dir}: {path} is a directory; this run writes its {what} there")
    given = {name: getattr(args, name) for name in _RUN_SETTINGS}
    resumed = _resume_point(ckpt, given) if args.resume else None  # (model, meta, the run's settings)
    if resumed:
        task_name = resumed[2]["task"]
    defaults = tasks.TASKS[task_name]
    if args.text is not None and task_name != "charlm":
        raise CliError(f"--text {args.text}: only --task charlm trains on a text (this is --task {task_name})")
    text = _read_text(args.text) if args.text is not None else None
    if task_name == "charlm" and text is None:
        raise CliError("--task charlm trains on a text file: give --text FILE")
    run, initial_step = _run_settings(args, defaults, task_name, model_kind, resumed, out_dir)
    steps, lr, batch, clip, seed = run["steps"], run["lr"], run["batch_size"], run["clip"], run["seed"]
    if args.report is not None:
        report = os.path.realpath(args.report)
        if report == os.path.realpath(out_dir):
            raise CliError(f"--report {args.report}: is the --out directory; give a file name")
        taken = [(ckpt, "where this run writes its checkpoint"), (plot, "where this run writes its loss plot")]
        for path, what in taken + ([(args.text, "the --text input")] if args.text else []):
            if report == os.path.realpath(path):
                raise CliError(f"--report {args.report}: is {what}; give another file")
        report_dir = os.path.dirname(os.path.abspath(args.report))
        if not (report_dir == os.path.abspath(out_dir) and not os.path.exists(out_dir)):  # else: made with --out
            _writable_file(args.report, "--report")
    try:
        task = tasks.build(run["task"], model=run["model"], hidden=run["hidden"], layers=run["layers"],
                           seq_len=run["seq_len"], seed=seed, text=text, device=args.device)
    except (ValueError, TypeError) as err:
        raise _as_option(err) from None
    model, best = task.model, None
    if text is not None:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if resumed and run.get("text_sha256") != digest:
            raise CliError(f"--text {args.text}: not the text of the run being resumed (its SHA-256 differs)")
        run["text_sha256"] = digest
    if resumed:
        model, meta, _ = resumed
        best = meta.get("val_loss")
    _make_out_dir(out_dir, "--out")

    print(f"task {task.name}: {task.metric_name} baseline {task.baseline:.4g} "
          f"({'always 1.0' if task.name == 'adding' else 'seasonal naive' if task.name == 'sine' else 'unigram'})")
    print(f"model {run['model']}, seq_len {task.meta['seq_len']}, batch {batch}, steps {steps}, lr {lr}, "
          f"clip {clip or 'off'}, seed {seed}" + (f"; resuming at step {initial_step}" if resumed else ""))
    sample_x = next(task.val.eval_batches(1))[0] if hasattr(task.val, "eval_batches") else task.val[0][:1]
    model.summary(tuple(sample_x.shape[1:]))

    opt = optim.Adam(model.parameters(), lr=lr)
    if resumed:
        checkpoint.load_optimizer(ckpt, opt)
    schedule = optim.CosineLR(lr, steps, warmup_steps=min(100, steps // 10), min_lr=lr * 0.05)
    saver = train.ModelCheckpoint(ckpt, meta=dict(task.meta, run=run), include_optimizer=True, best=best)
    t0 = time.perf_counter()
    try:
        hist = train.fit(model.train(), task.train, task.loss, opt, steps=steps, batch_size=batch, val=task.val,
                         eval_every=run["eval_every"], seed=seed, clip_norm=clip or None, schedule=schedule,
                         callbacks=[saver], progress=not args.no_progress, initial_step=initial_step)
    except KeyboardInterrupt:
        if saver.saved_path or resumed:
            command = ["fastlstm", "train", "--resume", "--out", out_dir, "--steps", str(steps)]
            command += ["--eval-every", str(run["eval_every"])] if args.eval_every else []
            command += ["--text", args.text] if args.text else []
            print(f"fastlstm: {ckpt} holds the best validation so far; {shlex.join(command)} continues from it",
                  file=sys.stderr)
        raise
    seconds = time.perf_counter() - t0
    if saver.saved_path is None and not resumed:  # (a model.npz already there is an earlier run's)
        drawn = _plot(hist, plot)
        raise CliError(f"no validation in {steps} step{'s' if steps != 1 else ''} gave a finite {task.metric_name}, "
                       f"so no checkpoint was written{' (loss curve: ' + plot + ')' if drawn else ''}; try a smaller "
                       "--lr or --clip")
    # the checkpoint holds the best validation point; report that model, and mark the run as over (--resume
    # then needs --steps: it would otherwise replay the steps after that point)
    model, meta = checkpoint.load_checkpoint(ckpt)
    opt = optim.Adam(model.parameters(), lr=lr)
    checkpoint.load_optimizer(ckpt, opt)
    checkpoint.save(model, ckpt, meta=dict(meta, run=dict(run, finished=True)), optimizer=opt)
    metric = train.evaluate(model, task.val, task.loss)
    print(f"validation {task.metric_name}: {metric:.4g} (baseline {task.baseline:.4g}, "
          f"{_compare(metric, task.baseline)}) after {steps} steps in {seconds:.1f} s")
    print(f"checkpoint: {ckpt}")
    if _plot(hist, plot):
        print(f"loss curve: {plot}")
    report = {"task": task.name, "model": run["model"], "val_metric_name": task.metric_name, "val_metric": metric,
              "baseline_metric": task.baseline, "steps": steps, "seconds": seconds, "checkpoint": ckpt,
              "seq_len": task.meta["seq_len"], "hidden": run["hidden"], "batch_size": batch, "lr": lr, "seed": seed,
              "resumed_at_step": initial_step}
    if args.report is not None:
        _write_report(args.report, "--report", report)
        print(f"report: {args.report}")
    return 0


def _sample(args) -> int:
    from . import checkpoint, tasks

    model, meta = checkpoint.load_checkpoint(args.checkpoint)
    if meta.get("task") != "charlm" or "vocab" not in meta:
        raise CliError(f"{args.checkpoint}: not a char-LM checkpoint (task {meta.get('task')!r}); "
                       "train one with: fastlstm train --task charlm --text FILE")
    print(tasks.generate(model, meta["vocab"], args.prime, args.length, args.temperature, args.seed))
    return 0


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _int_in(text, low, high, expected):
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _non_negative_int(text):
    return _int_in(text, 0, None, "a non-negative integer")


MAX_SAMPLE_LENGTH = 10 ** 7  # characters; one model step each, about a minute per million on a CPU


def _sample_length(text):
    return _int_in(text, 0, MAX_SAMPLE_LENGTH, f"an integer from 0 to {MAX_SAMPLE_LENGTH}")


def _path(text):
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got an empty value")
    return text


def _clip_value(text):
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected a non-negative number (0: no clipping), got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .bench import OneLineParser
    from .bench import positive_int as _positive_int
    from .tasks import TASKS

    parser = OneLineParser(prog="fastlstm", description="fast fused LSTM kernels for NumPy, and a "
                                     "small training library around them")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on a built-in task (default: the adding problem)")
    p.add_argument("--task", choices=sorted(TASKS), help="what to learn (default adding)")
    p.add_argument("--model", choices=("lstm", "rnn"), help="lstm (default) or a plain tanh rnn")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where to train (default cpu; cuda is refused for now: the built-in tasks' Linear, "
                        "Embedding and RNN layers run on the CPU only)")
    p.add_argument("--steps", type=_positive_int, help="optimizer steps (task default)")
    p.add_argument("--hidden", type=_positive_int, help="hidden units (task default)")
    p.add_argument("--layers", type=_positive_int, help="stacked LSTM layers (default 1)")
    p.add_argument("--seq-len", type=_positive_int, help="sequence length T (task default)")
    p.add_argument("--batch-size", type=_positive_int, help="sequences per step (task default)")
    p.add_argument("--lr", type=_positive_float, help="peak learning rate of Adam (task default)")
    p.add_argument("--clip", type=_clip_value, help="global gradient-norm clip, 0 for none (default 1.0)")
    p.add_argument("--eval-every", type=_positive_int, help="steps between validations (default steps/10)")
    p.add_argument("--seed", type=_non_negative_int, help="data, init and shuffling seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run whose checkpoint is in --out (its settings; --steps may extend it)")
    p.add_argument("--text", metavar="FILE", type=_path, help="UTF-8 text for --task charlm")
    p.add_argument("--out", metavar="DIR", type=_path,
                   help="where the checkpoint and plot go (default runs/TASK, runs/TASK-rnn for --model rnn)")
    p.add_argument("--report", metavar="FILE.json", type=_path, help="also write the result as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="generate text from a char-LM checkpoint")
    p.add_argument("checkpoint", type=_path, help="a model.npz written by fastlstm train --task charlm")
    p.add_argument("--prime", default="", help="text to start from (default: a random character)")
    p.add_argument("--length", type=_sample_length, default=200,
                   help=f"characters to generate (default 200, at most {MAX_SAMPLE_LENGTH})")
    p.add_argument("--temperature", type=_positive_float, default=1.0, help="softmax temperature (default 1.0)")
    p.add_argument("--seed", type=_non_negative_int, default=None, help="sampling seed (default: fresh)")
    p.set_defaults(func=_sample)

    sub.add_parser("bench", help="kernel benchmark against PyTorch and the NumPy reference "
                   "(its own options: fastlstm bench --help)")

    p = sub.add_parser("info", help="print what this build contains and selected")
    p.set_defaults(func=_info)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the benchmark parses its own options
        from . import bench

        return bench.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("fastlstm: interrupted", file=sys.stderr)
        return 130
    except (CliError, ValueError, OSError, ArithmeticError, MemoryError) as err:  # ValueError: CheckpointError too
        print(f"fastlstm: error: {err}", file=sys.stderr)
        return 1

if __name__ == "__main__":
    sys.exit(main())
