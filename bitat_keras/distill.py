"""Distributional (knowledge-distillation) loss against a full-precision teacher, as in
ReActNet: the student matches the teacher's softmax."""

import keras
from keras import ops


def per_replica(loss):
    """``loss`` / replicas under a tf.distribute strategy, as Keras scales its compiled loss
    (the replicas' gradients are summed); unchanged elsewhere (JAX's DataParallel computes
    the global loss, so nothing to scale there)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # already imported by the backend

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            loss = loss / replicas
    return loss


class Distiller(keras.Model):
    """Trains ``student`` on ``teacher``'s output distribution (plus optional task loss).

    The loss is the cross-entropy between the teacher's softmax and the student's
    (KL divergence up to a constant), ``- sum_c p_teacher(c) log p_student(c)``, averaged
    over the batch. With ``alpha > 0`` the compiled task loss is added with weight alpha.
    The teacher is frozen and runs in inference mode. Both models must output logits.
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

    def distribution_loss(self, x, y_pred):
        target = ops.stop_gradient(ops.softmax(self.teacher(x, training=False), axis=-1))
        log_probs = ops.log_softmax(y_pred, axis=-1)
        return per_replica(-ops.mean(ops.sum(target * log_probs, axis=-1)))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.teacher is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        loss = self.distribution_loss(x, y_pred)
        if self.alpha:
            task = super().compute_loss(x, y, y_pred, sample_weight, training=training)
            loss = loss + self.alpha * task
        return loss
