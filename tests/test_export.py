"""Export to larq-compute-engine: conversion, op counting, parity, atomic writes, the CLI."""

import os
import stat
import warnings

import keras
import numpy as np
import pytest

import bitat_keras as bk
from bitat_keras import export as ex
from bitat_keras.cli import main as cli
from bitat_keras.export import convert as ex_convert
from bitat_keras.nn.layers import BinaryConv2D

pytestmark = pytest.mark.skipif(
    keras.config.backend() != "tensorflow",
    reason="LCE conversion needs KERAS_BACKEND=tensorflow",
)

REL_TOL = 1e-3


# --------------------------------------------------------------------------- helpers


def randomize(model, seed=0):
    """Give BatchNorm, LearnableBias and RPReLU non-trivial random values (in place)."""
    rng = np.random.default_rng(seed)
    touched = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape),
                    rng.normal(0.0, 0.5, beta.shape),
                    rng.normal(0.0, 0.5, mean.shape),
                    rng.uniform(0.5, 2.0, var.shape),
                ]
            )
            touched += 1
        elif isinstance(layer, bk.layers.LearnableBias | bk.layers.RPReLU):
            layer.set_weights([rng.normal(0.0, 0.3, w.shape) for w in layer.get_weights()])
            touched += 1
    assert touched, "nothing to randomize"
    return model


def n_binary(model):
    return sum(
        isinstance(layer, BinaryConv2D)
        and layer.input_quantizer is not None
        and layer.kernel_quantizer is not None
        for layer in model.layers
    )


def inputs_for(model, n=4, seed=1):
    shape = tuple(model.inputs[0].shape[1:])
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype("float32")


def relative_parity(model, data, x, **kwargs):
    diff = ex.verify_tflite(model, data, x, **kwargs)
    scale = float(np.max(np.abs(keras.ops.convert_to_numpy(model(x, training=False)))))
    assert scale > 0.1, "degenerate output: the parity check would be vacuous"
    return diff / scale


def small_bnn(input_shape=(16, 16, 3), seed=0):
    """3 ReActNet blocks (stride 1, stride 2, stride 1) at width 0.125: 8 BinaryConv2D."""
    keras.utils.set_random_seed(seed)
    model = bk.models.reactnet_mobilenet(
        input_shape,
        num_classes=5,
        width_multiplier=0.125,
        binary=True,
        blocks=((64, 1), (128, 2), (128, 1)),
    )
    return randomize(model, seed)


def grouped_model():
    """A binary conv that LCE cannot bitpack (8 input channels per group) + a good one."""
    inputs = keras.Input((8, 8, 16))
    x = BinaryConv2D(16, 3, groups=2, use_bias=False, name="grouped_bconv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = BinaryConv2D(16, 3, strides=2, use_bias=False, name="good_bconv")(x)
    return keras.Model(inputs, x, name="grouped")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", params=[(32, 32, 3), (28, 28, 1)], ids=["32x32x3", "28x28x1"])
def reactnet_quarter(request):
    """reactnet_mobilenet at width 0.25, randomized, converted with strict=False."""
    keras.utils.set_random_seed(0)
    model = bk.models.reactnet_mobilenet(
        input_shape=request.param, num_classes=10, width_multiplier=0.25, binary=True
    )
    randomize(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ex.ConversionWarning)
        data = ex.convert_keras_model(model, strict=False)
    return model, data


@pytest.fixture(scope="module")
def reactnet_eighth():
    """reactnet_mobilenet (28x28x1) at width 0.125: every kernel small enough to fold."""
    keras.utils.set_random_seed(0)
    model = bk.models.reactnet_mobilenet((28, 28, 1), 10, width_multiplier=0.125, binary=True)
    return randomize(model, seed=3)


@pytest.fixture(scope="module")
def small_keras_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "small.keras"
    small_bnn().save(path)
    return path


# --------------------------------------------------------------------------- conversion


def test_reactnet_has_stride2_and_same_padding(reactnet_quarter):
    model, _ = reactnet_quarter
    binary = [layer for layer in model.layers if isinstance(layer, BinaryConv2D)]
    assert len(binary) == 31
    assert any(layer.strides == (2, 2) for layer in binary)
    assert all(layer.padding == "same" and layer.pad_values == 1.0 for layer in binary)


def test_reactnet_every_binary_conv_becomes_bconv(reactnet_quarter):
    model, data = reactnet_quarter
    ops = ex.inspect_tflite(data)["ops"]
    assert ops.get("LceBconv2d", 0) == n_binary(model) == 31
    assert ops.get("CONV_2D", 0) == 1  # only the full-precision stem


def test_reactnet_parity(reactnet_quarter):
    model, data = reactnet_quarter
    x = inputs_for(model, n=4)
    assert relative_parity(model, data, x) < REL_TOL


def test_reactnet_parity_indirect_bgemm(reactnet_quarter):
    model, data = reactnet_quarter
    x = inputs_for(model, n=3, seed=7)
    rel = relative_parity(model, data, x, use_indirect_bgemm=True, num_threads=2)
    assert rel < REL_TOL


def test_strict_conversion_all_binary(reactnet_eighth):
    model = reactnet_eighth
    with warnings.catch_warnings():
        warnings.simplefilter("error", ex.ConversionWarning)
        data = ex.convert_keras_model(model)  # strict: raises if any conv stayed float
    info = ex.inspect_tflite(data)
    assert info["ops"]["LceBconv2d"] == n_binary(model) == 31
    assert info["ops"]["CONV_2D"] == 1
    # The op-code table names LceBconv2d once; a byte search would count 1, not 31.
    assert data.count(b"LceBconv2d") == 1
    assert relative_parity(model, data, inputs_for(model, n=3)) < REL_TOL


def test_large_kernel_becomes_bconv():
    inputs = keras.Input((4, 4, 256))
    outputs = BinaryConv2D(256, 3, use_bias=False, name="big")(inputs)
    data = ex.convert_keras_model(keras.Model(inputs, outputs))
    assert ex.inspect_tflite(data)["ops"] == {"LceBconv2d": 1, "LceQuantize": 1}


def test_fallback_route_when_keras_export_fails(monkeypatch):
    model = randomize(grouped_model())

    def broken_export(model, directory):
        raise RuntimeError("simulated export failure")

    monkeypatch.setattr(ex_convert, "_export_with_keras", broken_export)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ex.convert_keras_model(model, strict=False)
    messages = [str(w.message) for w in caught if issubclass(w.category, ex.ConversionWarning)]
    assert any("simulated export failure" in m for m in messages), messages
    assert any("grouped_bconv" in m for m in messages), messages
    ops = ex.inspect_tflite(data)["ops"]
    assert ops["LceBconv2d"] == 1 and ops["CONV_2D"] == 1
    assert relative_parity(model, data, inputs_for(model)) < REL_TOL


def test_sequential_model_converts():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 8)),
            keras.layers.Conv2D(16, 3, padding="same"),
            BinaryConv2D(16, 3, strides=2, use_bias=False),
            keras.layers.BatchNormalization(),
            BinaryConv2D(32, 1, use_bias=False),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    randomize(model)
    data = ex.convert_keras_model(model)
    ops = ex.inspect_tflite(data)["ops"]
    assert ops["LceBconv2d"] == 2
    assert relative_parity(model, data, inputs_for(model)) < REL_TOL


def test_float_binary_conv_raises_in_strict_mode():
    # A plain sign (sign(0) = 0) is no input binarizer LCE recognises: found after conversion.
    inputs = keras.Input((8, 8, 16))
    x = BinaryConv2D(16, 3, input_quantizer=keras.ops.sign, use_bias=False, name="plain_sign")(
        inputs
    )
    model = keras.Model(inputs, BinaryConv2D(16, 3, use_bias=False, name="good_bconv")(x))
    with pytest.raises(ValueError, match="These stayed float: \\['plain_sign'\\]") as info:
        ex.convert_keras_model(model)
    message = str(info.value)
    assert "good_bconv" not in message
    assert "1 of 2 BinaryConv2D" in message
    # A grouped one is refused before any conversion work (tests/test_converter_inputs.py).
    with pytest.raises(ValueError, match="'grouped_bconv' in model 'grouped' has groups=2"):
        ex.convert_keras_model(grouped_model())


def test_float_binary_conv_warns_without_strict():
    model = randomize(grouped_model())
    with pytest.warns(ex.ConversionWarning, match="grouped_bconv"):
        data = ex.convert_keras_model(model, strict=False)
    ops = ex.inspect_tflite(data)["ops"]
    assert ops["LceBconv2d"] == 1 and ops["CONV_2D"] == 1
    assert relative_parity(model, data, inputs_for(model)) < REL_TOL


def test_zero_padding_and_float_input_variants():
    """pad_values=0.0 (SAME) still bitpacks exactly; input_quantizer=None stays float."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((9, 9, 16))
    x = BinaryConv2D(16, 3, strides=2, pad_values=0.0, use_bias=False, name="zero_pad")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = BinaryConv2D(16, 3, input_quantizer=None, use_bias=False, name="real_input")(x)
    model = randomize(keras.Model(inputs, x))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ex.ConversionWarning)
        data = ex.convert_keras_model(model)
    ops = ex.inspect_tflite(data)["ops"]
    assert ops["LceBconv2d"] == 1  # zero_pad
    assert ops["CONV_2D"] == 1  # real_input: binary kernel, real input -> float conv
    assert ex.binary_conv_layers(model) == ["zero_pad"]
    assert relative_parity(model, data, inputs_for(model)) < REL_TOL


def test_model_without_binary_layers_warns():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    expected = "no BinaryConv2D layers; the flatbuffer is float"
    with pytest.warns(ex.ConversionWarning, match=expected):
        data = ex.convert_keras_model(model)
    ops = ex.inspect_tflite(data)["ops"]
    assert "LceBconv2d" not in ops and ops["CONV_2D"] == 1


@pytest.mark.parametrize("bad", ["model.keras", keras.layers.Dense(3), None])
def test_convert_rejects_non_models(bad):
    with pytest.raises(TypeError, match="keras.Model"):
        ex.convert_keras_model(bad)


def test_convert_rejects_unknown_lce_option():
    with pytest.raises(TypeError, match="inference_input_type"):
        ex.convert_keras_model(randomize(grouped_model()), strict=False, quantize=True)


def test_stock_lce_convert_keras_model_functional(reactnet_eighth):
    import larq_compute_engine as lce

    model = reactnet_eighth
    # LCE first tries `model.save(dir, save_format="tf")` (gone in Keras 3), warns, and
    # converts through its graphdef fallback.
    with pytest.warns(UserWarning, match="Saved-model conversion failed"):
        data = lce.convert_keras_model(model)
    assert ex.inspect_tflite(data)["ops"]["LceBconv2d"] == n_binary(model)
    assert relative_parity(model, data, inputs_for(model, n=2)) < REL_TOL


def test_stock_lce_convert_keras_model_fails_on_sequential():
    import larq_compute_engine as lce

    model = keras.Sequential([keras.Input((8, 8, 4)), BinaryConv2D(8, 3)])
    with pytest.warns(UserWarning, match="Saved-model conversion failed"):
        with pytest.raises(AttributeError, match="output_names"):
            lce.convert_keras_model(model)
    assert ex.inspect_tflite(ex.convert_keras_model(model))["ops"]["LceBconv2d"] == 1


# --------------------------------------------------------------------------- float TFLite


def test_convert_float_tflite_and_int8():
    model = small_bnn()
    x = inputs_for(model, n=16)
    data = ex.convert_float_tflite(model)
    ops = ex.inspect_tflite(data)["ops"]
    assert not any(name.startswith("Lce") for name in ops)
    assert ops["CONV_2D"] == 9  # stem + 8 binary convs computed in float
    assert relative_parity(model, data, x[:2]) < REL_TOL  # LCE's interpreter runs it too
    data8 = ex.convert_float_tflite(model, int8=True, representative_data=x)
    assert "QUANTIZE" in ex.inspect_tflite(data8)["ops"]
    with pytest.raises(ValueError, match="representative_data"):
        ex.convert_float_tflite(model, int8=True)


# --------------------------------------------------------------------------- inspect / verify


def test_inspect_tflite_bytes_and_path(tmp_path):
    inputs = keras.Input((6, 6, 4))
    x = BinaryConv2D(8, 3, use_bias=False)(inputs)
    x = BinaryConv2D(8, 3, use_bias=False)(x)
    data = ex.convert_keras_model(keras.Model(inputs, x))
    path = tmp_path / "m.tflite"
    path.write_bytes(data)
    from_bytes, from_path = ex.inspect_tflite(data), ex.inspect_tflite(path)
    assert from_bytes == from_path == ex.inspect_tflite(str(path))
    assert from_bytes["ops"]["LceBconv2d"] == 2
    assert from_bytes["size_bytes"] == len(data)
    assert from_bytes["num_operators"] == sum(from_bytes["ops"].values())
    assert from_bytes["subgraphs"][0]["inputs"] == [[1, 6, 6, 4]]

    # Cross-check with TensorFlow's own schema module through its object API.
    from tensorflow.lite.python import schema_py_generated as tf_schema

    tf_model = tf_schema.ModelT.InitFromObj(tf_schema.Model.GetRootAs(data, 0))
    custom = [
        tf_model.operatorCodes[op.opcodeIndex].customCode for op in tf_model.subgraphs[0].operators
    ]
    assert custom.count(b"LceBconv2d") == 2


def test_inspect_tflite_bad_input(tmp_path):
    with pytest.raises(ValueError, match="TFL3"):
        ex.inspect_tflite(b"definitely not a flatbuffer")
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        ex.inspect_tflite(tmp_path / "missing.tflite")
    with pytest.raises(TypeError, match="bytes"):
        ex.inspect_tflite(12)


def test_verify_tflite_fixed_batch_and_mismatch(tmp_path):
    import larq_compute_engine as lce

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 4))
    x = BinaryConv2D(8, 3, use_bias=False)(inputs)
    model = keras.Model(inputs, keras.layers.BatchNormalization()(x))
    randomize(model)
    # Conversions get batch 1; build a batch-2 flatbuffer through the frozen-function route.
    ex_convert._export_with_tf_function(model, str(tmp_path / "saved"), batch_size=2)
    data = lce.convert_saved_model(str(tmp_path / "saved"))
    info = ex.inspect_tflite(data)
    assert info["subgraphs"][0]["inputs"] == [[2, 6, 6, 4]]
    assert info["ops"]["LceBconv2d"] == 1
    # 5 samples through a batch-2 interpreter: chunks of 2, the last one padded.
    x5 = inputs_for(model, n=5)
    assert relative_parity(model, data, x5) < REL_TOL
    # A different model must not match: the check can fail.
    other = keras.models.clone_model(model)
    randomize(other, seed=9)
    assert ex.verify_tflite(other, data, x5) > 0.1
    with pytest.raises(ValueError, match="shape"):
        ex.verify_tflite(model, data, np.zeros((2, 5, 5, 4), "float32"))


# --------------------------------------------------------------------------- interpreter

NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def test_lce_interpreter_batches_match_single_calls():
    """`LceInterpreter.predict` on 5 samples equals 5 raw one-sample `invoke` calls, and
    both equal Keras; numpy's float32 dtype is left as it was (flags restored)."""
    model = randomize(small_bnn())
    data = ex.convert_keras_model(model)
    interpreter = ex.LceInterpreter(data)
    x = inputs_for(model, n=5)
    batch = interpreter.predict(x)
    single = np.concatenate([interpreter.invoke([x[i : i + 1]])[0] for i in range(5)])
    np.testing.assert_array_equal(batch, single)
    assert batch.std(axis=0).min() > 0  # outputs differ per sample (no zero strides)
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    assert np.max(np.abs(batch - expected)) < REL_TOL * np.max(np.abs(expected))
    assert np.dtype(np.float32).flags == 0
    # The numpy-2 workaround is used exactly when numpy 2 is installed.
    assert interpreter._patch == NUMPY2
    with pytest.raises(ValueError, match="shape"):
        interpreter.predict(np.zeros((2, 3, 3, 3), "float32"))


@pytest.mark.skipif(NUMPY2, reason="numpy 1 only")
def test_numpy1_itemsize_does_nothing_under_numpy_1():
    with ex.interpreter.numpy1_itemsize([np.int8, np.float32]):
        assert np.dtype(np.float32).flags == 0 and np.dtype(np.int8).itemsize == 1


@pytest.mark.skipif(not NUMPY2, reason="numpy 2 only")
def test_numpy1_itemsize_under_numpy_2():
    """Inside the block numpy 1's item-size slot (the low half of numpy 2's flags word)
    holds the item size; after it, the word is restored even when the block raised. 1-byte
    types would spell "holds references" and are refused with the reason."""
    import ctypes

    slot = ctypes.c_int32.from_address(id(np.dtype(np.float32)) + ex.interpreter._FLAGS_OFFSET)
    with pytest.raises(KeyError):
        with ex.interpreter.numpy1_itemsize([np.float32, np.int32]):
            assert slot.value == 4 and np.dtype(np.float32).flags == 4
            raise KeyError
    assert slot.value == 0 and np.dtype(np.float32).flags == 0
    with pytest.raises(ex.LceNumpyError, match="item size 1.*numpy < 2"):
        with ex.interpreter.numpy1_itemsize([np.int8]):
            pass
    assert np.dtype(np.int8).flags == 0


# --------------------------------------------------------------------------- save_flatbuffer


def test_save_flatbuffer_writes(tmp_path):
    path = tmp_path / "out.tflite"
    assert ex.save_flatbuffer(b"abc", path) == str(path)
    assert path.read_bytes() == b"abc"
    ex.save_flatbuffer(bytearray(b"xyz"), str(path))
    assert path.read_bytes() == b"xyz"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tflite"]


def test_save_flatbuffer_missing_directory(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        ex.save_flatbuffer(b"abc", missing / "out.tflite")
    assert not missing.exists()
    with pytest.raises(TypeError, match="bytes"):
        ex.save_flatbuffer("abc", tmp_path / "x.tflite")


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_save_flatbuffer_is_atomic(tmp_path, monkeypatch, failing):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"old contents")

    def boom(*args, **kwargs):
        raise OSError(f"simulated {failing} failure")

    monkeypatch.setattr(os, failing, boom)
    with pytest.raises(OSError, match="simulated"):
        ex.save_flatbuffer(b"new contents" * 1000, path)
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite"]


# --------------------------------------------------------------------------- files and CLI


def test_convert_file_report(small_keras_file, tmp_path):
    out = tmp_path / "small.tflite"
    report = ex.convert_file(small_keras_file, out, samples=4, seed=3)
    assert out.read_bytes()[4:8] == b"TFL3"
    assert report["bconv"] == report["binary_layers"] == 8
    assert report["ops"] == ex.inspect_tflite(out)["ops"]
    assert report["size_bytes"] == out.stat().st_size
    assert report["samples"] == 4 and report["parity_ok"] is True
    assert report["relative_diff"] < REL_TOL
    assert report["max_abs_diff"] == pytest.approx(report["relative_diff"] * report["output_scale"])


def test_cli_main_converts(small_keras_file, tmp_path, capsys):
    out = tmp_path / "cli.tflite"
    float_out = tmp_path / "cli_float.tflite"
    argv = [str(small_keras_file), "-o", str(out), "--samples", "2"]
    assert cli.convert([*argv, "--float-tflite", str(float_out)]) == 0
    text = capsys.readouterr().out
    assert out.exists() and float_out.exists()
    assert "LceBconv2d" in text and "Parity on 2 random inputs" in text and "[OK]" in text
    assert "8 LceBconv2d ops for 8 binary BinaryConv2D layers" in text
    assert float_out.stat().st_size > out.stat().st_size


def test_cli_no_check(small_keras_file, tmp_path, capsys):
    out = tmp_path / "nocheck.tflite"
    assert cli.convert([str(small_keras_file), "-o", str(out), "--no-check"]) == 0
    assert "Parity check: skipped" in capsys.readouterr().out


def test_cli_converts_when_the_interpreter_cannot_run(small_keras_file, tmp_path, capsys):
    """Where LCE's interpreter cannot run (LceNumpyError), the flatbuffer is still written
    and the report says why parity was not checked; the command succeeds."""
    from bitat_keras.export import files

    def unavailable(*args, **kwargs):
        raise ex.LceNumpyError("simulated: the interpreter needs numpy < 2")

    out = tmp_path / "noparity.tflite"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(files, "parity", unavailable)
        report = ex.convert_file(small_keras_file, out, samples=2)
        assert cli.convert([str(small_keras_file), "-o", str(out), "--samples", "2"]) == 0
    assert out.read_bytes()[4:8] == b"TFL3" and report["bconv"] == 8
    assert report["parity_ok"] is None and "numpy < 2" in report["parity_error"]
    assert "Parity check: not run: simulated" in capsys.readouterr().out


def _error_line(capsys):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_missing_input(tmp_path, capsys):
    missing = tmp_path / "nope.keras"
    assert cli.convert([str(missing), "-o", str(tmp_path / "x.tflite")]) == 2
    line = _error_line(capsys)
    assert "not found" in line and "nope.keras" in line


def test_cli_missing_output_dir(small_keras_file, tmp_path, capsys):
    out = tmp_path / "missing_dir" / "x.tflite"
    assert cli.convert([str(small_keras_file), "-o", str(out)]) == 2
    assert "missing_dir" in _error_line(capsys) and not out.parent.exists()


def test_cli_refuses_unsafe_lambda_model(tmp_path, capsys):
    inputs = keras.Input((4, 4, 2))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    out = tmp_path / "lambda.tflite"
    assert cli.convert([str(path), "-o", str(out)]) == 2
    line = _error_line(capsys)
    assert "safe_mode=False" in line and "Refusing" in line
    assert not out.exists()
    with pytest.raises(ex.UnsafeModelError):
        ex.convert_file(path, out)


def test_cli_strict_failure_and_no_strict(tmp_path, capsys):
    path = tmp_path / "grouped.keras"
    randomize(grouped_model()).save(path)
    out = tmp_path / "grouped.tflite"
    assert cli.convert([str(path), "-o", str(out), "--samples", "2"]) == 2
    assert "grouped_bconv" in _error_line(capsys)
    assert not out.exists()
    with pytest.warns(ex.ConversionWarning, match="grouped_bconv"):
        assert cli.convert([str(path), "-o", str(out), "--no-strict", "--samples", "2"]) == 0
    assert "1 LceBconv2d ops for 2 binary" in capsys.readouterr().out


def test_cli_rejects_non_keras_file_and_bad_args(tmp_path, capsys):
    path = tmp_path / "model.h5"
    path.write_bytes(b"\x89HDF")
    assert cli.convert([str(path), "-o", str(tmp_path / "x.tflite")]) == 2
    assert ".keras" in _error_line(capsys)
    assert cli.convert([]) == 2  # argparse usage error
    assert cli.convert(["--help"]) == 0
    assert "MODEL.keras" in capsys.readouterr().out


def test_rprelu_converts_to_one_prelu_op_between_binary_convs():
    """RPReLU is written in the form TensorFlow's converter fuses: one PRELU op (x - gamma
    folded into the binary conv before it, + zeta one ADD), not five elementwise ops."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 16))
    x = BinaryConv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = bk.layers.RPReLU()(x)
    model = keras.Model(inputs, BinaryConv2D(16, 3, padding="same", use_bias=False)(x))
    randomize(model)
    data = ex.convert_keras_model(model)
    operators = ex.inspect_tflite(data)["subgraphs"][0]["operators"]
    assert operators == ["LceQuantize", "LceBconv2d", "PRELU", "ADD", "LceQuantize", "LceBconv2d"]
    assert relative_parity(model, data, inputs_for(model)) < REL_TOL
