"""The benchmark script runs end to end on its miniature preset (so it cannot rot)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_paper_table_mini_preset_writes_json_markdown_and_plot(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "paper_table.py"),
            "--preset",
            "mini",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "mini.json").read_text())
    rows = report["rows"]
    for name in (
        "full_precision",
        "naive_ste",
        "reactnet",
        "bitat_none",
        "bitat_intra",
        "bitat_cross",
        "bitat_filter",
        "bitat_aggregated",
    ):
        assert 0.0 <= rows[name]["accuracy_mean"] <= 1.0
        assert rows[name]["seconds_mean"] > 0
    assert (
        rows["bitat_aggregated"]["v_parameters"]["used"]
        < rows["bitat_cross"]["v_parameters"]["used"]
    )
    deploy = report["deployment"]
    assert deploy["lce_bconv2d_ops"] == deploy["binary_layers"] == 3
    assert deploy["latency_ms"]["lce_indirect_bgemm_1t"] > 0
    assert "| bitat_aggregated |" in (tmp_path / "mini.md").read_text()
    assert (tmp_path / "mini_accuracy_vs_cost.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "total, layers, expected", [(8, 8, (1, 0)), (16, 8, (1, 1)), (32, 8, (2, 2)), (15, 13, (1, 0))]
)
def test_bitat_schedule_fits_the_epoch_budget(total, layers, expected):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from paper_table import bitat_schedule, epochs_seen

    e, f = bitat_schedule(total, layers)
    assert (e, f) == expected
    assert epochs_seen(e, f, layers) <= max(total, layers)


def test_lce_benchmark_command_prints_pi_and_android_commands(capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from lce_benchmark_command import main

    assert main(["model.tflite", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "lce_benchmark_model --graph=" in out and "adb shell" in out and "--num_threads=1" in out


def test_deployment_script_reports_sizes_ops_and_latency_of_a_preset_network(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import deployment

    report = deployment.run("mini", str(tmp_path), runs=3)
    d = report["deployment"]
    assert d["lce_bconv2d_ops"] == d["binary_layers"] == 3
    assert d["parity_max_abs_diff"] < 1e-3
    assert d["lce_over_float_size"] == d["lce_size_bytes"] / d["float_tflite_size_bytes"]
    assert all(v > 0 for v in d["latency_ms"].values())
    assert set(report["goals"]) == {
        "lce_at_most_1_20_of_float_size",
        "lce_at_most_0.5x_float_latency_1t",
    }
    assert "| lce_indirect_bgemm |" in (tmp_path / "deployment_mini.md").read_text()


def test_bitat_sweep_runs_variants_against_the_references(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bitat_sweep

    report = bitat_sweep.run("mini", str(tmp_path), budget=1, variants=["aggregated_lam1_sign"])
    rows = report["rows"]
    assert set(rows) == {"full_precision", "naive_ste_1x", "reactnet_1x", "aggregated_lam1_sign"}
    row = rows["aggregated_lam1_sign"]
    assert row["config"] == {
        "transform": "aggregated",
        "activations_first_epochs": 0,
        "lam": 1.0,
        "penalty_gradient": "sign",
    }
    # One validation accuracy per quantize phase of the 3 binary layers (1x: no fine-tune).
    assert [t["phase"] for t in row["trace"]] == ["quantize"] * 3
    assert all(0.0 <= t["val_accuracy"] <= 1.0 for t in row["trace"])
    assert "| aggregated_lam1_sign |" in (tmp_path / "sweep_mini.md").read_text()
