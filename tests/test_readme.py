"""The README as a new user reads it: short, its paths exist, its results come from the
benchmark JSON, its Python runs (at small sizes) and its device commands are the library's."""

import os
import re
import sys

import keras
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import report  # noqa: E402  (benchmarks/report.py)


def readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", readme(), flags=re.S)


def test_readme_is_at_most_200_lines():
    assert len(readme().splitlines()) <= 200


def test_every_path_the_readme_names_exists():
    text = readme()
    links = [p for p in re.findall(r"\]\(([^)#]+)\)", text) if "://" not in p]
    roots = ("docs/", "benchmarks/", "examples/", "tools/", "tests/", "bitat_keras/")
    ticked = [p for p in re.findall(r"`([\w./-]+)`", text) if p.startswith(roots)]
    scripts = re.findall(r"python ([\w./-]+\.py)", text)  # commands the README gives
    modules = re.findall(r"`(\w+/\w+\.py)`", text)  # the paper table: floor/module.py
    assert links and scripts and modules
    ticked += scripts
    for path in links + ticked:
        assert os.path.exists(os.path.join(ROOT, path.split()[0])), path
    for module in modules:
        assert os.path.exists(os.path.join(ROOT, "bitat_keras", module)), module


def test_results_tables_are_generated_from_the_json():
    assert report.readme_block(readme()) == report.render()


def test_results_table_numbers_match_the_json():
    # an independent reading of one cell per preset: BiTAT's mean test accuracy
    for preset, _ in report.PRESETS:
        seeds = report.load(preset)["rows"]["bitat_aggregated"]["per_seed"].values()
        mean = 100 * sum(s["accuracy"] for s in seeds) / len(seeds)
        line = next(line for line in readme().splitlines() if f"(`{preset}`)" in line)
        assert f"{mean:.2f}" in line.split("|")[6]


def test_deploy_commands_are_what_the_library_prints():
    from bitat_keras.export import lce_benchmark_commands

    (shell,) = [block for block in code_blocks("bash") if "raspberrypi" in block]
    printed = lce_benchmark_commands("bnn.tflite", threads=[4])[0]
    assert shell.strip() == "\n".join(printed.splitlines()[1:])


# The quick start at small sizes: (README text, what the test runs instead).
SMALL = {
    "limit=20000)": "limit=2048)",
    "limit=2000)": "limit=64)",
    "epochs=10,": "epochs=5,",
    "epochs=20,": "epochs=1,",
}


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="export needs TensorFlow")
def test_quick_start_runs_as_written_at_small_sizes(capsys):
    (code,) = [block for block in code_blocks("python") if "keras.applications" in block]
    for text, small in SMALL.items():
        assert text in code, text
        code = code.replace(text, small)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    out = capsys.readouterr().out
    assert "binary + threshold" in out  # the plan: MobileNet's pointwise convs follow ReLU6
    assert "'LceBconv2d': 13" in out
    assert scope["seconds"] > 0
