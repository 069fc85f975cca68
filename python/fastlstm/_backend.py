"""Array-library plumbing shared by the training library: NumPy on the CPU, CuPy on a GPU.

What this is: the few places where the two libraries differ (which module an array belongs to, moving
arrays between devices, scatter-add, matrix products), so that nn, losses and optim are written once
against ``xp``. What it is not: a device abstraction layer; CuPy is imported only when an array or a
device asks for it, and NumPy-only code never pays for it.

Tests: tests/test_nn.py and tests/test_optim.py run everything here on NumPy arrays.
"""

from __future__ import annotations

import math
import mmap

import numpy as np

from . import _C

_HUGE_PAGE = 2 << 20


def host_workspace(shape, dtype) -> np.ndarray:
    """An uninitialised NumPy array for a buffer kept across calls (a layer's saved gates and cells, dG).

    On Linux, one of 1 MiB or more lies in its own private mapping, 2 MiB aligned and advised into
    transparent huge pages: the kernels walk [T, B, 4H] arrays a row (at 4H = 1024 floats, a 4 KiB page)
    at a time, and with 4 KiB pages a training step's arrays are more pages than the TLB holds (same process,
    a whole training step at (100, 16, 256, 256): 1.01-1.02x). Elsewhere, or below that size, np.empty. The
    mapping is released with the array."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < _HUGE_PAGE // 2 or not hasattr(mmap, "MADV_HUGEPAGE") or not hasattr(mmap, "MAP_PRIVATE"):
        return np.empty(shape, dtype)
    try:
        m = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError):
        return np.empty(shape, dtype)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # (a kernel without transparent huge pages: the mapping still serves)
        pass
    raw = np.frombuffer(m, np.uint8)
    start = -raw.ctypes.data % _HUGE_PAGE
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def cupy_or_none():
    """The cupy module if it is installed and importable, else None."""
    try:
        import cupy
    except Exception:  # ImportError, or a CUDA runtime that fails to initialise
        return None
    return cupy


def array_module(*arrays):
    """numpy, or cupy when any argument is a CuPy array."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy
            return cupy
    return np


def device_of(a) -> str:
    return "cuda" if array_module(a) is not np else "cpu"


def cuda_device_count() -> int:
    """CUDA devices CuPy can use here (0 without CuPy, a driver or a GPU)."""
    cp = cupy_or_none()
    if cp is None:
        return 0
    try:
        return int(cp.cuda.runtime.getDeviceCount())
    except Exception:  # no driver, or a driver too old for CuPy's runtime
        return 0


def require_cuda(what: str) -> None:
    """Raise a RuntimeError that says what is missing when `what` (e.g. "device='cuda'") cannot run here."""
    info = _C.build_info()
    if not info["cuda_compiled"]:
        raise RuntimeError(f"{what}: this build of fastlstm has no CUDA kernels (no CUDA compiler was found when it "
                           f"was built; fastlstm.build_info()['cuda_compiled'] is False)")
    if cupy_or_none() is None:
        raise RuntimeError(f"{what}: the CUDA layer takes CuPy arrays, and CuPy is not importable here "
                           f"(pip install 'fastlstm[cuda]')")
    if cuda_device_count() == 0:
        raise RuntimeError(f"{what}: no usable CUDA GPU here (CuPy sees no device; "
                           f"fastlstm.build_info()['cuda_devices'] is {info['cuda_devices']})")
    if info["cuda_devices"] == 0:  # CuPy sees a GPU, fastlstm's static CUDA runtime does not
        raise RuntimeError(f"{what}: CuPy sees a GPU but fastlstm's CUDA runtime does not: the NVIDIA driver is "
                           f"probably older than the CUDA version fastlstm was built with (CUDA 13 needs driver "
                           f">= 580); update the driver or build fastlstm from source with your CUDA toolkit")


def cuda_usable() -> bool:
    """Whether the CUDA layer can run here (require_cuda would not raise)."""
    try:
        require_cuda("cuda")
    except RuntimeError:
        return False
    return True


def module_for(device: str):
    if device == "cpu":
        return np
    cp = cupy_or_none()
    if cp is None:
        raise RuntimeError(f"device={device!r} needs CuPy (pip install 'fastlstm[cuda]'), which is not importable here")
    return cp


def to_numpy(a) -> np.ndarray:
    return a.get() if array_module(a) is not np else np.asarray(a)


def to_device(a, device: str):
    """a copied to `device` ('cpu' or 'cuda'); returned unchanged when it is already there."""
    if device == "cpu":
        return to_numpy(a)
    xp = module_for(device)
    return xp.asarray(a)


def scatter_add(target, indices, values) -> None:
    """target[indices] += values, with repeated indices adding up."""
    xp = array_module(target)
    if xp is np:
        np.add.at(target, indices, values)
    else:
        import cupyx
        cupyx.scatter_add(target, indices, values)


_GEMM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def matmul(a, b, out=None, trans_a=False, trans_b=False, accumulate=False, m_rows=None, k_rows=None):
    """op(a) @ op(b) for 2-D arrays; into `out` (added to it when accumulate).

    NumPy float arrays go through fastlstm's own GEMM (so its thread pool is the only one spinning), which
    also takes row selections (m_rows / k_rows: see lstm.h's GemmArgs); CuPy arrays go to cuBLAS through
    CuPy's matmul; anything else to the array library's matmul.
    """
    xp = array_module(a, b)
    if xp is np and a.dtype == b.dtype and a.dtype in _GEMM_DTYPES:
        m = a.shape[1] if trans_a else a.shape[0]
        n = b.shape[0] if trans_b else b.shape[1]
        if out is None:
            out = np.empty((m, n), a.dtype)
            accumulate = False
        a, b = (x if x.strides[-1] == x.itemsize else np.ascontiguousarray(x) for x in (a, b))
        _C.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, accumulate=accumulate, m_rows=m_rows, k_rows=k_rows)
        return out
    if m_rows is not None or k_rows is not None:
        raise NotImplementedError("matmul: row selections need NumPy float arrays")
    opa, opb = (a.T if trans_a else a), (b.T if trans_b else b)
    if out is None:
        return opa @ opb
    if accumulate:
        out += opa @ opb
    elif xp is not np:
        xp.matmul(opa, opb, out=out)
    else:
        out[...] = opa @ opb
    return out


def current_stream() -> int:
    """CuPy's current stream on the current device, as the integer handle the CUDA kernels take."""
    return cupy_or_none().cuda.get_current_stream().ptr
