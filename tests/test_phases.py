"""The single-trace progressive loop: gated layers, the phase optimizer, the normalised
penalty, the final joint phase, and strict conversion of what progressive_fit returns."""

import keras
import numpy as np
import pytest
from keras import ops

import bitat_keras as bk
from bitat_keras import phases, transform
from bitat_keras.block import BlockTransform

FAST = dict(
    epochs_per_layer=1,
    finetune_epochs=1,
    batch_size=32,
    groups=8,
    stats_images=32,
    stats_rows=512,
    bn_recalibration_batches=4,
)


@pytest.fixture(scope="module")
def digits():
    x, y = bk.datasets.load("digits", "train")
    return x[:256], y[:256]


def tiny_model(blocks=((64, 1), (64, 1))):
    return bk.models.reactnet_mobilenet(
        (8, 8, 1), num_classes=10, width_multiplier=0.25, blocks=list(blocks)
    )


@pytest.mark.parametrize("strides", [1, 2])
def test_gated_layer_computes_the_real_conv_at_0_and_the_binary_conv_at_1(strides):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    w = rng.normal(size=(3, 3, 3, 4)).astype("float32")
    real = keras.layers.Conv2D(4, 3, strides=strides, padding="same", use_bias=False)
    plain = bk.layers.BinaryConv2D(4, 3, strides=strides, use_bias=False)
    gated = phases.GatedBinaryConv2D(4, 3, strides=strides, use_bias=False)
    gin, gk = keras.Variable(0.0), keras.Variable(0.0)
    gated.attach_gates(gin, gk)
    for layer in (real, plain, gated):
        layer.build(x.shape)
        layer.kernel.assign(w)
    assert len(gated.weights) == 1  # the gates are not the layer's weights
    np.testing.assert_allclose(
        ops.convert_to_numpy(gated(x)), ops.convert_to_numpy(real(x)), rtol=1e-5, atol=1e-5
    )
    gin.assign(1.0)
    gk.assign(1.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(gated(x)), ops.convert_to_numpy(plain(x)))


def test_phase_adam_freezes_masked_variables_exactly_and_resets_its_slots():
    a = keras.Variable(np.ones(3, "float32"))
    b = keras.Variable(np.ones(3, "float32"))
    opt = phases.PhaseAdam()
    opt.build([a, b])
    opt.start_phase(0.1, steps=4)
    opt.set_masks({id(a)})
    grads = [ops.ones(3), ops.ones(3)]
    opt.apply(grads, [a, b])
    assert np.all(ops.convert_to_numpy(a) < 1.0)
    np.testing.assert_array_equal(ops.convert_to_numpy(b), np.ones(3))
    # Linear decay over the phase: lr * (1 - step / steps).
    assert float(opt.learning_rate) == pytest.approx(0.1 * 3 / 4)
    opt.start_phase(0.2, steps=10)
    assert int(opt.iterations) == 0 and float(opt.learning_rate) == pytest.approx(0.2)
    for slot in opt.variables:
        if slot.shape == (3,):
            np.testing.assert_array_equal(ops.convert_to_numpy(slot), 0.0)


def _numpy_penalty(s, v, ps, rs, mask=None):
    r = np.vstack([p @ m for p, m in zip(ps, rs, strict=True)])
    if mask is not None:
        s, v = s * mask, v * np.outer(mask, mask)
    return np.sum((np.diag(s) @ v.T @ r) ** 2)


def test_normalised_penalty_is_the_relative_output_error_of_numpy_eq13():
    """lam * ||diag(s) V^T P (W - Q)||^2 / ||diag(s) V^T P W||^2 with s, V from the PCA of
    the inputs: with s = sqrt(eig C), V = eigvecs C this equals E||(W - Q)^T o||^2 /
    E||W^T o||^2, the relative error of the layer's outputs."""
    rng = np.random.default_rng(3)
    w = (rng.normal(size=(1, 1, 6, 4)) * 0.3).astype("float32")
    o = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))  # correlated inputs
    s, v = transform.pca_init(transform.second_moment(o))
    bt = BlockTransform(s, v, 0.0, [("a", None, 6)], lam=2.0, gamma=0.0, reg_weight=0.0)
    kernel = ops.convert_to_tensor(w)
    energy = float(ops.convert_to_numpy(bt.output_energy([kernel])))
    bt.inv_energy.assign(1.0 / energy)
    penalty = float(ops.convert_to_numpy(bt.terms([kernel])[0]))
    m = w.reshape(6, 4).astype(float)
    q = np.where(m >= 0, 1.0, -1.0) * np.abs(m).mean(axis=0)
    expected = 2.0 * np.sum((o @ (m - q)) ** 2) / np.sum((o @ m) ** 2)
    assert penalty == pytest.approx(expected, rel=1e-4)
    assert energy == pytest.approx(np.sum((o @ m) ** 2) / len(o), rel=1e-4)


@pytest.mark.parametrize("mode", ["latent", "sign"])
def test_partly_joined_block_counts_only_joined_members(mode):
    """A block whose second layer has not joined: penalty, Reg and l1 over the first
    member's slots only (numpy oracle), and no gradient into the second kernel."""
    import tensorflow as tf

    rng = np.random.default_rng(4)
    w1 = (rng.normal(size=(3, 3, 2, 5)) * 0.2).astype("float32")  # d = 18 -> 4 groups
    w2 = (rng.normal(size=(1, 1, 5, 5)) * 0.2).astype("float32")
    ids, k1 = transform.group_ids(rng.normal(size=(40, 18)), 4, seed=0)
    bt = BlockTransform(
        np.zeros(9),
        np.zeros((9, 9)),
        0.0,
        [("a", np.zeros(18, "int32"), 4), ("b", None, 5)],
        lam=3.0,
        gamma=1e-2,
        reg_weight=1.0,
        penalty_gradient=mode,
        active=0,
    )
    s1 = rng.random(k1) + 0.5
    v1 = np.linalg.qr(rng.normal(size=(k1, k1)))[0]
    bt.join(0, s1, v1, ids)
    bt.inv_energy.assign(0.5)
    k1v, k2v = tf.Variable(w1), tf.Variable(w2)
    with tf.GradientTape() as tape:
        penalty, reg, l1 = bt.terms([k1v, k2v])
        total = penalty + reg + l1
    g2 = tape.gradient(total, k2v)
    assert g2 is None or np.all(g2.numpy() == 0)
    m1 = w1.reshape(18, 5).astype(float)
    q1 = np.where(m1 >= 0, 1.0, -1.0) * np.abs(m1).mean(axis=0)
    p1 = transform.reduction_matrix(ids, k1)
    mask = np.r_[np.ones(k1), np.zeros(9 - k1)]
    s = np.r_[s1, np.zeros(9 - k1)]
    v = np.zeros((9, 9))
    v[:k1, :k1] = v1
    p = np.zeros((9, 18))
    p[:k1] = p1
    expected = 3.0 * 0.5 * _numpy_penalty(s, v, [p], [m1 - q1])
    sigma = np.sum(np.log(s1))
    reg_expected = np.sum((v1 @ v1.T - np.eye(k1)) ** 2) + (sigma - np.sum(np.log(s1))) ** 2
    np.testing.assert_allclose(float(penalty), expected, rtol=1e-4)
    np.testing.assert_allclose(float(reg), reg_expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(l1), 1e-2 * np.abs(w1).sum(), rtol=1e-5)
    np.testing.assert_array_equal(ops.convert_to_numpy(bt.active), mask)


def test_one_trace_serves_every_phase(digits):
    """The train step is traced the same number of times for 1 layer as for 5 layers with
    fine-tune, final and activation phases: nothing retraces per phase."""
    counts = []
    for blocks, extra in (([(64, 1)], {"finetune_epochs": 0}), (None, {})):
        keras.utils.set_random_seed(0)
        config = bk.BiTATConfig(
            **{**FAST, "final_epochs": 1, "activations_first_epochs": 1, **extra}
        )
        model = tiny_model(blocks) if blocks else tiny_model()
        result = bk.progressive_fit(model, digits, config=config, verbose=0)
        counts.append(result.traces)
        assert len(result.history) >= 5
    assert counts[0] == counts[1] and 1 <= counts[0] <= 2


class KernelAtPhaseStart(keras.callbacks.Callback):
    def __init__(self, name):
        super().__init__()
        self.name, self.kernels = name, []

    def on_train_begin(self, logs=None):
        layer = self.model.student.get_layer(self.name)
        self.kernels.append(ops.convert_to_numpy(layer.quantized_kernel()))


def test_final_phase_trains_every_binary_layer_and_the_result_converts_strictly(digits):
    keras.utils.set_random_seed(0)
    config = bk.BiTATConfig(**{**FAST, "final_epochs": 2, "distillation": "all"})
    fp = tiny_model()
    names = bk.models.eligible_layers(fp)
    recorder = KernelAtPhaseStart(names[0])
    result = bk.progressive_fit(fp, digits, config=config, callbacks=[recorder], verbose=0)
    assert [h["phase"] for h in result.history][-2:] == ["quantize", "final"]
    for name in names:  # still exactly alpha[o] * sign(w)
        layer = result.model.get_layer(name)
        k = ops.convert_to_numpy(layer.quantized_kernel())
        w = ops.convert_to_numpy(layer.kernel)
        np.testing.assert_array_equal(np.sign(k), np.where(w >= 0, 1.0, -1.0))
        np.testing.assert_allclose(np.abs(k).max((0, 1, 2)), np.abs(w).mean((0, 1, 2)), rtol=1e-6)
    # Frozen from its fine-tune phase to the final phase, the first layer moved in it.
    np.testing.assert_array_equal(recorder.kernels[1], recorder.kernels[-1])
    final = ops.convert_to_numpy(result.model.get_layer(names[0]).quantized_kernel())
    assert np.abs(final - recorder.kernels[-1]).max() > 0
    flatbuffer = bk.convert_keras_model(result.model)  # strict: raises if a layer stays float
    assert bk.inspect_tflite(flatbuffer)["ops"].get("LceBconv2d") == len(names)
    assert bk.verify_tflite(result.model, flatbuffer, digits[0][:8]) < 1e-3


def test_history_logs_the_penalty_to_task_gradient_ratio(digits):
    config = bk.BiTATConfig(**{**FAST, "finetune_epochs": 0, "lam": 1.0})
    keras.utils.set_random_seed(0)
    result = bk.progressive_fit(tiny_model([(64, 1)]), digits, config=config, verbose=0)
    ratios = [h["gradient_ratio"] for h in result.history if h["phase"] == "quantize"]
    assert all(r > 0 and np.isfinite(r) for r in ratios)
    # The ratio scales with lam: the same run at lam = 10 logs 10x the first ratio.
    config10 = bk.BiTATConfig(**{**FAST, "finetune_epochs": 0, "lam": 10.0})
    keras.utils.set_random_seed(0)
    again = bk.progressive_fit(tiny_model([(64, 1)]), digits, config=config10, verbose=0)
    assert again.history[0]["gradient_ratio"] == pytest.approx(10 * ratios[0], rel=1e-3)


def test_too_few_steps_per_phase_warn_before_training_and_say_what_to_change():
    config = bk.BiTATConfig(epochs_per_layer=2, finetune_epochs=1, batch_size=800)
    message = bk.config.check_phase_steps(config, steps_per_epoch=2, warn=False)
    assert "4 optimizer steps" in message and f"epochs_per_layer >= {50}" in message
    assert bk.config.check_phase_steps(config, steps_per_epoch=50, warn=False) is None
    x = np.random.default_rng(0).random((64, 8, 8, 1), "float32")
    y = np.zeros(64, "int64")
    with pytest.warns(UserWarning, match="smaller batch_size"):
        with pytest.raises(bk.NonFiniteLossError):  # stop right after the warning
            bk.progressive_fit(
                tiny_model([(64, 1)]),
                (x, y),
                config=bk.BiTATConfig(**{**FAST, "learning_rate": 1e30, "lam": 1e30}),
                verbose=0,
            )


def test_paper_settings_stay_one_call_away():
    paper = bk.BiTATConfig.paper()
    assert (paper.lam, paper.penalty_normalization, paper.gamma, paper.groups) == (
        100.0,
        "none",
        1e-5,
        256,
    )
    assert (paper.learning_rate, paper.batch_size) == (3e-4, 800)
    assert (paper.epochs_per_layer, paper.finetune_epochs, paper.final_epochs) == (40, 40, 0)
    assert paper.distillation == "none" and paper.transform == "aggregated"
    assert bk.BiTATConfig.paper(epochs_per_layer=5).epochs_per_layer == 5
    with pytest.raises(ValueError, match="Unknown penalty_normalization 'l2'"):
        bk.BiTATConfig(penalty_normalization="l2")
