"""The pre-trained model check (bitat_keras/teacher.py): stale BatchNorm statistics are
re-estimated on a copy, a teacher near chance stops the methods that distil from it, and a
model that knows nothing of its labels passes unchanged."""

import warnings

import keras
import numpy as np
import pytest

import bitat_keras as bk
from bitat_keras.fit import teacher
from bitat_keras.fit.data import TrainData


class InferenceBlind(keras.layers.Layer):
    """Passes its input in training mode, zeros in inference mode: a model whose batch
    statistics score but whose inference mode cannot, whatever BatchNorm does."""

    def call(self, x, training=None):
        return x if training else keras.ops.zeros_like(x)


def task(n=512, seed=0):
    """A learnable two-class task: which half of an 8x8 image is brighter."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 8, 1)).astype("float32")
    y = (x[:, :, :4].mean(axis=(1, 2, 3)) > x[:, :, 4:].mean(axis=(1, 2, 3))).astype("int64")
    return x, y


def cnn(blind=False):
    layers = [
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
    ]
    layers += [InferenceBlind()] if blind else []
    return keras.Sequential([*layers, keras.layers.Dense(2)], name="fp")


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y = task()
    model = cnn()
    model.compile(keras.optimizers.Adam(1e-2), bk.training.task_loss())
    model.fit(x, y, epochs=8, batch_size=64, verbose=0)
    bk.training.recalibrate_batchnorm(model, (x[i : i + 64] for i in range(0, 512, 64)))
    return model, (x, y)


def copy(model):
    out = keras.models.clone_model(model)
    out.set_weights(model.get_weights())
    return out


def test_a_model_that_knows_the_task_is_used_as_it_is(trained):
    model, data = trained
    inference, batch = teacher.accuracies(model, *data)
    assert inference > 0.8 and batch > 0.8
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert teacher.check_pretrained(model, TrainData(data, model, 64), teacher=True) is model


def test_stale_batchnorm_statistics_are_re_estimated_on_a_copy(trained):
    model, data = trained
    stale = copy(model)
    bn = stale.get_layer("bn")
    bn.moving_mean.assign(bn.moving_mean + 100.0)  # every ReLU off: constant logits
    inference, batch = teacher.accuracies(stale, *data)
    assert teacher.near_chance(inference, 0.5) and batch > 0.8
    with pytest.warns(UserWarning, match="BatchNorm moving statistics are stale"):
        fixed = teacher.check_pretrained(stale, TrainData(data, stale, 64), teacher=True)
    assert fixed is not stale
    assert teacher.accuracies(fixed, *data)[0] > 0.8
    assert np.all(keras.ops.convert_to_numpy(bn.moving_mean) > 50)  # the user's model kept


def test_a_teacher_near_chance_in_inference_mode_is_an_error(trained):
    model, data = trained
    blind = cnn(blind=True)
    blind.set_weights(model.get_weights())
    train = TrainData(data, blind, 64)
    with pytest.raises(ValueError, match=r"teacher, scores .* Distilling from it would teach"):
        teacher.check_pretrained(blind, train, teacher=True)
    assert teacher.check_pretrained(blind, train, teacher=False) is blind  # no teacher
    with pytest.raises(ValueError, match="'fp', the teacher"):
        bk.reactnet_two_step(blind, data, epochs=2, batch_size=64)


def test_labels_the_model_cannot_predict_are_no_error():
    x, _ = task()
    y = np.random.default_rng(1).integers(0, 2, len(x))  # noise: nothing to learn
    model = cnn()
    assert teacher.check_pretrained(model, TrainData((x, y), model, 64), teacher=True) is model


def test_naive_ste_distils_from_the_re_estimated_model(trained):
    model, data = trained
    stale = copy(model)
    stale.get_layer("bn").moving_mean.assign(stale.get_layer("bn").moving_mean + 100.0)
    with pytest.warns(UserWarning, match="re-estimated on 8 training batches"):
        bnn, _ = bk.naive_ste(stale, data, epochs=1, batch_size=64, distill=True)
    assert bk.training.accuracy(bnn, *data) > 0.6


def test_reactnet_mobilenet_batchnorm_follows_in_tens_of_steps():
    model = bk.models.reactnet_mobilenet((16, 16, 1), 4, 0.25, blocks=[(32, 1)])
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(bn.momentum == bk.models.BN_MOMENTUM == 0.9 for bn in bns)


def test_progressive_fit_checks_its_teacher_before_training(trained):
    model, data = trained
    convs = [keras.layers.Conv2D(8, 3, padding="same", activation="relu") for _ in range(3)]
    blind = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            *convs,
            keras.layers.Flatten(),
            InferenceBlind(),
            keras.layers.Dense(2),
        ],  # fmt: skip
        name="fp",
    )
    blind.compile(keras.optimizers.Adam(1e-2), bk.training.task_loss())
    blind.fit(*data, epochs=8, batch_size=64, verbose=0)  # learns in training mode only
    config = bk.BiTATConfig(distillation="all", batch_size=64, stats_images=64)
    with pytest.raises(ValueError, match="'fp', the teacher"):
        bk.progressive_fit(blind, data, config=config)
