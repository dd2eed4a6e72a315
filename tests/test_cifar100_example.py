"""examples/cifar100_mobilenet.py: the paper's CIFAR-100 run, end to end on tfds mock data."""

import importlib.util
import json
import pathlib
import re

import keras
import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")
import tensorflow_datasets.testing  # noqa: E402, F401 - tfds.testing must be imported explicitly

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "examples" / "cifar100_mobilenet.py"

# The paper's appendix 7.1 (CIFAR-100), written out here as the oracle: Adam, learning rate
# 3e-4 for quantization and fine-tuning, batch 800, 40 + 40 epochs per layer, lambda 100,
# gamma 1e-5, k = 256.
PAPER_7_1 = {
    "lam": 100.0,
    "gamma": 1e-5,
    "groups": 256,
    "learning_rate": 3e-4,
    "finetune_learning_rate": 3e-4,
    "batch_size": 800,
    "epochs_per_layer": 40,
    "finetune_epochs": 40,
}

TINY = [
    "--width",
    "0.25",
    "--blocks",
    "1",  # block 1 of MobileNetV1: a 3x3 conv and two 1x1 convs, i.e. 3 binary layers
    "--fp-epochs",
    "1",
    "--fp-batch-size",
    "16",
    "--epochs-per-layer",
    "1",
    "--finetune-epochs",
    "0",  # three phases in all: the end-to-end test stays well under a minute
    "--batch-size",
    "16",
    "--groups",
    "8",
]


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("cifar100_mobilenet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_are_the_papers(example, capsys):
    args = example.build_parser().parse_args([])
    for name, value in PAPER_7_1.items():
        assert getattr(args, name) == value, name
    config = example.bitat_config(args)
    assert config == example.bk.BiTATConfig.paper()  # exactly the paper's settings
    for name, value in PAPER_7_1.items():
        assert getattr(config, name) == value, name
    assert config.transform == "aggregated"
    # The full network: all 13 MobileNetV1 blocks, width 1, all the data.
    assert (args.width, args.blocks, args.train_limit, args.test_limit) == (1.0, 13, None, None)
    assert (args.fp_epochs, args.fp_batch_size, args.fp_learning_rate) == (200, 128, 0.1)

    with pytest.raises(SystemExit) as info:
        example.main(["--help"])
    assert info.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    for flag, shown in [
        ("--lam", "100.0"),
        ("--gamma", "1e-05"),
        ("--groups", "256"),
        ("--learning-rate", "0.0003"),
        ("--finetune-learning-rate", "0.0003"),
        ("--batch-size", "800"),
        ("--epochs-per-layer", "40"),
        ("--finetune-epochs", "40"),
    ]:
        # "--flag METAVAR help text (default: X)", with no other option in between
        default = rf"\(default: {re.escape(shown)}\)"
        entry = rf"(?<![\w-]){re.escape(flag)} [A-Z_]+ (?:(?! --).)*?{default}"
        assert re.search(entry, help_text), flag


def test_arguments_reach_the_config(example):
    argv = ["--lam", "5", "--gamma", "0", "--groups", "16", "--learning-rate", "1e-3"]
    argv += ["--finetune-learning-rate", "2e-3", "--epochs-per-layer", "2"]
    argv += ["--finetune-epochs", "3", "--batch-size", "64", "--transform", "intra"]
    config = example.bitat_config(example.build_parser().parse_args([*argv, "--seed", "7"]))
    assert (config.lam, config.gamma, config.groups) == (5.0, 0.0, 16)
    assert (config.learning_rate, config.finetune_learning_rate) == (1e-3, 2e-3)
    assert (config.epochs_per_layer, config.finetune_epochs) == (2, 3)
    assert (config.batch_size, config.transform, config.seed) == (64, "intra", 7)


def test_end_to_end_on_mock_cifar100(example, tmp_path, capsys):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    argv = [*TINY, "--out", str(out), "--checkpoint-dir", str(ckpt)]
    with tfds.testing.mock_data(num_examples=48):
        # Mock data has the real features: 32x32x3 uint8 images, labels in [0, 100).
        x, y = next(iter(example.load_data(example.build_parser().parse_args(argv), 48, "test")))
        assert x.shape == (48, 32, 32, 3) and ((0 <= y.numpy()) & (y.numpy() < 100)).all()
        assert example.main(argv) == 0
        first = capsys.readouterr().out

        report = json.loads((out / "results.json").read_text())
        for name in ("fp.keras", "bitat.keras", "bitat.tflite", "fp_float.tflite"):
            assert (out / name).stat().st_size > 0, name
        assert report["dataset"] == "cifar100" and report["num_classes"] == 100
        assert report["train_examples"] == report["test_examples"] == 48
        assert report["input_shape"] == [32, 32, 3]
        assert report["binary_layers"] == 3
        assert report["lce_bconv2d_ops"] == report["binary_layers"]
        assert report["lce_ops"]["LceBconv2d"] == 3
        assert report["parity_relative"] < 1e-3
        for key in ("fp_accuracy", "bitat_accuracy"):
            assert 0.0 <= report[key] <= 1.0
        assert report["config"]["lam"] == 100.0 and report["config"]["batch_size"] == 16
        phases = [(h["layer"], h["phase"], h["epochs"]) for h in report["history"]]
        assert phases == [
            ("block1_conv3x3", "quantize", 1),
            ("block1_conv1x1_a", "quantize", 1),
            ("block1_conv1x1_b", "quantize", 1),
        ]
        assert all(0.0 <= h["val_accuracy"] <= 1.0 for h in report["history"])
        assert report["fp_train_seconds"] > 0 and "trained for 1 epochs" in report["fp_source"]
        assert "[BiTAT] layer 1/3 'block1_conv3x3': quantize, 1 epochs" in first
        assert "BiTAT binary accuracy" in first and "LceBconv2d ops" in first
        assert "3 of 3 binary layers" in first and "paper 68.36 %" in first

        # The saved binary model is the one evaluated: it scores the reported accuracy.
        bnn = keras.saving.load_model(out / "bitat.keras", compile=False)
        assert len(example.binary_conv_layers(bnn)) == 3
        predicted = np.argmax(bnn.predict(np.asarray(x), verbose=0), axis=-1)
        assert np.mean(predicted == y.numpy()) == pytest.approx(report["bitat_accuracy"])

        # Same command again: the FP model and every BiTAT layer come from the checkpoint.
        again = tmp_path / "again"
        argv2 = [*TINY, "--out", str(again), "--checkpoint-dir", str(ckpt), "--no-convert"]
        assert example.main(argv2) == 0
        second = capsys.readouterr().out
        resumed = json.loads((again / "results.json").read_text())
    assert "resumed from" in resumed["fp_source"] and resumed["fp_train_seconds"] == 0.0
    assert "resuming from" in second and "after layer 3/3" in second
    assert resumed["fp_accuracy"] == report["fp_accuracy"]
    assert resumed["bitat_accuracy"] == report["bitat_accuracy"]
    assert resumed["history"] == report["history"]
    assert "lce_size_bytes" not in resumed and not (again / "bitat.tflite").exists()
    x_check = np.asarray(x)[:4]
    reloaded = keras.saving.load_model(again / "bitat.keras", compile=False)
    np.testing.assert_allclose(
        reloaded.predict(x_check, verbose=0), bnn.predict(x_check, verbose=0)
    )


def test_fp_pretraining_resumes_after_the_last_epoch(example, tmp_path):
    class Killed(Exception):
        pass

    class KillAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Killed

    backup = tmp_path / "fp_backup"
    kwargs = dict(lr=0.1, momentum=0.9, weight_decay=5e-3, backup_dir=str(backup), verbose=0)
    with tfds.testing.mock_data(num_examples=32):
        train = example.load_data(example.build_parser().parse_args([]), 16, "train")
        killed = example.build_model(0.25, 1)
        with pytest.raises(Killed):
            example.pretrain(killed, train, 2, callbacks=[KillAfterFirstEpoch()], **kwargs)
        assert int(killed.optimizer.iterations) == 2 and backup.is_dir()
        resumed = example.build_model(0.25, 1)
        example.pretrain(resumed, train, 2, **kwargs)
    # The restarted run restored the weights and the optimizer (the cosine schedule goes on)
    # and trained only the second epoch: 2 + 2 steps in all; the backup is removed at the end.
    assert int(resumed.optimizer.iterations) == 4
    assert not backup.exists()


def test_checkpoint_from_other_settings_is_refused(example, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    settings = {"width": 0.5, "blocks": 1}
    (ckpt / example.FP_SETTINGS).write_text(json.dumps(settings))
    with tfds.testing.mock_data(num_examples=8):
        with pytest.raises(ValueError, match="other full-precision settings"):
            example.main([*TINY, "--out", str(tmp_path / "o"), "--checkpoint-dir", str(ckpt)])
    assert not (tmp_path / "o" / "fp.keras").exists()


def test_cifar100_unavailable_offline_is_a_clear_error(example, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'www.cs.toronto.edu'")

    monkeypatch.setattr(tfds, "load", offline)
    assert example.main([*TINY, "--out", str(tmp_path / "o"), "--data-dir", "/no/tfds"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: CIFAR-100 is not available offline.")
    assert "--data-dir" in err and "internet" in err
    assert "ConnectionError: Failed to resolve" in err  # tfds' own error is kept
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "flag,value,message",
    [("--blocks", "14", r"--blocks must be in \[1, 13\]"), ("--train-limit", "0", "must be >= 1")],
)
def test_bad_arguments(example, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as info:
        example.main([flag, value, "--out", str(tmp_path / "o")])
    assert info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()  # refused before doing anything
