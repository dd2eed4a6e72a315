"""`bitat-keras demo` end to end on digits (BiTAT + LCE conversion + parity) and the CLI."""

import json
import shutil
import subprocess

import pytest

from bitat_keras.cli import main as cli


def test_demo_end_to_end_on_digits(tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--dataset",
        "digits",
        "--train-size",
        "1000",
        "--test-size",
        "400",
        "--width",
        "0.5",
        "--fp-epochs",
        "6",
        "--batch-size",
        "64",
        "--groups",
        "16",
        "--output-dir",
        str(out),
        "--plots",
        str(tmp_path / "figures"),
        "--quiet",
    ]
    assert cli.main(args) == 0
    report = json.loads((out / "results.json").read_text())
    printed = capsys.readouterr().out
    assert "BiTAT binary accuracy" in printed and "LceBconv2d ops" in printed
    assert "loop overhead" in printed and "over 8 layers and the joint phase" in printed
    assert 0 < report["seconds_by_kind"]["overhead_share"] < 1
    # A small pre-trained net, 1 epoch per layer: clearly above chance (10 %).
    assert report["fp_accuracy"] > 0.6
    assert report["bitat_accuracy"] > 0.4
    # Every binary layer became an LceBconv2d, and LCE computes what Keras computes.
    assert report["lce_bconv2d_ops"] == report["binary_layers"] == 8
    assert report["parity_relative"] < 1e-3
    assert report["lce_size_bytes"] < report["float_tflite_size_bytes"]
    assert 0 < report["v_parameters"]["ratio"] < 1
    for name in ("fp.keras", "bitat.keras", "bitat.tflite", "results.json"):
        assert (out / name).stat().st_size > 0
    # --plots: every figure save_all draws, as PNG files listed in the report.
    assert len(report["plots"]) >= 5
    for path in report["plots"]:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_unknown_command_and_help(capsys):
    assert cli.main(["train"]) == 2
    assert "unknown command 'train'" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0
    assert cli.main([]) == 2


def test_console_script_is_installed():
    exe = shutil.which("bitat-keras")
    if exe is None:
        pytest.skip("bitat-keras is not on PATH (package not pip-installed)")
    proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout
