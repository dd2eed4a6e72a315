"""Atomic per-layer checkpoints for progressive_fit (resume after the last completed layer)."""

import json
import os
import tempfile

import numpy as np

STATE = "state.json"


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


class Checkpointer:
    """Saves the model's weights, the current block's s/V and the history after each layer.

    Every file is written under a temporary name and renamed into place; ``state.json`` is
    written last and names the files of the latest complete checkpoint, so a run killed at
    any moment leaves the previous checkpoint intact.

    Args:
        directory: folder for the checkpoint files (created if missing).
        fingerprint: string identifying the run (config + layer names); a checkpoint with
            another fingerprint is refused rather than silently mixed in.
    """

    def __init__(self, directory, fingerprint):
        self.directory = os.fspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.fingerprint = fingerprint

    def _path(self, name):
        return os.path.join(self.directory, name)

    def load(self):
        """Return the saved state dict, or None if there is no checkpoint yet."""
        path = self._path(STATE)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            state = json.load(f)
        if state.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"The checkpoint in {self.directory!r} was written by a run with other "
                "arguments (config, model or layer list differ). Use another checkpoint_dir "
                "or delete this one to start over."
            )
        block = None
        if state.get("block_file"):
            with np.load(self._path(state["block_file"])) as z:
                block = {key: z[key] for key in z.files}
        state["block_arrays"] = block
        state["weights_path"] = self._path(state["weights_file"])
        return state

    def save(self, model, completed, history, block_meta=None, block_arrays=None, final=False):
        """Write the checkpoint for ``completed`` finished layers (``final``: and the joint
        phase after the last layer)."""
        weights = f"layer{completed:03d}{'final' if final else ''}.weights.h5"
        tmp = f".tmp-{weights}"
        model.save_weights(self._path(tmp))
        os.replace(self._path(tmp), self._path(weights))
        block_file = None
        if block_arrays is not None:
            block_file = f"block{completed:03d}{'final' if final else ''}.npz"
            tmp_npz = self._path(f".tmp-{block_file}")
            with open(tmp_npz, "wb") as f:
                np.savez(f, **block_arrays)
            os.replace(tmp_npz, self._path(block_file))
        state = {
            "fingerprint": self.fingerprint,
            "completed": completed,
            "weights_file": weights,
            "block_file": block_file,
            "block_meta": block_meta,
            "history": history,
            "final_done": bool(final),
        }
        _atomic_write_text(self._path(STATE), json.dumps(state, indent=1, default=float))
        keep = {STATE, weights, block_file}
        for name in os.listdir(self.directory):
            if name not in keep and (name.startswith(("layer", "block", ".tmp-"))):
                os.remove(self._path(name))
