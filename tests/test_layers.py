import keras
import numpy as np
import pytest

import bitat_keras as bk
from bitat_keras.nn.layers import BinaryConv2D, LearnableBias, RPReLU, same_paddings


def numpy_conv_valid(x, w, stride):
    """Direct NHWC convolution oracle (VALID)."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    out = np.zeros((n, oh, ow, o))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j, :] = np.tensordot(patch, w, axes=([1, 2, 3], [0, 1, 2]))
    return out


def numpy_binary_conv(x, w, stride, pad_value=1.0):
    xb = np.where(x >= 0, 1.0, -1.0)
    pads = [same_paddings(xb.shape[a], w.shape[a - 1], stride) for a in (1, 2)]
    xb = np.pad(xb, [(0, 0), pads[0], pads[1], (0, 0)], constant_values=pad_value)
    alpha = np.abs(w).mean(axis=(0, 1, 2))
    return numpy_conv_valid(xb, np.where(w >= 0, 1.0, -1.0) * alpha, stride)


@pytest.mark.parametrize("size, kernel, stride", [(7, 3, 1), (8, 3, 2), (7, 3, 2), (6, 1, 1)])
def test_binary_conv_matches_numpy_oracle(size, kernel, stride):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, size, size, 5)).astype("float32")
    layer = BinaryConv2D(4, kernel, strides=stride, use_bias=False)
    y = keras.ops.convert_to_numpy(layer(x))
    w = keras.ops.convert_to_numpy(layer.kernel)
    np.testing.assert_allclose(y, numpy_binary_conv(x, w, stride), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_scale", ["per_channel", None])
def test_magnitude_aware_sign_scales_the_kernel_once(kernel_scale):
    """larq's magnitude_aware_sign owns its scale: mean |w| once, with or without the
    layer's own per-channel scale (not mean |w| squared)."""
    x = np.random.default_rng(2).normal(size=(2, 7, 7, 5)).astype("float32")
    layer = BinaryConv2D(
        4, 3, kernel_quantizer="magnitude_aware_sign", kernel_scale=kernel_scale, use_bias=False
    )
    y = keras.ops.convert_to_numpy(layer(x))
    w = keras.ops.convert_to_numpy(layer.kernel)
    np.testing.assert_allclose(y, numpy_binary_conv(x, w, 1), rtol=1e-5, atol=1e-5)
    k = keras.ops.convert_to_numpy(layer.quantized_kernel())
    np.testing.assert_allclose(np.abs(k), np.broadcast_to(np.abs(w).mean((0, 1, 2)), k.shape))


def test_same_paddings_follow_tf_same_split():
    # total = max((ceil(n/s)-1)*s + k - n, 0); the extra pixel goes to the bottom/right.
    assert same_paddings(8, 3, 2) == (0, 1)
    assert same_paddings(7, 3, 2) == (1, 1)
    assert same_paddings(7, 3, 1) == (1, 1)
    assert same_paddings(5, 1, 1) == (0, 0)


def test_disabled_quantizers_compute_exactly_like_conv2d():
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False)
    ref = keras.ops.convert_to_numpy(conv(x))
    layer = BinaryConv2D(4, 3, input_quantizer=None, kernel_quantizer=None, use_bias=False)
    layer.build(x.shape)
    layer.set_weights(conv.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), ref, rtol=1e-6, atol=1e-6)


def test_effective_kernel_is_plus_minus_alpha_per_channel():
    layer = BinaryConv2D(6, 3)
    layer.build((None, 5, 5, 4))
    k = keras.ops.convert_to_numpy(layer.quantized_kernel())
    w = keras.ops.convert_to_numpy(layer.kernel)
    np.testing.assert_array_equal(np.abs(k), np.broadcast_to(np.abs(w).mean((0, 1, 2)), k.shape))
    np.testing.assert_array_equal(np.sign(k), np.where(w >= 0, 1, -1))


def test_bad_input_errors():
    with pytest.raises(ValueError, match="expects 4D input.*Received input shape: \\(None, 5\\)"):
        BinaryConv2D(2, 3)(keras.Input((5,)))
    with pytest.raises(ValueError, match="pad_values.*0.5"):
        BinaryConv2D(2, 3, pad_values=0.5)
    with pytest.raises(ValueError, match="Unknown quantizer 'nope'"):
        BinaryConv2D(2, 3, input_quantizer="nope")
    with pytest.raises(ValueError, match="kernel_scale"):
        BinaryConv2D(2, 3, kernel_scale="per_input")
    with pytest.raises(ValueError, match="channels_last"):
        BinaryConv2D(2, 3, data_format="channels_first")


@pytest.mark.parametrize(
    "layer",
    [
        BinaryConv2D(3, 3, strides=2, kernel_constraint="weight_clip", pad_values=0.0),
        BinaryConv2D(3, 1, input_quantizer="ste_sign", kernel_quantizer=None, kernel_scale=None),
        LearnableBias(),
        RPReLU(alpha_initializer=0.1),
    ],
)
def test_get_config_round_trips(layer):
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()


def test_rprelu_matches_numpy():
    x = np.random.default_rng(2).normal(size=(2, 3, 3, 4)).astype("float32")
    layer = RPReLU()
    layer.build(x.shape)
    gamma, alpha, zeta = (np.random.default_rng(i).normal(size=4) for i in range(3))
    layer.set_weights([gamma, alpha, zeta])
    t = x - gamma
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(layer(x)), np.where(t > 0, t, alpha * t) + zeta, rtol=1e-5
    )


def test_keras_file_round_trip_gives_identical_predictions(tmp_path):
    model = bk.models.reactnet_mobilenet(
        (16, 16, 3),
        num_classes=5,
        width_multiplier=0.25,
        binary=True,
        blocks=[(64, 1), (128, 2)],
    )
    x = np.random.default_rng(3).normal(size=(4, 16, 16, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects, safe_mode on
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]


def test_training_step_moves_latent_kernel():
    model = bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=3, width_multiplier=0.25, binary=True, blocks=[(64, 1)]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = keras.ops.convert_to_numpy(model.get_layer("block1_conv3x3").kernel)
    rng = np.random.default_rng(4)
    model.fit(rng.normal(size=(8, 8, 8, 1)), rng.integers(0, 3, 8), epochs=1, verbose=0)
    after = keras.ops.convert_to_numpy(model.get_layer("block1_conv3x3").kernel)
    assert np.abs(after - before).max() > 0


def test_binary_predicates_have_one_home():
    """``has_binary_kernel``: a binarized kernel; ``is_binary_conv``: both sides binarized
    (an ``LceBconv2d``). ``bk.export`` re-exports the same function."""
    from bitat_keras.nn.layers import has_binary_kernel, is_binary_conv

    cases = {
        (True, True): BinaryConv2D(3, 1),
        (True, False): BinaryConv2D(3, 1, input_quantizer=None),
        (False, False): BinaryConv2D(3, 1, kernel_quantizer=None),
    }
    for (kernel, both), layer in cases.items():
        assert has_binary_kernel(layer) is kernel and is_binary_conv(layer) is both
    assert not has_binary_kernel(keras.layers.Conv2D(3, 1))
    assert bk.export.is_binary_conv is bk.export.checks.is_binary_conv is is_binary_conv


@pytest.mark.parametrize("padding, pad_values", [("same", 1.0), ("same", 0.0), ("valid", 1.0)])
def test_binarized_input_is_the_signed_one_padded_input(padding, pad_values):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    layer = BinaryConv2D(4, 3, strides=2, padding=padding, pad_values=pad_values)
    layer.build(x.shape)
    xb, conv_padding = layer.binarized_input(x)
    expected = np.where(x >= 0, 1.0, -1.0)
    if padding == "same" and pad_values == 1.0:  # TF-SAME split of 7 with k=3, s=2: (1, 1)
        expected = np.pad(expected, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=1.0)
        assert conv_padding == "valid"
    else:
        assert conv_padding == padding
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(xb), expected)
