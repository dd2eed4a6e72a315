"""Converter inputs: every bad input gets a clear error (the file or the layer, what was
received, what was expected) from the Python API and from `bitat-keras convert`, and nothing
is written to the output path (a file already there stays as it was)."""

import warnings
import zipfile

import keras
import numpy as np
import pytest

from bitat_keras import export as ex
from bitat_keras.cli import main as cli
from bitat_keras.export import files
from bitat_keras.nn.layers import BinaryConv2D

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="LCE conversion needs KERAS_BACKEND=tensorflow",
)

PREVIOUS = b"a flatbuffer from an earlier run"


def tiny(name="tiny", channels=8, batch_norm=False, **conv_kwargs):
    """8x8x1 input, a float stem conv and one BinaryConv2D named 'bconv'."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(channels, 3, padding="same", name="stem")(inputs)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="bn")(x)
    x = BinaryConv2D(8, 3, use_bias=False, name="bconv", **conv_kwargs)(x)
    return keras.Model(inputs, x, name=name)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.keras"
    tiny().save(path)
    return path


def outputs(tmp_path, previous):
    """The output path, holding PREVIOUS when `previous`."""
    out = tmp_path / "out" / "model.tflite"
    out.parent.mkdir()
    if previous:
        out.write_bytes(PREVIOUS)
    return out


def untouched(out, previous):
    """Nothing written: the old file as it was (or none), and no temporary file left."""
    assert sorted(p.name for p in out.parent.iterdir()) == (["model.tflite"] if previous else [])
    return not previous or out.read_bytes() == PREVIOUS


def cli_error(argv, capsys, code=2):
    """Run `bitat-keras convert ARGV`; the one `error:` line it prints."""
    assert cli.main(["convert", *map(str, argv)]) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def both_fail(model_path, out, capsys, error, *needles, previous=True):
    """`convert_file` raises `error` and the CLI prints one error line, both naming
    `needles`, and neither writes anything."""
    with pytest.raises(error) as info:
        ex.convert_file(model_path, out)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    assert untouched(out, previous)
    line = cli_error([model_path, "-o", out], capsys)
    for needle in needles:
        assert needle in line, line
    assert untouched(out, previous)
    return str(info.value)


# --------------------------------------------------------------------------- 1. not a model


def _zip_of_random_bytes(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("random.bin", np.random.default_rng(0).bytes(256))


def _text_file(path):
    path.write_text("this is a text file, not a model\n")


def _saved_layer(path):
    layer = keras.layers.Dense(3, name="lonely_dense")
    layer.build((None, 4))
    keras.saving.save_model(layer, path)  # Keras 3 saves a bare layer too


@pytest.mark.parametrize(
    "make, error, needle",
    [
        (_zip_of_random_bytes, ex.ModelFileError, "holds no config.json"),
        (_text_file, ex.ModelFileError, "not a zip archive (it starts with b'this is "),
        (_saved_layer, ex.ModelFileError, "holds a Dense, not a model"),
        (None, FileNotFoundError, "Model file not found"),
        ("directory", IsADirectoryError, "is a directory; expected a Keras 3 `.keras` file"),
    ],
    ids=["random_zip", "text", "layer", "missing", "directory"],
)
def test_not_a_model_file(tmp_path, capsys, make, error, needle):
    path = tmp_path / "bad.keras"
    if make == "directory":
        path.mkdir()
    elif make is not None:
        make(path)
    out = outputs(tmp_path, previous=True)
    both_fail(path, out, capsys, error, str(path), needle)


def test_not_a_model_object():
    with pytest.raises(TypeError, match="Received the path 'model.keras': convert a file with"):
        ex.convert_keras_model("model.keras")
    with pytest.raises(TypeError, match="must be a keras.Model.*Received: <Dense"):
        ex.convert_keras_model(keras.layers.Dense(3))


# --------------------------------------------------------------------------- 2. truncated


def test_truncated_file(good_file, tmp_path, capsys):
    data = good_file.read_bytes()
    path = tmp_path / "truncated.keras"
    path.write_bytes(data[: len(data) // 2])
    out = outputs(tmp_path, previous=True)
    message = both_fail(path, out, capsys, ex.ModelFileError, str(path), "truncated")
    assert f"({len(data) // 2:,} bytes" in message and "save or copy the model again" in message


def test_damaged_file(good_file, tmp_path, capsys):
    """A complete archive with a flipped byte inside a member: its checksum fails."""
    data = bytearray(good_file.read_bytes())
    with zipfile.ZipFile(good_file) as archive:
        info = archive.getinfo("model.weights.h5")
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    path = tmp_path / "damaged.keras"
    path.write_bytes(bytes(data))
    out = outputs(tmp_path, previous=False)
    both_fail(path, out, capsys, ex.ModelFileError, str(path), "damaged", previous=False)


# --------------------------------------------------------------------------- 3. never trained


def test_untrained_model_warns_and_converts(tmp_path, capsys):
    """A model fresh from its constructor converts exactly: a warning, not an error."""
    model = tiny("fresh", batch_norm=True)
    with pytest.warns(ex.UntrainedModelWarning, match="'fresh' looks never trained: its 1 Batch"):
        data = ex.convert_keras_model(model)
    assert ex.inspect_tflite(data)["ops"]["LceBconv2d"] == 1
    path = tmp_path / "fresh.keras"
    model.save(path)
    out = outputs(tmp_path, previous=True)
    with pytest.warns(ex.UntrainedModelWarning, match="never trained"):
        assert cli.main(["convert", str(path), "-o", str(out), "--samples", "2"]) == 0
    assert out.read_bytes()[4:8] == b"TFL3"
    assert "[OK]" in capsys.readouterr().out


def test_zero_kernel_and_unset_thresholds_warn():
    model = tiny("unset", input_threshold=True)
    layer = model.get_layer("bconv")
    layer.kernel.assign(np.zeros(layer.kernel.shape, "float32"))
    with pytest.warns(ex.UntrainedModelWarning) as caught:
        ex.check_convertible(model)
    (message,) = [str(w.message) for w in caught if w.category is ex.UntrainedModelWarning]
    assert "the kernels of ['bconv'] are all zeros" in message
    assert "the input thresholds of ['bconv'] are all 0, their initial value" in message
    layer.kernel.assign(np.ones(layer.kernel.shape, "float32"))
    layer.threshold.assign(np.full(layer.threshold.shape, 1e-3, "float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert ex.check_convertible(model) == []


def test_nan_weights_are_an_error(tmp_path, capsys):
    model = tiny("diverged")
    kernel = keras.ops.convert_to_numpy(model.get_layer("bconv").kernel).copy()
    kernel[0, 0, 0, 0] = np.nan
    model.get_layer("bconv").kernel.assign(kernel)
    with pytest.raises(ValueError, match="weight 'bconv/kernel' holds 1 NaN"):
        ex.convert_keras_model(model)
    path = tmp_path / "diverged.keras"
    model.save(path)
    out = outputs(tmp_path, previous=True)
    message = both_fail(path, out, capsys, ValueError, "'bconv/kernel'", "Expected finite")
    assert "'diverged' has non-finite weights" in message


# --------------------------------------------------------------------------- 4. unplanned convs


def test_grouped_binary_conv(tmp_path, capsys):
    """8 input channels per group: LCE keeps it float; the strict error comes up front."""
    model = tiny("grouped", channels=16, groups=2)
    with pytest.raises(ValueError, match="'bconv' in model 'grouped' has groups=2 \\(8 input"):
        ex.convert_keras_model(model)
    path = tmp_path / "grouped.keras"
    model.save(path)
    out = outputs(tmp_path, previous=True)
    message = both_fail(path, out, capsys, ValueError, "'bconv'", "groups=2", "--no-strict")
    assert "multiple of 32 input channels per group" in message


def test_grouped_binary_conv_with_32_channels_per_group(tmp_path, capsys):
    """LCE bitpacks it, but only its indirect-BGEMM kernel runs it: an error in strict
    mode, a warning without (and the parity check uses that kernel)."""
    model = tiny("grouped32", channels=64, groups=2)
    with pytest.raises(ValueError, match="only its indirect-BGEMM kernel runs"):
        ex.convert_keras_model(model)
    path = tmp_path / "grouped32.keras"
    model.save(path)
    out = outputs(tmp_path, previous=True)
    both_fail(path, out, capsys, ValueError, "'bconv'", "(32 input channels per group)")
    argv = ["convert", str(path), "-o", str(out), "--no-strict", "--samples", "2"]
    with pytest.warns(ex.ConversionWarning, match="use_indirect_bgemm=True"):
        assert cli.main(argv) == 0
    assert "1 LceBconv2d ops for 1 binary" in capsys.readouterr().out
    assert out.read_bytes()[4:8] == b"TFL3"


def test_channels_first_binary_conv(tmp_path, capsys):
    with pytest.raises(ValueError, match="channels_last' only .*data_format='channels_first'"):
        BinaryConv2D(8, 3, data_format="channels_first")
    # The constructor accepts data_format=None, which Keras resolves to the global
    # image_data_format: a model built by hand under channels_first.
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        inputs = keras.Input((1, 8, 8))
        outputs_ = BinaryConv2D(8, 3, padding="valid", use_bias=False, name="nchw")(inputs)
        model = keras.Model(inputs, outputs_, name="cf")
    finally:
        keras.config.set_image_data_format(previous)
    assert model.get_layer("nchw").data_format == "channels_first"
    with pytest.raises(ValueError, match="BinaryConv2D 'nchw' in model 'cf' has data_format="):
        ex.convert_keras_model(model)
    path = tmp_path / "cf.keras"
    model.save(path)
    out = outputs(tmp_path, previous=True)
    message = both_fail(path, out, capsys, ex.ModelFileError, str(path), "'nchw'", "NHWC")
    assert "data_format='channels_first'; expected 'channels_last'" in message


def test_dilated_binary_conv_converts_exactly(tmp_path, capsys):
    """Not an error: LCE turns a dilated binary conv into an exact LceBconv2d."""
    model = tiny("dilated", dilation_rate=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        data = ex.convert_keras_model(model)
    assert ex.inspect_tflite(data)["ops"]["LceBconv2d"] == 1
    x = np.random.default_rng(0).standard_normal((4, 8, 8, 1)).astype("float32")
    assert ex.verify_tflite(model, data, x) < 1e-5


# --------------------------------------------------------------------------- outputs


def test_output_path_is_the_model_or_a_directory(good_file, tmp_path, capsys):
    before = good_file.read_bytes()
    line = cli_error([good_file, "-o", good_file], capsys)
    assert "it is the model file being converted" in line and good_file.read_bytes() == before
    line = cli_error([good_file, "-o", tmp_path], capsys)
    assert f"Cannot write '{tmp_path}': it is a directory" in line


def test_failed_conversion_writes_nothing(good_file, tmp_path, capsys, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated LCE failure")

    monkeypatch.setattr(files, "convert_keras_model", broken)
    out = outputs(tmp_path, previous=True)
    line = cli_error([good_file, "-o", out], capsys, code=1)
    assert line == "error: conversion failed: simulated LCE failure"
    assert untouched(out, previous=True)


def test_parity_mismatch_writes_nothing(good_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(files, "parity", lambda *args, **kwargs: (1.0, 2.0))
    out = outputs(tmp_path, previous=True)
    float_out = tmp_path / "float.tflite"
    report = ex.convert_file(good_file, out, samples=2, float_output_path=float_out)
    assert report["parity_ok"] is False and report["written"] is False
    assert untouched(out, previous=True) and not float_out.exists()
    line = cli_error([good_file, "-o", out, "--samples", "2"], capsys, code=1)
    assert "relative difference 0.5 > 1e-3); nothing was written to" in line
    assert untouched(out, previous=True)


# --------------------------------------------------------------------------- runtime ops


def test_custom_ops_no_runtime_provides_are_refused():
    """TensorFlow 2.21 lowers exact GELU to a custom ``Erfc`` op that neither TFLite nor LCE
    registers. Here TensorFlow's own converter makes such a flatbuffer (allow_custom_ops)."""
    import tensorflow as tf

    fn = tf.function(lambda x: tf.math.erfc(x), input_signature=[tf.TensorSpec([1, 4])])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()])
    converter.allow_custom_ops = True
    data = converter.convert()
    assert ex.custom_op_names(data) == {"Erfc"}
    model = tiny("gelu_user")
    with pytest.raises(ValueError, match=r"model 'gelu_user' needs the custom op\(s\) \['Erfc'\]"):
        ex.check_runtime_ops(model, data)
    with pytest.warns(ex.ConversionWarning, match="approximate=True"):
        ex.check_runtime_ops(model, data, strict=False)
    lce = ex.convert_keras_model(model)  # LCE's own custom ops are expected
    assert ex.custom_op_names(lce) and ex.custom_op_names(lce) <= ex.LCE_CUSTOM_OPS
