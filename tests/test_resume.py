"""Resume proven, not assumed: runs killed (SIGKILL) in the middle of a layer's training and
inside Checkpointer.save resume after the last completed layer, train only what is left, and
end bit for bit where an uninterrupted run ends."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("resume_worker.py")
LAYERS = 5  # the worker's model: two blocks of 3x3 + 2 x 1x1, less the first conv
BATCHES_PER_LAYER = 8  # 128 images / batch 32 = 4 steps; 1 quantize + 1 fine-tune epoch


def _run(ckpt, out, **fault):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **fault}
    command = [sys.executable, str(WORKER), str(ckpt), str(out)]
    proc = subprocess.run(command, env=env, capture_output=True, timeout=900, text=True)
    return proc.returncode, proc.stdout, proc.stderr


def _completed(ckpt):
    return json.loads((ckpt / "state.json").read_text())["completed"]


def _layers_trained(stdout):
    """The layers whose quantization phase ran in this process."""
    return [int(k) for k in re.findall(rf"\[BiTAT\] layer (\d)/{LAYERS} '\w+': quantize", stdout)]


def test_killed_runs_resume_after_the_last_layer_to_the_same_model(tmp_path):
    code, out, err = _run(tmp_path / "ref", tmp_path / "ref.npz")
    assert code == 0, err[-2000:]
    assert "resuming" not in out and _layers_trained(out) == [1, 2, 3, 4, 5]

    # Killed in the middle of layer 3's quantization phase (its 3rd batch).
    ckpt = tmp_path / "ckpt"
    code, out, _ = _run(ckpt, tmp_path / "x.npz", KILL_AT_BATCH=str(2 * BATCHES_PER_LAYER + 3))
    assert code == -9 and not (tmp_path / "x.npz").exists()
    assert _completed(ckpt) == 2 and _layers_trained(out) == [1, 2, 3]

    # Resumed, then killed inside the save of layer 3: the new weights are on disk under
    # their temporary name, state.json still names layer 2's checkpoint.
    code, out, _ = _run(ckpt, tmp_path / "x.npz", KILL_IN_SAVE="1")
    assert code == -9
    assert f"resuming from '{ckpt}' after layer 2/{LAYERS}" in out
    assert _layers_trained(out) == [3]
    assert _completed(ckpt) == 2 and (ckpt / ".tmp-layer003.weights.h5").exists()

    # Resumed again: only layers 3-5 and the joint phase train; the result is bit-identical.
    code, out, err = _run(ckpt, tmp_path / "resumed.npz")
    assert code == 0, err[-2000:]
    assert f"resuming from '{ckpt}' after layer 2/{LAYERS}" in out
    assert _layers_trained(out) == [3, 4, 5]
    with np.load(tmp_path / "ref.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    assert _completed(ckpt) == LAYERS
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".tmp-")]
