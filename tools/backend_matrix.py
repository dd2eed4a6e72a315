"""Run the export tests (conversion, ``LceBconv2d`` counts, interpreter parity) across
TensorFlow and numpy versions, one fresh virtual environment per cell.

Each cell installs this project's wheel with its ``test`` extra, the cell's
``tensorflow-cpu`` and numpy (``latest``: whatever pip resolves; plus the few caps a
numpy-1 cell needs with a newer TensorFlow), runs ``pip check``, then
``pytest tests/test_export.py`` (or ``--tests``) against this checkout. A cell that pip
cannot resolve is reported as such, with pip's reason. Standard library only. Usage::

    python tools/backend_matrix.py                       # the default cells
    python tools/backend_matrix.py --cells 2.19.1/1.26.4 --workdir /tmp/matrix

Writes ``matrix.json`` in the workdir and prints one line per cell.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import time
import tomllib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CELLS = [
    "2.16.2/1.26.4",
    "2.16.2/2.1.3",
    "2.19.1/1.26.4",
    "2.19.1/2.1.3",
    "2.21.0/1.26.4",
    "2.21.0/2.4.6",  # numpy 2.5 has no wheels for Python 3.11
    "latest/latest",  # what `pip install -e ".[test]"` without constraints resolves to
    "2.16.2/1.26.0/lowest",  # every core dependency at the lower bound pyproject.toml declares
]
# Newer releases of these need numpy 2; a numpy-1 cell caps them.
NUMPY1_CAPS = ["ml-dtypes<0.6", "scipy<1.17", "contourpy<1.4"]


def sh(args, log, **kwargs):
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        return subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, **kwargs).returncode


def tail(log, n=1200):
    with open(log) as f:
        return f.read()[-n:]


def lowest_pins():
    """``name==X`` for each core dependency declared as ``name>=X``."""
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        dependencies = tomllib.load(f)["project"]["dependencies"]
    return [d.replace(">=", "==") for d in dependencies if ">=" in d and "," not in d]


def run_cell(cell, workdir, wheel, python, tests):
    tf, numpy, *lowest = cell.split("/")
    folder = os.path.join(workdir, cell.replace("/", "_"))
    os.makedirs(folder, exist_ok=True)
    log = os.path.join(folder, "log.txt")
    venv = os.path.join(folder, "venv")
    vpython = os.path.join(venv, "bin", "python")
    result = {"tensorflow": tf, "numpy": numpy, "log": log}
    started = time.time()
    sh([python, "-m", "venv", venv], log)
    caps = NUMPY1_CAPS if numpy.startswith("1.") else []
    pins = [f"{wheel}[test]", *caps]
    pins += [] if tf == "latest" else [f"tensorflow-cpu=={tf}"]
    pins += [] if numpy == "latest" else [f"numpy=={numpy}"]
    pins += lowest_pins() if lowest == ["lowest"] else []
    result["pins"] = pins[1:]
    pip = [vpython, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if sh(pip + pins, log):
        found = re.findall(r"(?:ERROR|The conflict is caused by)[^\n]*(?:\n {4}[^\n]*)*", tail(log))
        result.update(status="not installable", reason=" / ".join(found)[-600:])
        return result
    result["pip_check"] = sh([vpython, "-m", "pip", "check"], log) == 0
    versions = subprocess.run(
        [vpython, "-c", "import numpy, tensorflow as t; print(t.__version__, numpy.__version__)"],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    ).stdout.split()
    result["installed"] = versions
    code = sh(
        [vpython, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        log,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "PYTHONPATH")},
    )
    summary = re.findall(r"\d+ (?:passed|failed|skipped|error)[^\n]*", tail(log, 4000))
    result.update(
        status="passed" if code == 0 else "failed",
        pytest=summary[-1] if summary else tail(log, 300),
        seconds=round(time.time() - started),
    )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", default=CELLS, help="TF/numpy pairs")
    parser.add_argument("--workdir", default="/tmp/bitat-backend-matrix")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--tests", nargs="+", default=["tests/test_export.py"])
    args = parser.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    dist = os.path.join(args.workdir, "dist")
    subprocess.run(
        [args.python, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO], check=True
    )
    (wheel,) = glob.glob(os.path.join(dist, "bitat_keras-*.whl"))
    python_version = subprocess.run(
        [args.python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    results = []
    for cell in args.cells:
        results.append(run_cell(cell, args.workdir, wheel, args.python, args.tests))
        print(json.dumps(results[-1]), flush=True)
        with open(os.path.join(args.workdir, "matrix.json"), "w") as f:
            json.dump(
                {"python": python_version, "tests": args.tests, "cells": results}, f, indent=2
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
