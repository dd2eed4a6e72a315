"""A run killed with SIGKILL and restarted gives the same model as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("resume_worker.py")


def _run(ckpt, out, **kwargs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, str(WORKER), str(ckpt), str(out)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kwargs
    )


def _completed(ckpt):
    try:
        return json.loads((ckpt / "state.json").read_text())["completed"]
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_killed_run_resumes_to_the_same_model(tmp_path):
    reference = _run(tmp_path / "ref", tmp_path / "ref.npz")
    reference_err = reference.communicate(timeout=900)[1]
    assert reference.returncode == 0, reference_err.decode()[-2000:]

    ckpt = tmp_path / "killed"
    proc = _run(ckpt, tmp_path / "never.npz")
    deadline = time.time() + 900
    while _completed(ckpt) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the worker finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # mid-way: layer 3 of 5, inside the first block
    proc.wait()
    assert not (tmp_path / "never.npz").exists()
    assert 2 <= _completed(ckpt) < 5

    resumed = _run(ckpt, tmp_path / "resumed.npz")
    resumed_err = resumed.communicate(timeout=900)[1]
    assert resumed.returncode == 0, resumed_err.decode()[-2000:]
    assert b"resuming" not in resumed_err  # verbose=0 prints nothing
    with np.load(tmp_path / "ref.npz") as a, np.load(tmp_path / "resumed.npz") as b:
        assert a.files == b.files
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    assert _completed(ckpt) == 5
