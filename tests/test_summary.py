"""bk.models.summary against hand-computed counts and the LCE flatbuffer's size."""

import warnings

import keras
import numpy as np
import pytest

import bitat_keras as bk
from bitat_keras.inspect.summary import flatbuffer_estimate


def trained_like(model, seed=0):
    """Random weights and BatchNorm statistics as after training (in place): a fresh
    model's zeros and repeated values are shared or dropped by the converter."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        shape = tuple(weight.shape)
        if "variance" in weight.path:
            values = rng.uniform(0.5, 1.5, shape)
        elif "gamma" in weight.path:
            values = rng.normal(1.0, 0.1, shape)
        else:
            values = rng.normal(0.0, 0.1, shape)
        weight.assign(values.astype("float32"))
    return model


def tiny_bnn():
    """A binarized Conv-BN-ReLU Sequential with about 1 KiB of weights."""
    layers = [keras.Input((8, 8, 1))]
    for _ in range(2):
        layers += [keras.layers.Conv2D(8, 3, padding="same", use_bias=False)]
        layers += [keras.layers.BatchNormalization(), keras.layers.ReLU()]
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)]
    with warnings.catch_warnings():  # no shortcut, ReLU inputs: expected here
        warnings.simplefilter("ignore")
        return trained_like(bk.binarize(keras.Sequential(layers, name="tiny")))


def small_model():
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = bk.layers.BinaryConv2D(16, 3, use_bias=False, name="binary")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = bk.layers.BinaryConv2D(16, 1, input_quantizer=None, name="weights_only")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="head")(x), name="small")


def test_counts_memory_and_macs_match_hand_computed_values():
    lines = []
    stats = bk.models.summary(small_model(), print_fn=lines.append)
    rows = {r["name"]: r for r in stats["layers"]}
    assert list(rows) == ["stem", "binary", "bn", "weights_only", "head"]  # pool: no weights
    # stem: 3*3*4*8 float weights; 8*8*8 outputs x 3*3*4 MACs each.
    assert rows["stem"]["float_params"] == 288 and rows["stem"]["binary_params"] == 0
    assert rows["stem"]["float_macs"] == 8 * 8 * 8 * 36 and rows["stem"]["binary_macs"] == 0
    # binary: 3*3*8*16 one-bit weights; 8*8*16 outputs x 3*3*8 XNOR-popcount MACs.
    assert rows["binary"]["binary_params"] == 1152 and rows["binary"]["float_params"] == 0
    assert rows["binary"]["binary_macs"] == 8 * 8 * 16 * 72 and rows["binary"]["float_macs"] == 0
    assert rows["binary"]["memory_kib"] == pytest.approx(1152 / 8 / 1024)
    # bn: gamma, beta, moving mean and variance, all 32-bit.
    assert rows["bn"]["float_params"] == 64 and rows["bn"]["memory_kib"] == 64 * 4 / 1024
    # weights_only: 1-bit kernel (16*16) but a real input, so its MACs are float; bias 32-bit.
    assert rows["weights_only"]["binary_params"] == 256
    assert rows["weights_only"]["float_params"] == 16
    assert rows["weights_only"]["float_macs"] == 8 * 8 * 16 * 16
    assert rows["weights_only"]["binary_macs"] == 0
    # head: 16*10 + 10.
    assert rows["head"]["float_params"] == 170 and rows["head"]["float_macs"] == 160
    total = stats["total"]
    assert total["binary_params"] == 1408 and total["float_params"] == 288 + 64 + 16 + 170
    memory = (1408 / 8 + 4 * 538) / 1024
    assert total["memory_kib"] == pytest.approx(memory)
    assert stats["float_memory_kib"] == pytest.approx(4 * (1408 + 538) / 1024)
    assert stats["compression"] == pytest.approx(4 * 1946 / 1024 / memory)
    assert lines[0] == "Model 'small'" and any(line.startswith("total") for line in lines)
    assert "compression" in lines[-2]
    assert f"LCE flatbuffer ~{stats['flatbuffer_kib_estimate']:.2f} KiB" in lines[-1]
    assert f"overhead of {stats['flatbuffer_overhead_kib']:.2f} KiB" in lines[-1]


def test_a_float_model_has_no_binary_parameters_and_compression_one():
    fp = bk.models.reactnet_mobilenet((8, 8, 1), 10, width_multiplier=0.25, blocks=[(64, 1)])
    stats = bk.models.summary(fp, print_fn=None)
    assert stats["total"]["binary_params"] == 0 and stats["total"]["binary_macs"] == 0
    assert stats["total"]["binary_params"] + stats["total"]["float_params"] == fp.count_params()
    assert stats["compression"] == pytest.approx(1.0)
    with pytest.raises(TypeError, match="keras.Model"):
        bk.models.summary("model")


def test_memory_agrees_with_the_lce_flatbuffer_within_its_overhead():
    """The demo network's binary version: the summary's memory against the bytes of the
    strict LCE conversion. The flatbuffer adds operator metadata and stores BatchNorm folded
    (fewer floats), so the two agree within a measured margin."""
    bnn = bk.binarize(
        bk.models.reactnet_mobilenet(
            (28, 28, 1), 10, width_multiplier=1.0, blocks=[(64, 1), (128, 2), (128, 1)],
            stem_strides=2,
        )
    )  # fmt: skip
    stats = bk.models.summary(bnn, print_fn=None)
    flatbuffer = bk.convert_keras_model(bnn)
    size_kib = len(flatbuffer) / 1024
    assert stats["total"]["binary_params"] > 0
    assert abs(size_kib - stats["total"]["memory_kib"]) < 0.25 * stats["total"]["memory_kib"]
    trained = trained_like(bnn)
    estimate = bk.models.summary(trained, print_fn=None)["flatbuffer_kib_estimate"]
    assert estimate == pytest.approx(len(bk.convert_keras_model(trained)) / 1024, rel=0.05)


def test_flatbuffer_estimate_bitpacks_binary_kernels_along_32_input_channels():
    def stored(channels):
        inputs = keras.Input((6, 6, channels))
        outputs = bk.layers.BinaryConv2D(16, 3, use_bias=False)(inputs)
        return flatbuffer_estimate(keras.Model(inputs, outputs))[0]

    vectors = 2 * 16 * 4  # the float multiplier and bias per output channel
    assert stored(8) == stored(32) == 16 * 9 * 4 + vectors  # one int32 word per 32 inputs
    assert stored(33) == 16 * 9 * 8 + vectors


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="LCE needs TensorFlow")
def test_a_tiny_models_flatbuffer_is_mostly_overhead_and_the_estimate_says_so():
    model = tiny_bnn()
    stats = bk.models.summary(model, print_fn=None)
    real = len(bk.convert_keras_model(model)) / 1024
    assert stats["total"]["memory_kib"] < 0.4 * real  # parameters alone understate it
    assert stats["flatbuffer_kib_estimate"] == pytest.approx(real, rel=0.2)  # measured +15 %
