"""fastlstm: fused LSTM kernels (AVX2/AVX-512) behind a torch.nn.LSTM-compatible layer for NumPy arrays,
and a small training library around it.

    import numpy as np, fastlstm
    lstm = fastlstm.LSTM(32, 64, num_layers=2, seed=0)
    y, (h_n, c_n) = lstm(np.random.rand(100, 8, 32).astype(np.float32))

Training: fastlstm.nn (layers), .losses, .optim, .train (fit), .data and .tasks (built-in tasks),
fastlstm.save / fastlstm.load (checkpoints); the `fastlstm` command runs it all.

Environment: FASTLSTM_ISA=scalar|avx2|avx512 forces a kernel set (default: the best this CPU runs);
FASTLSTM_NUM_THREADS=n sets the thread budget (default: the cores this process may use).
"""

import os as _os

from . import _C
from . import _validate as _V
from . import reference
from .layer import LSTM, Parameter
from .cell import LSTMCell
from . import checkpoint, data, losses, nn, optim, tasks, train
from .checkpoint import CheckpointError, load, save

__version__ = _C.__version__

__all__ = ["LSTM", "LSTMCell", "Parameter", "reference", "nn", "losses", "optim", "train", "data", "tasks", "checkpoint",
           "save", "load", "CheckpointError", "build_info", "set_num_threads", "get_num_threads",
           "set_isa", "get_isa", "__version__"]


def build_info() -> dict:
    """What this build contains and what it selected on this machine.

    Keys: version, isa_compiled, isa_supported, isa_selected, num_threads, cuda_compiled, cuda_archs,
    cuda_devices, cuda_device_names, compiler.
    """
    return _C.build_info()


def set_num_threads(n: int) -> None:
    """Threads the kernels may use (each call still picks fewer for small problems; capped at 4095)."""
    n = _V.positive_int(n, "n")
    _C.set_num_threads(min(n, 2**31 - 1))  # (the pool caps it lower still)


def get_num_threads() -> int:
    return _C.get_num_threads()


def set_isa(name: str) -> None:
    """Force the CPU kernel set: 'scalar', 'avx2' or 'avx512' (must be compiled in and run on this CPU)."""
    if not isinstance(name, str):
        raise TypeError(f"name: expected 'scalar', 'avx2' or 'avx512', got {type(name).__name__}")
    _C.set_isa(name)


def get_isa() -> str:
    return _C.get_isa()


if _os.environ.get("FASTLSTM_ISA"):
    try:
        _C.set_isa(_os.environ["FASTLSTM_ISA"])
    except ValueError as err:
        raise ImportError(f"FASTLSTM_ISA={_os.environ['FASTLSTM_ISA']!r}: {err}") from None
