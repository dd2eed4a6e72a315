"""examples/larq_port.py: larq-style model code runs on Keras 3, converts strictly, matches
LCE's interpreter."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "larq_port.py"


def test_larq_port_example_trains_converts_and_matches_lce(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("larq_port", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "port.tflite"
    report = example.main(["--dataset", "digits", "--epochs", "10", "--out", str(out)])
    assert out.stat().st_size == report["flatbuffer_kib"] * 1024
    assert report["lce_ops"].get("LceBconv2d") == 2  # both QuantConv2D layers
    assert report["parity_max_abs_diff"] < 1e-3
    assert report["test_accuracy"] > 0.3  # 10 classes: well above chance after 10 epochs
    assert len(report["flip_rate_last_epoch"]) == 2  # one rate per binary layer
    printed = capsys.readouterr().out
    assert "Model 'larq_style'" in printed and "compression" in printed
