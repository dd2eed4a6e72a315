"""The binarization plan, input thresholds for one-signed (ReLU) inputs, and mixed
precision: users' own models."""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import bitat_keras as bk
from bitat_keras.fit.training import accuracy, train_full_precision
from bitat_keras.graph import thresholds

L = keras.layers


def conv_bn_relu(activation=L.ReLU, input_shape=(8, 8, 1), widths=(8, 16, 16), classes=10):
    """A plain Conv-BatchNorm-activation Sequential CNN (no shortcut anywhere)."""
    layers = [keras.Input(input_shape)]
    for width in widths:
        layers += [L.Conv2D(width, 3, padding="same", use_bias=False), L.BatchNormalization()]
        layers.append(activation())
    layers += [L.GlobalAveragePooling2D(), L.Dense(classes)]
    return keras.Sequential(layers, name="conv_bn_relu")


@pytest.fixture(scope="module")
def digits():
    x, y = bk.datasets.load("digits", "train")
    xt, yt = bk.datasets.load("digits", "test")
    return (x, y), (xt, yt)


def _sign_inputs(model, name, images):
    """What the binarized conv ``name`` multiplies: sign(x - t) of its input (numpy)."""
    layer = model.get_layer(name)
    x = np.concatenate([b[0] for b in thresholds.input_batches(model, [layer], images)])
    if layer.threshold is not None:
        x = x - ops.convert_to_numpy(layer.threshold)
    return np.where(x >= 0, 1.0, -1.0)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# -- thresholds: numpy oracle of the initial values ------------------------------------------
def test_initial_thresholds_split_each_channel_as_evenly_as_its_values_allow():
    rng = np.random.default_rng(0)
    n = 4000
    relu_mostly_zero = np.where(rng.random(n) < 0.7, 0.0, rng.random(n) + 0.1)
    relu_mostly_positive = np.maximum(rng.normal(1.0, 1.0, n), 0.0)
    levels = rng.integers(0, 5, n) * 0.25  # discrete values, as after a binary conv
    relu6_saturated = np.where(rng.random(n) < 0.6, 6.0, rng.random(n) * 6)
    constant = np.full(n, 0.5)
    values = np.stack(
        [relu_mostly_zero, relu_mostly_positive, levels, relu6_saturated, constant], axis=-1
    ).astype("float32")
    t = thresholds.initial_thresholds(values)
    # mostly zero: 0 maps to -1, every positive value to +1 (the most even split there is)
    assert 0 < t[0] < relu_mostly_zero[relu_mostly_zero > 0].min()
    # mostly positive: about the median
    assert abs(np.mean(relu_mostly_positive >= t[1]) - 0.5) < 0.01
    # discrete levels: a midpoint between two levels, never a level itself
    assert np.min(np.abs(np.unique(levels) - t[2])) == pytest.approx(0.125)
    # saturated ReLU6: the saturated values against the rest
    assert np.mean(relu6_saturated >= t[3]) == pytest.approx(np.mean(relu6_saturated == 6.0))
    assert 0.5 - t[4] == pytest.approx(1e-3, rel=1e-4)  # a constant channel: clear of t
    share = np.mean(values[:, :4] >= t[:4], axis=0)
    assert np.all((share > 0.25) & (share < 0.75))


def test_sign_stats_count_one_signed_and_constant_channels():
    x = np.stack([np.abs(np.arange(100.0)), np.arange(100.0) - 50, np.zeros(100)], -1)
    stats = thresholds.SignStats(3)
    stats.update(x[:60])
    stats.update(x[60:])
    assert stats.count == 100
    np.testing.assert_array_equal(stats.one_signed, [True, False, True])
    np.testing.assert_array_equal(stats.constant, [False, False, True])
    assert stats.positive_share == pytest.approx((100 + 50 + 100) / 300)
    assert stats.needs_threshold  # 2 of 3 channels one-signed


# -- the plan ---------------------------------------------------------------------------------
def test_plan_of_a_relu_sequential_cnn_names_every_decision_and_the_one_signed_inputs(digits):
    (x, _), _ = digits
    model = conv_bn_relu()
    graph_only = bk.plan(model)
    assert graph_only.binarized == ["conv2d_1", "conv2d_2"]
    assert graph_only.thresholded == ["conv2d_1", "conv2d_2"]  # fed by ReLU layers
    assert graph_only.samples == 0
    measured = bk.plan(model, x)
    assert measured.samples == 256
    rows = {r.name: r for r in measured.rows}
    assert rows["conv2d"].reason.startswith("first conv")
    assert rows["dense"].reason.startswith("classifier")
    for name in ("conv2d_1", "conv2d_2"):
        assert rows[name].positive_share == 1.0 and rows[name].one_signed_share == 1.0
        assert rows[name].relu_input and rows[name].threshold and rows[name].shortcut is False
    text = str(measured)
    assert "binary + threshold" in text and "float: first conv" in text
    assert any("no shortcut" in w for w in measured.warnings)
    assert any("one-signed" in w for w in measured.warnings)
    # the same net with LeakyReLU: mixed signs, no threshold
    leaky = bk.plan(conv_bn_relu(lambda: L.LeakyReLU(0.1)), x)
    assert leaky.thresholded == [] and not any(r.relu_input for r in leaky.rows)
    assert all(0.2 < r.positive_share < 0.8 for r in leaky.rows if r.binarized)
    # nothing left to binarize: the plan says why, progressive_fit raises with it
    assert bk.plan(conv_bn_relu(widths=(8,))).binarized == []


def test_plan_of_keras_applications_mobilenet_and_resnet50():
    mobilenet = keras.applications.MobileNet((32, 32, 3), alpha=0.25, weights=None, classes=10)
    p = bk.plan(mobilenet, np.random.default_rng(0).random((16, 32, 32, 3), "float32"))
    kinds = {r.name: r for r in p.rows}
    assert len(p.binarized) == 13 and all(n.startswith("conv_pw_") for n in p.binarized)
    assert p.thresholded == p.binarized  # every pointwise conv comes after a ReLU6
    assert all(kinds[f"conv_dw_{i}"].reason.startswith("depthwise") for i in range(1, 14))
    assert kinds["conv1"].reason.startswith("first conv")
    assert kinds["conv_preds"].reason.startswith("classifier")
    assert not any(r.shortcut for r in p.rows if r.binarized)
    resnet = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10)
    p = bk.plan(resnet)
    rows = {r.name: r for r in p.rows}
    assert len(p.binarized) == 52  # every conv but conv1_conv; the head is a Dense
    assert rows["conv2_block1_3_conv"].shortcut and rows["conv2_block1_0_conv"].shortcut
    assert rows["conv2_block1_1_conv"].shortcut is False
    assert rows["conv2_block1_1_conv"].threshold  # fed by conv1's ReLU through max pooling


def test_plan_reports_layers_kept_float_with_their_reason():
    inputs = keras.Input((8, 8, 4))
    x = L.Conv2D(8, 3, padding="same", name="first")(inputs)
    x = L.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = L.SeparableConv2D(8, 3, padding="same", name="sep")(x)
    x = L.Conv2D(8, 3, padding="same", groups=2, name="grouped")(x)
    x = L.Conv2D(8, 3, padding="same", dilation_rate=2, name="dilated")(x)
    x = L.Conv2DTranspose(8, 3, padding="same", name="transposed")(x)
    x = L.Conv2D(8, 3, padding="same", name="regular")(x)
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, L.Dense(3, name="head")(x))
    p = bk.plan(model)
    assert p.binarized == ["regular"] == bk.models.eligible_layers(model)
    reasons = p.kept_float
    for name, start in [("first", "first conv"), ("dw", "depthwise"), ("sep", "separable"),
                        ("grouped", "grouped (groups=2)"), ("dilated", "dilated"),
                        ("transposed", "transposed"), ("head", "classifier")]:  # fmt: skip
        assert reasons[name].startswith(start), (name, reasons[name])


# -- thresholds in binarize, export and saving -----------------------------------------------
def test_binarize_thresholds_relu_inputs_so_that_the_sign_splits_them(digits):
    (x, _), _ = digits
    model = conv_bn_relu()
    plain = bk.binarize(model, thresholds=[])  # no threshold: the cause, shown
    for name in ("conv2d_1", "conv2d_2"):
        assert np.all(_sign_inputs(plain, name, x[:64]) == 1.0)
    fixed = bk.binarize(model, x)
    for name in ("conv2d_1", "conv2d_2"):
        share = np.mean(_sign_inputs(fixed, name, x[:64]) > 0)
        assert 0.2 < share < 0.8, (name, share)
    trained = ops.convert_to_numpy(fixed.get_layer("conv2d_1").threshold) + 0.5
    fixed.get_layer("conv2d_1").threshold.assign(trained)
    again = _quiet(bk.binarize, fixed, x)  # a binary model keeps its trained thresholds
    np.testing.assert_array_equal(
        ops.convert_to_numpy(again.get_layer("conv2d_1").threshold), trained
    )
    no_data = _quiet(bk.binarize, model)  # thresholds from the graph, a small positive start
    t = ops.convert_to_numpy(no_data.get_layer("conv2d_1").threshold)
    np.testing.assert_allclose(t, thresholds.NO_DATA_THRESHOLD)


def test_thresholded_models_convert_every_binary_conv_save_and_load(tmp_path, digits):
    model = keras.applications.MobileNet((32, 32, 3), alpha=0.25, weights=None, classes=10)
    images = np.random.default_rng(1).random((32, 32, 32, 3), "float32")
    bnn = _quiet(bk.binarize, model, images)
    counts = bk.inspect_tflite(bk.convert_keras_model(bnn))["ops"]
    assert counts["LceBconv2d"] == 13
    assert counts.get("SUB", 0) + counts.get("ADD", 0) >= 13  # the thresholds stay
    path = str(tmp_path / "m.keras")
    bnn.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        ops.convert_to_numpy(loaded.get_layer("conv_pw_3").threshold),
        ops.convert_to_numpy(bnn.get_layer("conv_pw_3").threshold),
    )
    np.testing.assert_allclose(loaded.predict(images, verbose=0), bnn.predict(images, verbose=0))
    # parity on a trained ReLU model and held-out images (an untrained net has exact ties:
    # whole regions of one value, where float rounding decides a sign)
    (x, y), (xt, _) = digits
    fp = train_full_precision(conv_bn_relu(), (x, y), 3, 64)
    bnn = _quiet(bk.binarize, fp, x)
    flatbuffer = bk.convert_keras_model(bnn)
    assert bk.inspect_tflite(flatbuffer)["ops"]["LceBconv2d"] == 2
    assert bk.verify_tflite(bnn, flatbuffer, xt[:64]) < 1e-4


def test_constant_inputs_are_an_error_that_names_the_layer(digits):
    (x, _), _ = digits
    model = conv_bn_relu()
    bn = model.layers[1]  # the first BatchNorm: gamma 0, beta -1 -> ReLU gives 0 everywhere
    bn.gamma.assign(np.zeros(bn.gamma.shape))
    bn.beta.assign(-np.ones(bn.beta.shape))
    with pytest.raises(ValueError, match="'conv2d_1'.*constant"):
        _quiet(bk.binarize, model, x)


# -- a ReLU model trains far above chance -----------------------------------------------------
def test_relu_cnn_binarizes_far_above_chance_and_its_result_saves_cleanly(digits, tmp_path):
    (x, y), (xt, yt) = digits
    fp = train_full_precision(conv_bn_relu(widths=(16, 32, 32)), (x, y), 15, 64)
    fp_acc = accuracy(fp, xt, yt)
    assert fp_acc > 0.85
    config = bk.BiTATConfig(epochs_per_layer=4, final_epochs=4, batch_size=32, stats_images=64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = bk.progressive_fit(fp, (x, y), config=config, verbose=0)
    assert result.plan.thresholded == ["conv2d_1", "conv2d_2"]
    # conv2d_2's threshold is not trained while its input is still real (conv2d_1's phase):
    # no trainable variable without a gradient, which Keras warns of
    missing = [str(w.message) for w in caught if "Gradients do not exist" in str(w.message)]
    assert not missing
    # measured 0.973 (FP 0.973); chance is 0.1, what a ReLU CNN got before thresholds
    assert accuracy(result.model, xt, yt) > 0.9
    path = str(tmp_path / "relu.keras")
    result.model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Skipping variable loading for optimizer"
        loaded = keras.saving.load_model(path)
    assert accuracy(loaded, xt, yt) == accuracy(result.model, xt, yt)


# -- mixed precision --------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_models_binarize_train_and_export_in_float32(policy, digits):
    (x, y), _ = digits
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = conv_bn_relu()
        assert model.layers[0].compute_dtype != "float32"
        config = bk.BiTATConfig(epochs_per_layer=1, final_epochs=1, batch_size=64, stats_images=32)
        with pytest.warns(UserWarning, match=f"dtype policy '{policy}'.*float32"):
            result = bk.progressive_fit(model, (x[:256], y[:256]), config=config, verbose=0)
        assert keras.config.dtype_policy().name == policy  # the user's policy is kept
    finally:
        keras.config.set_dtype_policy(previous)
    assert {layer.compute_dtype for layer in result.model.layers} == {"float32"}
    flatbuffer = bk.convert_keras_model(result.model)
    assert bk.inspect_tflite(flatbuffer)["ops"]["LceBconv2d"] == 2
    assert bk.verify_tflite(result.model, flatbuffer, x[:8]) < 1e-3


def test_exact_gelu_is_flagged_before_training_where_tensorflow_lowers_it_to_erfc(monkeypatch):
    from bitat_keras.graph import binarization_plan

    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3),
            keras.layers.Activation("gelu"),
            keras.layers.Conv2D(8, 3, name="binary"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3),
        ],  # fmt: skip
    )
    monkeypatch.setattr(binarization_plan, "tensorflow_version", lambda: (2, 21))
    (message,) = [w for w in bk.plan(model).warnings if "GELU" in w]
    assert "'activation" in message and "TensorFlow 2.21" in message
    assert "approximate=True" in message
    monkeypatch.setattr(binarization_plan, "tensorflow_version", lambda: (2, 16))
    assert not [w for w in bk.plan(model).warnings if "GELU" in w]
