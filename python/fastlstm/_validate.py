"""Argument checks with messages that name the argument, what was expected and what came.

Every public entry point validates here before touching the compiled kernels, so a bad argument is a
``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong value or shape), never a crash.
"""

from __future__ import annotations

import math
import numbers
import os

import numpy as np

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def describe(value) -> str:
    """Short description of a value for error messages: type, and dtype/shape for arrays."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__module__.split('.')[0]}.{type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}" if isinstance(value, (int, float, str, bool)) else type(value).__name__


def _int_from(value, name: str, low: int, expected: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected {expected}, got {describe(value)}")
    if value < low:
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return int(value)


def positive_int(value, name: str) -> int:
    return _int_from(value, name, 1, "a positive int")


def non_negative_int(value, name: str) -> int:
    return _int_from(value, name, 0, "a non-negative int")


def finite_number(value, name: str, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with allow_zero), as a float."""
    expected = "a finite number >= 0" if allow_zero else "a finite positive number"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected {expected}, got {describe(value)}")
    if not (math.isfinite(value) and (value >= 0 if allow_zero else value > 0)):
        raise ValueError(f"{name}: expected {expected}, got {value}")
    return float(value)


def probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float in [0, 1), got {describe(value)}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a float in [0, 1), got {value}")
    return value


def boolean(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected a bool, got {describe(value)}")
    return bool(value)


def float_dtype(value, name: str = "dtype") -> np.dtype:
    if value is None:  # (np.dtype(None) would be float64)
        raise TypeError(f"{name}: expected 'float32' or 'float64', got None")
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {describe(value)}") from None
    if dt not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected 'float32' or 'float64', got {dt}")
    return _FLOAT_DTYPES[_FLOAT_DTYPES.index(dt)]  # NumPy's own instance (a pickled dtype is an equal copy)


def seed(value, name: str = "seed"):
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected None or a non-negative int, got {describe(value)}")
    if value < 0:
        raise ValueError(f"{name}: expected None or a non-negative int, got {value}")
    return int(value)


def array(value, name: str, dtype: np.dtype, shape_doc: str, device: str = "cpu"):
    """An array of exactly `dtype` on the layer's `device`: a NumPy array for 'cpu', a CuPy array on
    GPU N for 'cuda:N' (shape is the caller's business). Never a silent copy between devices."""
    module = type(value).__module__.split(".")[0]
    if device == "cpu":
        if not isinstance(value, np.ndarray):
            if module == "cupy":
                raise TypeError(f"{name}: expected a numpy.ndarray for this CPU layer, got a cupy.ndarray "
                                f"(a GPU array); move the layer with .to('cuda') or the array with cupy.asnumpy")
            raise TypeError(f"{name}: expected a numpy.ndarray of {dtype} with shape {shape_doc}, got {describe(value)}")
    else:
        if module != "cupy" or not hasattr(value, "__cuda_array_interface__"):
            if isinstance(value, np.ndarray):
                raise TypeError(f"{name}: expected a cupy.ndarray for this CUDA layer (device={device!r}), got a "
                                f"numpy.ndarray (a CPU array); move the array with cupy.asarray or the layer "
                                f"with .to('cpu')")
            raise TypeError(f"{name}: expected a cupy.ndarray of {dtype} with shape {shape_doc} on {device!r}, "
                            f"got {describe(value)}")
        _, _, index = device.partition(":")
        if value.device.id != int(index):
            raise ValueError(f"{name}: expected an array on {device!r}, got one on 'cuda:{value.device.id}'")
    if value.dtype != dtype:
        other = f" or build the layer with dtype='{value.dtype}'" if value.dtype in _FLOAT_DTYPES else ""
        raise TypeError(f"{name}: expected dtype {dtype}, got {value.dtype} (convert with .astype('{dtype.name}'){other})")
    return value


def from_torch(value, name: str):
    """A torch tensor as a NumPy array (others unchanged); a TypeError naming `name` for a tensor NumPy
    cannot hold (bfloat16) or one on a GPU."""
    if not hasattr(value, "detach"):
        return value
    try:
        return value.detach().cpu().numpy()
    except (TypeError, RuntimeError) as err:
        raise TypeError(f"{name}: this torch tensor has no NumPy equivalent ({err}); convert it with "
                        f".float() first") from None


def shape(value: np.ndarray, name: str, expected: tuple, shape_doc: str) -> None:
    if tuple(value.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {tuple(expected)} {shape_doc}, got {tuple(value.shape)}")


def _available_memory() -> int:
    """Bytes this process may still allocate, as far as the OS says (MemAvailable, else physical)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


# Requests below this never consult the OS (reading /proc/meminfo costs ~25 us, a tenth of a small
# forward call); NumPy still raises MemoryError for them if it must.
_CHECK_ABOVE = 64 << 20


def memory(nbytes: int, what: str, advice: str = "use a smaller batch or sequence length") -> None:
    """Raise MemoryError up front when `what` needs more memory than the machine has available."""
    if nbytes < _CHECK_ABOVE:
        return
    avail = _available_memory()
    if nbytes > avail:
        raise MemoryError(f"{what} needs {nbytes / 2**30:.2f} GiB of working memory but only "
                          f"{avail / 2**30:.2f} GiB is available; {advice}")
