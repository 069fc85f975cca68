"""Checkpoints: a model's weights and configuration in one ``.npz`` file, written atomically.

What this is: ``save(model, path, meta=None)`` and ``load(path)``. The file is a NumPy ``.npz`` (a
zip) holding every parameter under its model name (PyTorch's names inside LSTM layers, e.g.
``1.weight_ih_l0``) plus one entry ``__fastlstm__``: UTF-8 JSON with a format tag, the model's
``config()`` and the caller's ``meta`` (task, vocabulary, metrics). ``load`` rebuilds the model
with no code and returns it; ``load_checkpoint`` also returns ``meta``. ``save(..., optimizer=opt)``
adds the optimizer's state (steps, learning rate, buffers as ``__optimizer__.<i>.<buffer>``), which
``load_optimizer(path, opt)`` gives to an optimizer of the same kind to resume training (with
``fit(..., initial_step=meta["step"])``). Nothing is pickled: the file is read with
``allow_pickle=False``, so loading a checkpoint never runs code.

Atomic: the bytes go to a temporary file in the same directory, are flushed to disk, then renamed
over ``path``; a crash at any point leaves either the previous checkpoint or the new one, never a
mix. A save that fails with an exception removes its temporary file (a killed process may leave a
``.tmp-*.npz`` behind, never a damaged checkpoint).

Tests: tests/test_checkpoint.py (round trip, simulated crash, truncated / corrupted / foreign files) and
tests/test_train_errors.py (malformed archives, headers, configurations and weights; bad paths).
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import tempfile
import zipfile
import zlib

import numpy as np

from . import _backend
from . import _validate as V
from . import nn
from .optim import Optimizer

__all__ = ["save", "load", "load_checkpoint", "load_optimizer", "CheckpointError"]

FORMAT = "fastlstm-checkpoint"
VERSION = 1  # weights and configuration
VERSION_WITH_OPTIMIZER = 2  # and an optimizer's state: a reader that predates it says so, not "unexpected keys"
_META_KEY = "__fastlstm__"
_OPTIMIZER_PREFIX = "__optimizer__."  # then "<parameter index>.<buffer>", as Optimizer.state_dict() names them


class CheckpointError(ValueError):
    """A file that is not a readable fastlstm checkpoint (truncated, corrupted, foreign or newer)."""


# What a damaged or foreign archive raises while it is read: zipfile's and NumPy's own errors, the
# decompressors' (zlib.error; bz2 raises OSError), RuntimeError for an encrypted member (its subclasses
# NotImplementedError for an unknown compression method or zip version, and RecursionError for JSON
# nested too deeply), MemoryError for an array header that claims an enormous shape and struct.error for a
# mangled zip record.
_UNREADABLE = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, KeyError, RuntimeError,
               MemoryError, zlib.error, struct.error)
try:
    import lzma

    _UNREADABLE += (lzma.LZMAError,)
except ImportError:  # a Python built without lzma cannot open such members at all (NotImplementedError)
    pass

# What building the stored model can raise for a configuration that does not describe one: bad or unknown
# arguments (TypeError, ValueError, KeyError), sizes too large for this machine (MemoryError, OverflowError),
# a CUDA device that is not usable here and nesting too deep to rebuild (RuntimeError, RecursionError).
_UNBUILDABLE = (KeyError, TypeError, ValueError, MemoryError, OverflowError, RuntimeError)


def check_path(path, name: str = "path") -> str:
    """path as a str, after checking it is a str or os.PathLike that names a file (not "", "dir/" or ".npz")."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a str or os.PathLike file name, got {V.describe(path)}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{name}: expected a path that gives a str, got {V.describe(path)}")
    if "\0" in path:
        raise ValueError(f"{name}: expected a file name, got {path!r} (a NUL character)")
    if not os.path.basename(path).removesuffix(".npz"):
        raise ValueError(f"{name}: expected a file name, got {path!r}")
    return path


def _plain(value):
    """json.dumps's fallback: NumPy scalars and 0-d arrays as the Python numbers they hold."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} is not JSON-serialisable")


def _json(header) -> str:
    try:
        return json.dumps(header, default=_plain)
    except (TypeError, ValueError, RecursionError) as err:
        raise TypeError(f"meta: expected JSON-serialisable values ({err})") from None


def check_meta(meta) -> dict:
    """meta (None, or a dict of JSON-serialisable values; NumPy scalars count as numbers) as a dict,
    checked now rather than when a checkpoint is written."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise TypeError(f"meta: expected a dict or None, got {V.describe(meta)}")
    _json(meta)
    return meta


def model_config(model) -> dict:
    """model's configuration, checked to be one a checkpoint can hold (ModelCheckpoint asks before training)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a fastlstm.nn.Module, got {type(model).__name__}")
    try:
        config = model.config()
        json.dumps(config, default=_plain)
    except (TypeError, ValueError, RecursionError) as err:
        raise TypeError(f"model: its configuration cannot be saved ({err})") from None
    for module in _rebuilt_by_name(model):  # what load() will look up by its class name
        if nn._REGISTRY.get(type(module).__name__) is not type(module):
            raise TypeError(f"model: {type(module).__name__} is not a class fastlstm.load can rebuild; decorate it "
                            "with @fastlstm.nn.register (under a name of its own)")
    return config


def _rebuilt_by_name(module):
    """module and, in a plain Sequential, its layers (recursively): the classes a checkpoint names."""
    yield module
    if type(module) is nn.Sequential:
        for layer in module.layers:
            yield from _rebuilt_by_name(layer)


def save(model, path, meta=None, optimizer=None) -> str:
    """Write model (weights + config) and meta (JSON-able) to path (".npz" appended if missing); with
    optimizer (fastlstm.optim), its state too, for load_optimizer to resume training from."""
    config = model_config(model)
    path = check_path(path)
    if not path.endswith(".npz"):
        path += ".npz"
    version = VERSION if optimizer is None else VERSION_WITH_OPTIMIZER
    header = {"format": FORMAT, "version": version, "model": config, "meta": check_meta(meta)}
    arrays = {name: _backend.to_numpy(p.data) for name, p in model.named_parameters()}
    for name in arrays:
        if name == _META_KEY or name.startswith(_OPTIMIZER_PREFIX):
            raise ValueError(f"model: a parameter may not be named {name!r} (the checkpoint's own entries)")
    if optimizer is not None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer: expected a fastlstm.optim optimizer or None, got {V.describe(optimizer)}")
        state = optimizer.state_dict()
        header["optimizer"] = {"type": state["type"], "steps": state["steps"], "lr": state["lr"]}
        arrays.update({_OPTIMIZER_PREFIX + key: _backend.to_numpy(buf) for key, buf in state["state"].items()})
    arrays[_META_KEY] = np.frombuffer(_json(header).encode("utf-8"), np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        if os.path.isdir(path):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    except OSError as err:  # named after the user's path, not a temporary file or a parent
        raise type(err)(err.errno, f"path: cannot write a checkpoint at {path!r} ({err.strerror or err})") \
            from None
    try:
        try:  # mkstemp makes it private: keep the mode of the file it replaces, else an ordinary file's
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return path


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_checkpoint(path, optimizer: bool = False):
    """(path, header, arrays) of the checkpoint at path (or path + ".npz", as save() names it), its header checked;
    arrays: the weights, or with optimizer=True the optimizer's buffers (their "<i>.<buffer>" names)."""
    path = check_path(path)
    if not os.path.isfile(path) and os.path.isfile(path + ".npz"):
        path += ".npz"
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: a directory, not a checkpoint file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a checkpoint (not a regular file)")
    with open(path, "rb") as f:  # a file we may not read is an OSError of its own, not a damaged checkpoint
        header, arrays = _read(f, path, optimizer)
    _check_header(header, path)
    return path, header, arrays


def load_checkpoint(path):
    """(model, meta) from a file written by save; the model is in eval mode."""
    path, header, weights = _read_checkpoint(path)
    for name, w in weights.items():
        if w.dtype.kind != "f":
            raise CheckpointError(f"{path}: weight {name!r} holds {w.dtype} values; expected floating point")
    try:
        model = nn.from_config(header["model"], init=False)  # every weight is loaded (or refused) next
    except _UNBUILDABLE as err:
        raise CheckpointError(f"{path}: cannot build the stored model from its configuration "
                              f"({type(err).__name__}: {err})") from None
    try:
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the weights do not fit the stored model ({err})") from None
    return model.eval(), header.get("meta", {})


def load_optimizer(path, optimizer) -> None:
    """Give optimizer the state a checkpoint saved with save(..., optimizer=) or ModelCheckpoint(include_optimizer=
    True): build the model with load_checkpoint, the same kind of optimizer over its parameters(), then this."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer: expected a fastlstm.optim optimizer, got {V.describe(optimizer)}")
    path, header, buffers = _read_checkpoint(path, optimizer=True)
    saved = header.get("optimizer")
    if saved is None:
        raise CheckpointError(f"{path}: holds no optimizer state (saved without optimizer=, or by ModelCheckpoint "
                              "without include_optimizer=True)")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: its header's 'optimizer' is a JSON {_json_kind(saved)}, expected an object")
    try:
        optimizer.load_state_dict({**{k: saved[k] for k in ("type", "steps", "lr") if k in saved}, "state": buffers})
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: its optimizer state does not fit this optimizer ({err})") from None


def _read(f, path, optimizer: bool = False):
    """(header, arrays) from an open .npz file, arrays as _read_checkpoint says (only those members are
    decompressed); CheckpointError for anything that is not one."""
    magic = f.read(6)
    f.seek(0)
    if magic.startswith(b"\x93NUMPY"):
        raise CheckpointError(f"{path}: not a fastlstm checkpoint (a single NumPy array, not an .npz archive)")
    if not magic.startswith(b"PK"):  # (np.load would take anything else for a pickle, and say so)
        raise CheckpointError(f"{path}: not a fastlstm checkpoint (not an .npz archive: it starts with {magic!r})")
    try:
        z = np.load(f, allow_pickle=False)
        with z:
            if _META_KEY not in z.files:
                raise CheckpointError(f"{path}: not a fastlstm checkpoint (no {_META_KEY} entry; "
                                      f"it holds {sorted(z.files)[:5]}...)")
            header = json.loads(bytes(z[_META_KEY]).decode("utf-8"))
            if optimizer:
                arrays = {k[len(_OPTIMIZER_PREFIX):]: z[k] for k in z.files if k.startswith(_OPTIMIZER_PREFIX)}
            else:
                arrays = {k: z[k] for k in z.files if k != _META_KEY and not k.startswith(_OPTIMIZER_PREFIX)}
    except CheckpointError:
        raise
    except MemoryError as err:
        raise CheckpointError(f"{path}: not a readable fastlstm checkpoint (an array in it claims more memory "
                              f"than is available: {err})") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not a readable fastlstm checkpoint (its {_META_KEY} header is "
                              "nested too deeply)") from None
    except _UNREADABLE as err:
        kind = type(err).__name__
        if type(err).__module__ != "builtins":  # zlib.error, zipfile.BadZipFile
            kind = f"{type(err).__module__}.{kind}"
        raise CheckpointError(f"{path}: not a readable fastlstm checkpoint (truncated or corrupted: "
                              f"{kind}: {err})") from None
    return header, arrays


def _json_kind(value) -> str:
    """The JSON name of a decoded value's type, for messages about a header."""
    for kind, name in ((dict, "object"), (list, "array"), (str, "string"), (bool, "boolean"), (type(None), "null")):
        if isinstance(value, kind):
            return name
    return "number"


def _check_header(header, path) -> None:
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: not a fastlstm checkpoint (its header is a JSON {_json_kind(header)}, "
                              "expected an object)")
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastlstm checkpoint (format tag {header.get('format')!r})")
    version = header.get("version")
    if isinstance(version, bool) or version not in (VERSION, VERSION_WITH_OPTIMIZER):
        raise CheckpointError(f"{path}: checkpoint format version {version!r}; this fastlstm reads versions "
                              f"{VERSION} and {VERSION_WITH_OPTIMIZER}")
    if "model" not in header:
        raise CheckpointError(f"{path}: its header has no 'model' entry (the model's configuration)")
    if not isinstance(header["model"], dict):
        raise CheckpointError(f"{path}: its header's 'model' is a JSON {_json_kind(header['model'])}, "
                              "expected an object (the model's configuration)")
    if not isinstance(header.get("meta", {}), dict):
        raise CheckpointError(f"{path}: its header's 'meta' is a JSON {_json_kind(header['meta'])}, "
                              "expected an object")


def load(path):
    """The model saved at path, rebuilt from its stored configuration, in eval mode."""
    return load_checkpoint(path)[0]
