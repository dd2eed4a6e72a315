"""Install bitat-keras into a Colab-like runtime and check that the runtime survives.

Builds a virtual environment that looks like a Colab runtime (Python 3.12 where this
machine has it, the ``tensorflow`` GPU build at a recent version, numpy 2, jax, pandas,
scikit-learn, matplotlib, tensorflow-datasets, a Jupyter kernel), builds this project's
wheel, puts it beside a copy of ``examples/quickstart.ipynb``, and runs that notebook in
its small mode in the environment's own kernel, so its install cell installs the wheel
exactly as it would on Colab. Then it checks:

- TensorFlow's version and CUDA build flag, and numpy's version, are what they were before
  the install (no package of the runtime was replaced or downgraded: the script lists every
  distribution whose version changed);
- ``import tensorflow, jax, pandas`` still works;
- the notebook ran end to end: training, LCE conversion with one ``LceBconv2d`` per binary
  layer, and Keras-vs-LCE parity (relative difference <= 1e-3) under numpy 2.

Needs the package index (PyPI) and about 3 GB of disk. Standard library only, so it runs
with any Python. Usage::

    python tools/colab_check.py                      # workdir /tmp/bitat-colab-check
    python tools/colab_check.py --tensorflow 2.19.1 --workdir /tmp/colab219

Writes ``report.json`` in the workdir and prints it; exits 1 if a check failed.
"""

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What a Colab runtime has before the user installs anything (besides TensorFlow itself).
RUNTIME = ["numpy>=2", "jax", "pandas", "scikit-learn", "matplotlib", "tensorflow-datasets"]
KERNEL = ["ipykernel", "nbclient", "nbformat"]
PROBE = """
import json, importlib.metadata as md
import numpy, tensorflow as tf, jax, pandas
print("PROBE " + json.dumps({
    "tensorflow": tf.__version__,
    "built_with_cuda": bool(tf.test.is_built_with_cuda()),
    "numpy": numpy.__version__,
    "jax": jax.__version__,
    "pandas": pandas.__version__,
    "python": __import__("platform").python_version(),
    "distributions": {d.metadata["Name"].lower(): d.version for d in md.distributions()},
}))
"""
RUN_NOTEBOOK = """
import os, sys, nbclient, nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=1800, allow_errors=False)
try:
    client.execute(cwd=os.path.dirname(sys.argv[1]))
finally:
    nbformat.write(nb, sys.argv[1])
"""


def find_python(requested):
    """The interpreter for the runtime: ``requested``, else Python 3.12, else this one."""
    if requested:
        return requested
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12.*/bin/python3")))
    candidates += [shutil.which("python3.12") or ""]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    print("note: no Python 3.12 here; using", sys.executable, file=sys.stderr)
    return sys.executable


def run(args, log, **kwargs):
    """Run ``args``, appending its output to ``log``; raise with the tail if it fails."""
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(args)}\n")
        out.flush()
        done = subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)
    if done.returncode:
        with open(log) as out:
            tail = out.read()[-3000:]
        raise RuntimeError(f"{' '.join(args[:4])} ... exited {done.returncode}:\n{tail}")


def probe(python, log):
    done = subprocess.run(
        [python, "-c", PROBE],
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )
    with open(log, "a") as out:
        out.write(f"\n$ probe\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("PROBE ")]
    if done.returncode or not lines:
        return {"import_error": done.stderr.strip().splitlines()[-1:] or [done.returncode]}
    return json.loads(lines[-1][len("PROBE ") :])


def summary_of(notebook):
    with open(notebook) as f:
        nb = json.load(f)
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            for line in "".join(output.get("text", "")).splitlines():
                if line.startswith("SUMMARY "):
                    return json.loads(line[len("SUMMARY ") :])
    return None


def install_lines(notebook):
    """The lines the install cell printed (what it installed, from where)."""
    with open(notebook) as f:
        cell = json.load(f)["cells"][1]
    text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
    return [ln for ln in text.splitlines() if ln.startswith("pip install")]


def check(args):
    workdir = os.path.abspath(args.workdir)
    if os.path.exists(workdir):
        shutil.rmtree(workdir)
    os.makedirs(workdir)
    log = os.path.join(workdir, "log.txt")
    venv = os.path.join(workdir, "venv")
    python = find_python(args.python)
    started = time.time()

    run([python, "-m", "venv", venv], log)
    vpython = os.path.join(venv, "bin", "python")
    pip = [vpython, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    run(pip + [f"tensorflow=={args.tensorflow}", *RUNTIME, *KERNEL], log)
    before = probe(vpython, log)
    if "import_error" in before:
        raise RuntimeError(f"the Colab-like runtime itself does not import: {before}")

    dist = os.path.join(workdir, "dist")
    run([vpython, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, REPO], log)
    (wheel,) = glob.glob(os.path.join(dist, "bitat_keras-*.whl"))
    rundir = os.path.join(workdir, "run")
    os.makedirs(rundir)
    shutil.copy(wheel, rundir)
    notebook = os.path.join(rundir, "quickstart.ipynb")
    shutil.copy(os.path.join(REPO, "examples", "quickstart.ipynb"), notebook)

    env = dict(os.environ, BITAT_NOTEBOOK_SMALL="1", TF_CPP_MIN_LOG_LEVEL="2")
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    for key in ("PYTHONPATH", "KERAS_BACKEND", "BITAT_KERAS_SOURCE", "VIRTUAL_ENV"):
        env.pop(key, None)
    notebook_error = None
    notebook_started = time.time()
    try:
        run([vpython, "-c", RUN_NOTEBOOK, notebook], log, env=env)
    except RuntimeError as error:
        notebook_error = str(error)[-1500:]
    notebook_seconds = time.time() - notebook_started
    after = probe(vpython, log)
    summary = summary_of(notebook)

    changed = {}
    if "distributions" in after:
        for name, version in before["distributions"].items():
            now = after["distributions"].get(name)
            if now != version:
                changed[name] = [version, now]
    added = sorted(set(after.get("distributions", {})) - set(before["distributions"]))
    checks = {
        "tensorflow_version_unchanged": after.get("tensorflow") == before["tensorflow"],
        "cuda_build_flag_unchanged": after.get("built_with_cuda") == before["built_with_cuda"],
        "numpy_still_2": str(after.get("numpy", "0")).split(".")[0] == "2",
        "numpy_unchanged": after.get("numpy") == before["numpy"],
        "tensorflow_jax_pandas_import": "import_error" not in after,
        "no_distribution_replaced": not changed,
        "notebook_ran": notebook_error is None and summary is not None,
        "installed_the_wheel": any(
            os.path.basename(wheel) in line for line in install_lines(notebook)
        ),
    }
    if summary:
        checks["every_binary_layer_is_lce_bconv2d"] = (
            summary["lce_bconv2d_ops"] == summary["binary_layers"] > 0
        )
        checks["parity_within_1e-3"] = summary["parity_relative"] <= 1e-3
    report = {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "python": before["python"],
        "before": {k: v for k, v in before.items() if k != "distributions"},
        "after": {k: v for k, v in after.items() if k != "distributions"},
        "install_cell": install_lines(notebook),
        "added_distributions": added,
        "changed_distributions": changed,
        "notebook_summary": summary,
        "notebook_error": notebook_error,
        "notebook_seconds": round(notebook_seconds, 1),
        "total_seconds": round(time.time() - started, 1),
        "checks": checks,
        "passed": all(checks.values()),
    }
    with open(os.path.join(workdir, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="/tmp/bitat-colab-check")
    parser.add_argument("--python", help="interpreter for the runtime (default: 3.12)")
    parser.add_argument("--tensorflow", default="2.21.0", help="the runtime's TensorFlow")
    args = parser.parse_args(argv)
    report = check(args)
    print(json.dumps(report, indent=2))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
