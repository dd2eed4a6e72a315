"""The package's metadata and dependencies, and (slow) the Colab-like runtime check.

Dependencies must be ranges that leave a runtime's own TensorFlow and numpy alone; the
exact versions CI uses live in constraints.txt. `tools/colab_check.py` installs the built
wheel into a Colab-like environment and runs the quickstart notebook there.
"""

import importlib.metadata
import json
import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

import bitat_keras as bk

REPO = pathlib.Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirement_name(requirement):
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower()


def test_version_is_the_installed_one():
    assert re.fullmatch(r"\d+\.\d+\.\d+", bk.__version__)
    assert importlib.metadata.version("bitat-keras") == bk.__version__
    assert f"## {bk.__version__} " in (REPO / "CHANGELOG.md").read_text()


def test_license_metadata():
    assert PYPROJECT["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert PYPROJECT["classifiers"] and PYPROJECT["keywords"]


def test_dependencies_are_ranges_without_tensorflow():
    """No exact pins (the one exception: ruff, whose output changes between releases), no
    TensorFlow in the core dependencies (`tensorflow` and `tensorflow-cpu` are two
    distributions of one package: either would install beside the other), and no pins of
    TensorFlow's own dependencies."""
    core = PYPROJECT["dependencies"]
    extras = PYPROJECT["optional-dependencies"]
    names = {_requirement_name(r) for r in core}
    assert not names & {"tensorflow", "tensorflow-cpu", "ml-dtypes", "protobuf", "jaxlib"}
    assert {"keras", "numpy", "larq-compute-engine"} <= names
    for requirement in core + [r for reqs in extras.values() for r in reqs]:
        assert "==" not in requirement or requirement.startswith("ruff=="), requirement
        assert "<" not in requirement, f"an upper bound downgrades newer runtimes: {requirement}"
    assert extras["tensorflow"] == ["tensorflow>=2.16.2"]
    assert extras["tensorflow-cpu"] == ["tensorflow-cpu>=2.16.2"]


def _pins(name):
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            package, version = line.split("==")
            pins[package.lower()] = version
    return pins


@pytest.mark.parametrize("name", ["constraints.txt", "constraints-lowest.txt"])
def test_constraints_pin_every_direct_dependency(name):
    """CI's two sets: the current stack (TensorFlow 2.21, numpy 2) for the whole suite, and
    the lowest versions pyproject.toml accepts."""
    pins = _pins(name)
    extras = PYPROJECT["optional-dependencies"]
    direct = PYPROJECT["dependencies"] + extras["test"]
    for requirement in direct:
        assert _requirement_name(requirement) in pins, requirement
    if name == "constraints.txt":
        assert pins["numpy"].startswith("2.") and pins["tensorflow-cpu"] == "2.21.0"
    else:  # the lower bounds themselves
        assert pins["numpy"] == "1.26.4" and pins["tensorflow-cpu"] == "2.16.2"
        assert extras["tensorflow-cpu"] == [f"tensorflow-cpu>={pins['tensorflow-cpu']}"]
        assert f"keras>={'.'.join(pins['keras'].split('.')[:2])}" in PYPROJECT["dependencies"]


def test_missing_backend_is_a_clear_error():
    """Without TensorFlow (an extra), importing the package says what to install."""
    code = "import sys; sys.modules['tensorflow'] = None; import bitat_keras"
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode != 0
    assert 'pip install "bitat-keras[tensorflow]"' in done.stderr


@pytest.mark.slow
def test_colab_like_runtime(tmp_path):
    """Python 3.12 (where available), the `tensorflow` 2.21 GPU build, numpy 2, jax and
    pandas; the wheel installed by the quickstart notebook's own install cell; the
    notebook in small mode end to end. Needs the package index; about 10 minutes."""
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "colab_check.py"), "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"], json.dumps(report, indent=2) + done.stderr[-2000:]
    assert report["before"]["built_with_cuda"] and report["after"]["numpy"].startswith("2.")
