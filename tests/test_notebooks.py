"""The example notebooks: their structure, and each one executed end to end in small mode.

Executed with nbclient in a fresh ``python3`` kernel with ``BITAT_NOTEBOOK_SMALL=1``;
CIFAR-100 is replaced by tensorflow-datasets' mock data (``BITAT_NOTEBOOK_TFDS_MOCK``) since
the tests run offline. Each notebook's last cell prints ``SUMMARY {json}``, checked here.
"""

import importlib.util
import json
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = REPO_ROOT / "examples"
NOTEBOOKS = ("quickstart.ipynb", "cifar100_mobilenet.ipynb", "deploy.ipynb")
PIP = ["-m", "pip", "install", "-q"]


def _read(name):
    return nbformat.read(EXAMPLES / name, as_version=4)


def _tagged(nb, tag):
    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def _stdout(cell):
    return "".join(
        o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
    )


def _summary(nb):
    lines = [ln for ln in _stdout(_tagged(nb, "summary")).splitlines() if ln.startswith("SUMMARY ")]
    assert len(lines) == 1, _stdout(_tagged(nb, "summary"))
    return json.loads(lines[0][len("SUMMARY ") :])


def execute(name, workdir, **extra_env):
    """Run notebook ``name`` in a fresh kernel whose working directory is ``workdir``."""
    nb = _read(name)
    env = dict(os.environ, BITAT_NOTEBOOK_SMALL="1", TF_CPP_MIN_LOG_LEVEL="2", **extra_env)
    # The kernel imports bitat_keras from this checkout (the install cell then skips pip).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("KERAS_BACKEND", None)  # the notebooks convert with LCE: TensorFlow backend
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600, allow_errors=False)
    client.execute(cwd=str(workdir), env=env)
    return nb


# ------------------------------------------------------------------------------------------
# Structure (fast).


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_structure(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    # Stored without outputs.
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    # First cell: the title, and how to open the notebook in Colab (an upload: no badge or
    # address that points to a repository that may not exist).
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "File → Upload notebook" in first.source and "python -m build --wheel" in first.source
    assert "github.com" not in "".join(c.source for c in nb.cells)
    # Then the install cell, the same in every notebook, with no `!` shell magic (which a
    # plain Python kernel run by nbclient would not accept).
    install = nb.cells[1]
    assert install.cell_type == "code"
    assert install.source == _read(NOTEBOOKS[0]).cells[1].source
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert not any(line.lstrip().startswith(("!", "%")) for src in code for line in src.split("\n"))
    # One settings cell, near the top, reading the small-mode switch.
    settings = _tagged(nb, "settings")
    assert nb.cells.index(settings) <= 4
    assert 'os.environ.get("BITAT_NOTEBOOK_SMALL") == "1"' in settings.source
    _tagged(nb, "summary")


def _install_calls(monkeypatch, tmp_path, missing=(), env=None):
    """Run the install cell in ``tmp_path`` with ``missing`` modules hidden and
    subprocess.run recorded; return the pip arguments of each call."""
    import subprocess
    import sys

    calls = []
    monkeypatch.setattr(subprocess, "run", lambda args, **k: calls.append((args, k)))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda mod, *a: None if mod in missing else real_find_spec(mod, *a),
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BITAT_KERAS_SOURCE", raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    exec(compile(_read(NOTEBOOKS[0]).cells[1].source, "install", "exec"), {})
    for args, kwargs in calls:
        assert args[: len(PIP) + 1] == [sys.executable, *PIP] and kwargs == {"check": True}
    return [args[len(PIP) + 1 :] for args, _ in calls]


def test_install_cell_chooses_the_source(monkeypatch, tmp_path):
    """pip only when bitat_keras is not importable; then BITAT_KERAS_SOURCE, else the newest
    wheel beside the notebook, else the package name; TensorFlow only where none is
    installed (so a runtime's own TensorFlow is never replaced)."""
    assert _install_calls(monkeypatch, tmp_path) == []
    hidden = ("bitat_keras",)
    assert _install_calls(monkeypatch, tmp_path, hidden) == [["bitat-keras"]]
    old = tmp_path / "bitat_keras-0.1.0-py3-none-any.whl"
    new = tmp_path / "bitat_keras-0.2.0-py3-none-any.whl"
    old.write_bytes(b"")
    new.write_bytes(b"")
    os.utime(old, (1, 1))
    assert _install_calls(monkeypatch, tmp_path, hidden) == [[new.name]]
    source = "git+https://example.org/me/bitat-keras"
    env = {"BITAT_KERAS_SOURCE": source}
    assert _install_calls(monkeypatch, tmp_path, hidden, env) == [[source]]
    no_tf = ("bitat_keras", "tensorflow")
    assert _install_calls(monkeypatch, tmp_path, no_tf, env) == [[source, "tensorflow>=2.16.2"]]


# ------------------------------------------------------------------------------------------
# Execution (about a minute each on 2 CPU cores).


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture(scope="module")
def quickstart(workdir):
    return execute("quickstart.ipynb", workdir)


def test_quickstart_runs(quickstart, workdir):
    summary = _summary(quickstart)
    # One MobileNet block that doubles the width: a 3x3 conv and two 1x1 convs are binary.
    assert summary["binary_layers"] == 3
    assert summary["lce_bconv2d_ops"] == summary["binary_layers"]
    assert summary["parity_relative"] < 1e-3
    # 512 Fashion-MNIST images, 8 short epochs: far from converged, but well above chance
    # (10 %); 48 % when measured.
    assert 0.25 < summary["fp_accuracy"] <= 1.0
    assert 0.0 <= summary["bitat_accuracy"] <= 1.0
    out = workdir / "bitat_quickstart"
    for name in ("fp.keras", "bitat.keras", "bitat.tflite"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "bitat.tflite").stat().st_size == summary["lce_size_bytes"]


def test_cifar100_notebook_runs_on_mock_data(workdir):
    nb = execute("cifar100_mobilenet.ipynb", workdir, BITAT_NOTEBOOK_TFDS_MOCK="64")
    settings_output = _stdout(_tagged(nb, "settings"))
    assert "TEST MODE: CIFAR-100 replaced by tensorflow-datasets mock data" in settings_output
    assert "preset small" in settings_output
    summary = _summary(nb)
    assert summary["preset"] == "small"
    assert summary["binary_layers"] == 3
    assert summary["lce_bconv2d_ops"] == summary["binary_layers"]
    assert summary["parity_relative"] < 1e-3
    assert summary["paper"] == {"full_precision": 68.08, "reactnet_a": 65.51, "bitat": 68.36}
    for key in ("fp_accuracy", "bitat_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    out = workdir / "bitat_cifar100"
    assert (out / "bitat.tflite").stat().st_size == summary["lce_size_bytes"]
    assert (out / "checkpoints_small" / "fp.keras").is_file()  # the resume point
    assert (out / "checkpoints_small" / "bitat" / "state.json").is_file()


def test_deploy_notebook_runs_on_the_quickstart_model(quickstart, workdir):
    nb = execute("deploy.ipynb", workdir)
    summary = _summary(nb)
    assert summary["source"] == "bitat_quickstart/bitat.keras"  # quickstart's trained model
    assert summary["binary_layers"] == 3 == summary["lce_bconv2d_ops"]
    assert summary["ops"]["LceBconv2d"] == 3
    assert summary["parity_relative"] < 1e-3
    assert summary["lce_predictions"] == summary["keras_predictions"]
    assert len(summary["lce_predictions"]) == 4 and summary["latency_ms"] > 0
    tflite = pathlib.Path(summary["tflite_path"])
    assert tflite.stat().st_size == summary["size_bytes"]
    # Oracle: the printed commands are exactly benchmarks/lce_benchmark_command.py's.
    spec = importlib.util.spec_from_file_location(
        "lce_benchmark_command", REPO_ROOT / "benchmarks" / "lce_benchmark_command.py"
    )
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    expected = benchmark.commands(str(tflite), [1, 4])
    assert summary["benchmark_commands"] == expected
    printed = _stdout(_tagged(nb, "benchmark"))
    assert "--num_threads=4" in printed and f"--graph=/data/local/tmp/{tflite.name}" in printed
