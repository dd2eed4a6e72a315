"""Distributional (knowledge-distillation) loss against a full-precision teacher, as in
ReActNet: the student matches the teacher's softmax.

The teacher is frozen and runs in inference mode, so its output for an image never changes
during training. For training images that are not augmented, its logits are computed once
(``teacher_outputs``) and travel with the labels as the batch's targets (``targets``):
a distilling step then reads them instead of running the teacher's forward pass."""

import keras
import numpy as np
from keras import ops

from bitat_keras.fit.backend import per_replica, stateless_forward


def weighted_mean(per_sample, sample_weight=None):
    """The batch mean of ``per_sample`` losses, each weighted by ``sample_weight`` (shape
    (batch,), or None: unweighted), reduced as Keras reduces a weighted loss
    ("sum_over_batch_size"): ``sum(w_i * l_i) / batch_size``."""
    if sample_weight is None:
        return ops.mean(per_sample)
    weights = ops.reshape(ops.cast(sample_weight, per_sample.dtype), (-1,))
    return ops.mean(per_sample * weights)


def soft_cross_entropy(teacher_logits, logits, sample_weight=None):
    """``- sum_c softmax(teacher)(c) log softmax(logits)(c)`` per sample (no gradient to
    the teacher), reduced over the batch by ``weighted_mean``; not scaled per replica."""
    target = ops.stop_gradient(ops.softmax(teacher_logits, axis=-1))
    per_sample = -ops.sum(target * ops.log_softmax(logits, axis=-1), axis=-1)
    return weighted_mean(per_sample, sample_weight)


CACHE_BYTES = 512 * 2**20  # the largest table of teacher logits kept (float32)


def targets(labels, teacher_logits):
    """A batch's targets: its labels and the teacher's logits of its images."""
    return {"labels": labels, "teacher_logits": teacher_logits}


def split_targets(y):
    """``(labels, teacher logits or None)`` of a batch's targets ``y``: those of
    ``targets``, or the labels alone."""
    if isinstance(y, dict) and set(y) == {"labels", "teacher_logits"}:
        return y["labels"], y["teacher_logits"]
    return y, None


def teacher_outputs(teacher, x, batch_size):
    """The logits (float32, shape (N, classes)) of the frozen ``teacher`` for every image
    of ``x``, in inference mode, ``batch_size`` images per forward pass (traced under JAX
    and TensorFlow: one trace, the last batch padded to size); None when they would take
    more than ``CACHE_BYTES``."""
    classes = int(np.prod(teacher.outputs[0].shape[1:]))
    if len(x) * classes * 4 > CACHE_BYTES:
        return None
    forward = stateless_forward(teacher, training=False)
    chunks = []
    for i in range(0, len(x), batch_size):
        images = x[i : i + batch_size]
        rows = len(images)
        if rows < batch_size and len(x) > batch_size:  # the shape of every other batch
            images = np.concatenate([images, np.zeros_like(x[: batch_size - rows])])
        chunks.append(ops.convert_to_numpy(forward(images)[0])[:rows])
    return np.concatenate(chunks).astype("float32", copy=False)


def teacher_loss(teacher, x, y_pred, sample_weight=None, teacher_logits=None):
    """The distributional loss of ``y_pred`` against the frozen ``teacher`` on the batch
    ``x`` (run in inference mode, unless its logits ``teacher_logits`` are given),
    weighted by ``sample_weight`` (or None) and scaled per replica: the loss of every
    distilling step, ReActNet's and BiTAT's."""
    if teacher_logits is None:
        teacher_logits = teacher(x, training=False)
    return per_replica(soft_cross_entropy(teacher_logits, y_pred, sample_weight))


class Distiller(keras.Model):
    """Trains ``student`` on ``teacher``'s output distribution (plus optional task loss).

    The loss is the cross-entropy between the teacher's softmax and the student's
    (KL divergence up to a constant), ``- sum_c p_teacher(c) log p_student(c)``, averaged
    over the batch; with per-sample weights (``fit(x, y, sample_weight=w)`` or
    ``(x, y, w)`` batches) as Keras weights its losses, ``sum(w_i * l_i) / batch_size``.
    With ``alpha > 0`` the compiled task loss is added with weight alpha.
    The teacher is frozen and runs in inference mode, or its logits come with the batch
    (``targets``: the labels and the teacher's logits). Both models must output logits.
    Without a teacher, the compiled task loss alone is used.

    Args:
        student: the model being trained.
        teacher: the frozen full-precision model, or None.
        alpha: weight of the compiled task loss when there is a teacher.

    Example:
        >>> d = Distiller(binary_model, fp_model)
        >>> d.compile("adam", loss=None)  # doctest: +SKIP
        >>> d.fit(x, y)  # doctest: +SKIP
    """

    def __init__(self, student, teacher=None, alpha=0.0, name="distiller"):
        super().__init__(name=name)
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.alpha = float(alpha)
        self.built = True

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    def distribution_loss(self, x, y_pred, sample_weight=None, teacher_logits=None):
        """The teacher term on the batch ``x`` (or its ``teacher_logits``), weighted by
        ``sample_weight`` (or None)."""
        return teacher_loss(self.teacher, x, y_pred, sample_weight, teacher_logits)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        y, teacher_logits = split_targets(y)
        if self.teacher is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        loss = self.distribution_loss(x, y_pred, sample_weight, teacher_logits)
        if self.alpha:
            task = super().compute_loss(x, y, y_pred, sample_weight, training=training)
            loss = loss + self.alpha * task
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, split_targets(y)[0], y_pred, sample_weight)
