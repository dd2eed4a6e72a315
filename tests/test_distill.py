import keras
import numpy as np
from keras import ops

from bitat_keras.fit.distill import Distiller


def test_distribution_loss_matches_numpy_soft_cross_entropy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype("float32")
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    d = Distiller(student, teacher)
    y_pred = student(x)
    got = float(d.compute_loss(x=x, y=None, y_pred=y_pred))
    t = ops.convert_to_numpy(teacher(x))
    s = ops.convert_to_numpy(y_pred)
    p = np.exp(t - t.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    log_q = s - s.max(1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(1, keepdims=True))
    np.testing.assert_allclose(got, -np.mean(np.sum(p * log_q, 1)), rtol=1e-5)
    assert not teacher.trainable


def test_distiller_trains_student_towards_teacher_only():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(64, 4)).astype("float32")
    teacher = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    frozen = [w.copy() for w in teacher.get_weights()]
    d = Distiller(student, teacher)
    d.compile(keras.optimizers.Adam(0.05), loss=None)
    before = float(d.compute_loss(x=x, y_pred=student(x)))
    d.fit(x, np.zeros(64), epochs=20, batch_size=16, verbose=0)
    after = float(d.compute_loss(x=x, y_pred=student(x)))
    assert after < before
    for a, b in zip(frozen, teacher.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
