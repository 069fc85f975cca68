"""Checkpoints: a model's weights and configuration in one ``.npz`` file, written atomically.

What this is: ``save(model, path, meta=None)`` and ``load(path)``. The file is a NumPy ``.npz`` (a
zip) holding every parameter under its model name (PyTorch's names inside LSTM layers, e.g.
``1.weight_ih_l0``) plus one entry ``__fastlstm__``: UTF-8 JSON with a format tag, the model's
``config()`` and the caller's ``meta`` (task, vocabulary, metrics). ``load`` rebuilds the model
with no code and returns it; ``load_checkpoint`` also returns ``meta``. Nothing is pickled: the
file is read with ``allow_pickle=False``, so loading a checkpoint never runs code.

Atomic: the bytes go to a temporary file in the same directory, are flushed to disk, then renamed
over ``path``; a crash at any point leaves either the previous checkpoint or the new one, never a
mix. A save that fails with an exception removes its temporary file (a killed process may leave a
``.tmp-*.npz`` behind, never a damaged checkpoint).

Tests: tests/test_checkpoint.py (round trip, simulated crash, truncated / corrupted / foreign files).
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from . import _backend
from . import nn

__all__ = ["save", "load", "load_checkpoint", "CheckpointError"]

FORMAT = "fastlstm-checkpoint"
VERSION = 1
_META_KEY = "__fastlstm__"


class CheckpointError(ValueError):
    """A file that is not a readable fastlstm checkpoint (truncated, corrupted, foreign or newer)."""


def save(model, path, meta=None) -> str:
    """Write model (weights + config) and meta (JSON-able) to path (".npz" appended if missing)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a fastlstm.nn.Module, got {type(model).__name__}")
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    header = {"format": FORMAT, "version": VERSION, "model": model.config(), "meta": meta or {}}
    try:
        blob = json.dumps(header).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise TypeError(f"meta: expected JSON-serialisable values ({err})") from None
    arrays = {name: _backend.to_numpy(p.data) for name, p in model.named_parameters()}
    if _META_KEY in arrays:
        raise ValueError(f"model: a parameter may not be named {_META_KEY!r}")
    arrays[_META_KEY] = np.frombuffer(blob, np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it private; a checkpoint is an ordinary file
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


def load_checkpoint(path):
    """(model, meta) from a file written by save; the model is in eval mode."""
    path = os.fspath(path)
    if not os.path.isfile(path) and os.path.isfile(path + ".npz"):  # as save() names it
        path += ".npz"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path}: not a fastlstm checkpoint (a single NumPy array, not an .npz archive)")
        with z:
            if _META_KEY not in z.files:
                raise CheckpointError(f"{path}: not a fastlstm checkpoint (no {_META_KEY} entry; "
                                      f"it holds {sorted(z.files)[:5]}...)")
            header = json.loads(bytes(z[_META_KEY]).decode("utf-8"))
            weights = {k: z[k] for k in z.files if k != _META_KEY}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a readable fastlstm checkpoint (truncated or corrupted: {err})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fastlstm checkpoint (format tag {header.get('format')!r})"
                              if isinstance(header, dict) else f"{path}: not a fastlstm checkpoint")
    if header.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {header.get('version')!r}; "
                              f"this fastlstm reads version {VERSION}")
    try:
        model = nn.from_config(header["model"])
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: the weights do not fit the stored model ({err})") from None
    return model.eval(), header.get("meta", {})


def load(path):
    """The model saved at path, rebuilt from its stored configuration, in eval mode."""
    return load_checkpoint(path)[0]
