"""Durable per-layer checkpoints for progressive_fit (resume after the last completed layer)."""

import json
import os
import re
import tempfile
import zipfile
import zlib

import numpy as np

from bitat_keras.fit.multi_worker import is_chief

__all__ = ["STATE", "Checkpointer", "CheckpointError", "data_digest", "weights_digest"]

STATE = "state.json"
# Every file this module writes; cleanup never touches anything else in the folder.
_OWN_FILE = re.compile(
    r"^(\.tmp-)?(layer\d{3}(final)?\.weights\.h5|block\d{3}(final)?\.npz)$|^\.tmp-.*\.json$"
)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be resumed from (corrupt, missing or foreign files)."""


def _fsync_file(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the renames still happened
        pass
    finally:
        os.close(fd)


def _atomic_write_text(path, text):
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _crc(arrays):
    crc = 0
    for a in arrays:
        a = np.ascontiguousarray(a)
        crc = zlib.crc32(f"{a.dtype}{a.shape}".encode(), crc)
        crc = zlib.crc32(a.tobytes(), crc)
    return crc


def weights_digest(model):
    """A checksum of every weight of ``model`` (CRC-32 over dtype, shape and bytes)."""
    return f"{_crc(np.asarray(w) for w in model.get_weights()):08x}"


def data_digest(x, y, sample_weight=None, sample=64):
    """A cheap fingerprint of numpy training data: count, shapes, dtypes and a checksum of
    ``sample`` evenly spaced examples; with per-sample weights also a checksum of every
    weight (one number a sample: cheap), so that any change of the weights changes it."""
    x, y = np.asarray(x), np.asarray(y)
    rows = np.unique(np.linspace(0, len(x) - 1, num=min(sample, len(x))).astype(int))
    digest = f"{len(x)}:{x.shape}:{x.dtype}:{y.shape}:{y.dtype}:{_crc([x[rows], y[rows]]):08x}"
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype="float32")
        digest += f":w{w.shape}:{_crc([w]):08x}"
    return digest


class Checkpointer:
    """Saves the model's weights, the current block's s/V and the history after each layer.

    Every file is written under a temporary name, flushed to disk (fsync) and renamed into
    place; ``state.json`` is written last and names the files of the latest complete
    checkpoint, and the folder is fsynced after the renames, so a run killed (or a machine
    that loses power) at any moment leaves the previous checkpoint intact. Cleanup removes
    only files this class writes.

    Args:
        directory: folder for the checkpoint files (created if missing).
        fingerprint: string identifying the run (config, layers, pre-trained weights and
            data); a checkpoint with another fingerprint is refused rather than mixed in.

    Example:
        >>> ckpt = Checkpointer("/tmp/run1", fingerprint="...")  # doctest: +SKIP
        >>> state = ckpt.load()  # None before the first save
    """

    def __init__(self, directory, fingerprint):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.fingerprint = fingerprint

    def _path(self, name):
        return os.path.join(self.directory, name)

    def _broken(self, name, problem):
        return CheckpointError(
            f"Cannot resume from {self._path(name)!r}: {problem}. Delete the folder "
            f"{self.directory!r} (or pass another checkpoint_dir) to start over."
        )

    def load(self):
        """Return the saved state dict, or None if there is no checkpoint yet."""
        path = self._path(STATE)
        if not os.path.exists(path):
            return None
        try:
            with open(path) as f:
                state = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise self._broken(STATE, f"the file is not valid JSON ({e})") from e
        missing = [k for k in ("completed", "weights_file", "history") if k not in state]
        if not isinstance(state, dict) or missing:
            raise self._broken(STATE, f"it lacks the fields {missing}")
        if state.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"The checkpoint in {self.directory!r} was written by a run with other "
                "arguments (config, layer list, pre-trained weights or training data differ). "
                "Use another checkpoint_dir or delete this one to start over."
            )
        for key in ("weights_file", "block_file"):
            name = state.get(key)
            if name and not os.path.exists(self._path(name)):
                raise self._broken(name, f"{STATE} names this file but it does not exist")
        block = None
        if state.get("block_file"):
            try:
                with np.load(self._path(state["block_file"])) as z:
                    block = {key: z[key] for key in z.files}
            except (OSError, ValueError, zipfile.BadZipFile) as e:
                raise self._broken(state["block_file"], f"the file is corrupt ({e})") from e
        state["block_arrays"] = block
        state["weights_path"] = self._path(state["weights_file"])
        return state

    def load_weights(self, model, state):
        """Load the checkpoint's weights into ``model`` (a clear error if the file is bad)."""
        try:
            model.load_weights(state["weights_path"])
        except Exception as e:  # h5py and Keras raise many kinds for a damaged file
            raise self._broken(state["weights_file"], f"the weights cannot be read ({e})") from e

    def _write(self, name, write):
        """``write(path)`` to a temporary name, fsync it, rename it into place."""
        tmp = self._path(f".tmp-{name}")
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, self._path(name))

    def save(self, model, completed, history, block_meta=None, block_arrays=None, final=False):
        """Write the checkpoint for ``completed`` finished layers (``final``: and the joint
        phase after the last layer). In several processes only the chief writes."""
        if not is_chief():
            return
        suffix = "final" if final else ""
        weights = f"layer{completed:03d}{suffix}.weights.h5"
        self._write(weights, model.save_weights)
        block_file = None
        if block_arrays is not None:
            block_file = f"block{completed:03d}{suffix}.npz"

            def write_npz(path):
                with open(path, "wb") as f:
                    np.savez(f, **block_arrays)

            self._write(block_file, write_npz)
        state = {
            "fingerprint": self.fingerprint,
            "completed": completed,
            "weights_file": weights,
            "block_file": block_file,
            "block_meta": block_meta,
            "history": history,
            "final_done": bool(final),
        }
        _fsync_dir(self.directory)  # the renamed files exist on disk before state names them
        _atomic_write_text(self._path(STATE), json.dumps(state, indent=1, default=float))
        _fsync_dir(self.directory)
        keep = {STATE, weights, block_file}
        for name in os.listdir(self.directory):
            if name not in keep and _OWN_FILE.match(name):
                os.remove(self._path(name))
