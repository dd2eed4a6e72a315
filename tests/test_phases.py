"""The progressive loop: gated layers, the per-phase train step, the normalised
penalty, the final joint phase, and strict conversion of what progressive_fit returns."""

import keras
import numpy as np
import pytest
from keras import ops
from test_transform import dense_p

import bitat_keras as bk
from bitat_keras.fit import data as fit_data
from bitat_keras.fit import phases
from bitat_keras.fit.distill import teacher_outputs
from bitat_keras.method import transform
from bitat_keras.method.block import BlockTransform
from bitat_keras.method.config import check_phase_steps

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


@pytest.mark.parametrize("binary_input", [False, True])
@pytest.mark.parametrize("binary_kernel", [False, True])
def test_fixed_gates_compute_exactly_what_the_gate_variables_select(binary_input, binary_kernel):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 7, 7, 3)).astype("float32")
    gated = phases.GatedBinaryConv2D(4, 3, strides=2, use_bias=False)
    gin, gk = keras.Variable(float(binary_input)), keras.Variable(float(binary_kernel))
    gated.attach_gates(gin, gk)
    gated.build(x.shape)
    gated.kernel.assign(rng.normal(size=(3, 3, 3, 4)).astype("float32"))
    selected = ops.convert_to_numpy(gated(x))
    gated.fixed = (binary_input, binary_kernel)
    gin.assign(1.0 - gin)  # a fixed layer does not read its gates
    np.testing.assert_array_equal(ops.convert_to_numpy(gated(x)), selected)


def test_a_phase_differentiates_only_its_trainable_weights_with_a_fresh_optimizer(digits):
    """Inside ``phase`` only the listed weights are trainable: the train step computes
    gradients for them alone and the phase's new Adam holds slots for them alone; the
    others are bit-for-bit unchanged by the phase; afterwards every weight is trainable."""
    from bitat_keras.fit.phase_runner import PhaseRunner

    config = bk.BiTATConfig(**FAST)
    runner = PhaseRunner(tiny_model(), digits, config, None, [], 0)
    trainer, names = runner.trainer, runner.names
    everything = list(trainer.trainable_variables)
    trainer.set_binary(0, inputs=True, kernel=True)
    boundary = runner.position[names[0]]
    trainable = runner.trainable_above(boundary)
    frozen = [v for v in everything if id(v) not in trainable]
    assert frozen and len(trainable) < len(everything)
    before = [ops.convert_to_numpy(v) for v in frozen]
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append({id(v) for v in self.model.trainable_variables})

    with trainer.phase(trainable, runner.loss, 1e-2, 8, runner.example) as optimizer:
        assert {id(v) for v in trainer.trainable_variables} == trainable
        slots = [v for v in optimizer.variables if len(v.shape) > 0]
        assert len(slots) == 2 * sum(len(v.shape) > 0 for v in trainer.trainable_variables)
        trainer.fit(*digits, batch_size=32, epochs=1, callbacks=[Probe()], verbose=0)
    assert seen and all(ids == trainable for ids in seen)
    for v, b in zip(frozen, before, strict=True):
        np.testing.assert_array_equal(ops.convert_to_numpy(v), b)
    assert {id(v) for v in trainer.trainable_variables} == {id(v) for v in everything}


@pytest.mark.parametrize(
    "kernel_quantizer, kernel_scale",
    [
        ("ste_sign", "per_channel"),
        ("magnitude_aware_sign", "per_channel"),
        ("magnitude_aware_sign", None),
        ("ste_sign", None),
    ],
)
def test_block_residual_uses_the_layers_own_quantizer_and_scale(kernel_quantizer, kernel_scale):
    """Eq. 13's W - Q(W) is taken with Q as the layer computes it (quantized_kernel): a
    kernel quantizer with its own scale is not scaled twice, kernel_scale=None is pure +-1,
    in the residual the block computes, in the one PhaseTrainer passes it, and for the
    "sign" gradient as for the "latent" one."""
    rng = np.random.default_rng(4)
    kwargs = dict(kernel_quantizer=kernel_quantizer, kernel_scale=kernel_scale, use_bias=False)
    net = keras.Sequential(
        [keras.Input((5, 5, 2)), phases.GatedBinaryConv2D(3, 3, name="g", **kwargs)]
    )
    layer = net.get_layer("g")
    layer.kernel.assign(rng.normal(size=(3, 3, 2, 3)).astype("float32"))
    kernel = ops.convert_to_numpy(layer.kernel).reshape(18, 3)
    expected = kernel - ops.convert_to_numpy(layer.quantized_kernel()).reshape(18, 3)
    for gradient in ("latent", "sign"):
        bt = BlockTransform(
            np.ones(18), np.eye(18), 0.0, [("g", None, 18)], lam=1.0, gamma=0.0,
            reg_weight=0.0, penalty_gradient=gradient, kernel_quantizer=kernel_quantizer,
        )  # fmt: skip
        (residual,) = bt.residuals([layer.kernel], [layer.kernel_and_scale()])
        np.testing.assert_array_equal(ops.convert_to_numpy(residual), expected)
        if kernel_scale == "per_channel":  # the block's own default: a per-channel scale
            (residual,) = bt.residuals([layer.kernel])
            np.testing.assert_array_equal(ops.convert_to_numpy(residual), expected)
        trainer = phases.PhaseTrainer(net, ["g"], [bt], [["g"]])
        penalty = float(ops.convert_to_numpy(trainer.block_terms(0)[0]))
        assert penalty == pytest.approx(np.sum(expected.astype(float) ** 2), rel=1e-6)


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
    p1 = dense_p(ids, k1)
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


def test_each_phase_traces_its_train_step_once(digits):
    """Every phase traces its own step (its trainable set, loss and block are fixed in the
    trace), once."""
    keras.utils.set_random_seed(0)
    config = bk.BiTATConfig(**{**FAST, "final_epochs": 1, "activations_first_epochs": 1})
    result = bk.progressive_fit(tiny_model(), digits, config=config, verbose=0)
    phases_run = len(result.history)
    assert phases_run >= 5
    assert result.traces == phases_run


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
    config = bk.BiTATConfig(
        **{**FAST, "finetune_epochs": 0, "lam": 1.0, "log_gradient_ratio": True}
    )
    keras.utils.set_random_seed(0)
    result = bk.progressive_fit(tiny_model([(64, 1)]), digits, config=config, verbose=0)
    ratios = [h["gradient_ratio"] for h in result.history if h["phase"] == "quantize"]
    assert all(r > 0 and np.isfinite(r) for r in ratios)
    # The ratio scales with lam: the same run at lam = 10 logs 10x the first ratio.
    config10 = bk.BiTATConfig(
        **{**FAST, "finetune_epochs": 0, "lam": 10.0, "log_gradient_ratio": True}
    )
    keras.utils.set_random_seed(0)
    again = bk.progressive_fit(tiny_model([(64, 1)]), digits, config=config10, verbose=0)
    assert again.history[0]["gradient_ratio"] == pytest.approx(10 * ratios[0], rel=1e-3)
    quiet = bk.progressive_fit(
        tiny_model([(64, 1)]), digits, config=bk.BiTATConfig(**FAST), verbose=0
    )
    assert all("gradient_ratio" not in h for h in quiet.history)  # off by default


def test_too_few_steps_per_phase_warn_before_training_and_say_what_to_change():
    config = bk.BiTATConfig(epochs_per_layer=2, finetune_epochs=1, batch_size=800)
    message = check_phase_steps(config, steps_per_epoch=2, warn=False)
    assert "4 optimizer steps" in message and f"epochs_per_layer >= {50}" in message
    assert check_phase_steps(config, steps_per_epoch=50, warn=False) is None
    x = np.random.default_rng(0).random((64, 8, 8, 1), "float32")
    y = np.zeros(64, "int64")
    with pytest.warns(UserWarning, match="smaller batch_size") as caught:
        with pytest.raises(bk.NonFiniteLossError):  # stop right after the warning
            bk.progressive_fit(
                tiny_model([(64, 1)]),
                (x, y),
                config=bk.BiTATConfig(**{**FAST, "learning_rate": 1e30, "lam": 1e30}),
                verbose=0,
            )
    steps = [w for w in caught if "smaller batch_size" in str(w.message)]
    assert [w.filename for w in steps] == [__file__]  # the line that called progressive_fit


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


_FORWARDS = {}  # name -> keras.Variable counting the forward passes of CountForwards layers


@keras.saving.register_keras_serializable("bitat_tests")
class CountForwards(keras.layers.Layer):
    """The identity; every forward pass it runs (traced steps included) adds 1 to a
    counter shared by every copy of the layer: the student's and the teacher's."""

    def call(self, x):
        _FORWARDS["calls"].assign_add(1.0)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def _counting_cnn():
    inputs = keras.Input((8, 8, 1))
    x = CountForwards()(inputs)
    for width in (8, 16, 16):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.LeakyReLU(0.1)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x))


def _forward_counts(fp, data, distillations):
    counts = {}
    for distillation in distillations:
        _FORWARDS["calls"] = keras.Variable(0.0, trainable=False)
        keras.utils.set_random_seed(0)
        config = bk.BiTATConfig(
            **{**FAST, "finetune_epochs": 0, "final_epochs": 0, "distillation": distillation}
        )
        bk.progressive_fit(fp, data, config=config, verbose=0)
        counts[distillation] = float(ops.convert_to_numpy(_FORWARDS["calls"]))
    return counts


def test_the_teacher_runs_only_in_phases_whose_loss_uses_it(digits, monkeypatch):
    """Counting every forward pass of every copy of the model: with distillation
    "finetune" and no fine-tune or final phase, no phase's loss uses the teacher, and the
    run makes exactly as many forward passes as without a teacher. With "all" the
    teacher's logits are computed once, before the first phase (a stateless traced pass,
    which the counter does not see), and no step runs the teacher; on augmented batches
    (new images at every step) every step runs it."""
    passes = []
    monkeypatch.setattr(
        fit_data, "teacher_outputs", lambda *a: passes.append(1) or teacher_outputs(*a)
    )
    keras.utils.set_random_seed(0)
    _FORWARDS["calls"] = keras.Variable(0.0, trainable=False)
    fp = _counting_cnn()
    counts = _forward_counts(fp, digits, ("none", "finetune", "all"))
    assert counts["none"] > 0
    assert counts["finetune"] == counts["none"]
    assert counts["all"] == counts["none"] and len(passes) == 1
    batches = -(-len(digits[0]) // FAST["batch_size"])
    augmented = bk.datasets.augmented_batches(
        *digits, batch_size=FAST["batch_size"], seed=0, shift=1, pipeline="numpy"
    )
    counts = _forward_counts(fp, augmented, ("none", "all"))
    steps = 2 * batches  # 2 layers x 1 epoch of quantize steps
    assert counts["all"] >= counts["none"] + steps
