"""Where the backends differ, in one place: which steps are traced and how, eager
gradients, how a batch is split over devices (and the loss scaled for it), how many
processes train, and the tf.data pipeline that feeds ``fit`` under TensorFlow. Every other
module calls these instead of testing the backend's name.

TensorFlow and JAX are imported here only inside the functions, from the backend Keras
already imported: ``import bitat_keras`` needs neither.
"""

import weakref

import keras
import numpy as np

from bitat_keras.graph.structure import model_inputs

__all__ = [
    "batch_splits",
    "gradient",
    "untuned_pipeline",
    "jax_process_count",
    "jit_compile",
    "multi_worker_strategy",
    "per_replica",
    "stateless_forward",
    "trace",
    "traced_forward",
]


def jit_compile():
    """Whether to XLA-compile train steps: always under JAX. XLA under TensorFlow costs more
    to compile than it saves on CPU-sized runs; torch.compile recompiles for every phase and
    layer type (minutes on a tiny model), so torch runs eagerly."""
    return keras.backend.backend() == "jax"


def traced_forward():
    """Whether the forward passes outside ``fit`` (BatchNorm re-estimation, the teacher's
    logits) run traced: under JAX and TensorFlow (torch runs them eagerly)."""
    return keras.backend.backend() in ("jax", "tensorflow")


def trace(fn):
    """``fn`` compiled by the backend: ``jax.jit``, or a ``tf.function`` (not XLA)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf  # already imported by the backend

    return tf.function(fn, reduce_retracing=True)


def stateless_forward(model, training):
    """A forward pass of ``model`` that reads its variables' values at every call and
    leaves them as they are: ``forward(x) -> (outputs, non_trainable_values)``, the values
    the non-trainable variables (BatchNorm's moving statistics) would take. Traced once
    (``trace``) where ``traced_forward()``, so that every later batch of the same shape
    runs the trace instead of dispatching each operation; eager under torch.

    Args:
        model: a built Keras model (kept by a weak reference: the forward does not keep
            it alive).
        training: the mode of the pass (True: BatchNorm normalizes with the batch's
            statistics and returns updated moving statistics).

    Returns:
        The function ``forward(x)``.

    Example:
        >>> logits, _ = stateless_forward(model, training=False)(images)  # doctest: +SKIP
    """
    ref = weakref.ref(model)

    def call(trainable, non_trainable, x):
        net = ref()
        return net.stateless_call(trainable, non_trainable, model_inputs(net, x), training=training)

    compiled = trace(call) if traced_forward() else call
    convert = keras.ops.convert_to_tensor

    def forward(x):
        net = ref()
        return compiled(
            [convert(v) for v in net.trainable_variables],
            [convert(v) for v in net.non_trainable_variables],
            convert(x),
        )

    return forward


def gradient(fn, variable):
    """d fn() / d variable, computed eagerly on the active backend.

    Args:
        fn: a function of no arguments returning a scalar; it reads ``variable``.
        variable: a ``keras.Variable``.

    Returns:
        The gradient as a numpy array of the variable's shape.

    Example:
        >>> g = gradient(lambda: keras.ops.sum(layer.kernel**2), layer.kernel)  # doctest: +SKIP
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # already imported by the backend

        with tf.GradientTape() as tape:
            value = fn()
        grad = tape.gradient(value, variable.value)
    elif backend == "jax":
        import jax

        def of_value(value):
            with keras.StatelessScope(state_mapping=[(variable, value)]):
                return fn()

        grad = jax.grad(of_value)(variable.value)
    elif backend == "torch":
        value = variable.value
        value.grad = None
        fn().backward()
        grad = value.grad
        value.grad = None
    else:
        raise NotImplementedError(f"No eager gradient for the {backend!r} backend.")
    if grad is None:
        return np.zeros(variable.shape, dtype="float32")
    return np.asarray(keras.ops.convert_to_numpy(grad))


def batch_splits():
    """``(devices, how)``: the devices every batch is split over and how, from the active
    ``tf.distribute`` strategy (TensorFlow: "replicas") or ``keras.distribution`` (JAX: its
    batch axis, "shards"); ``(1, None)`` without one."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # already imported by the backend

        return tf.distribute.get_strategy().num_replicas_in_sync, "replicas"
    if backend == "jax":
        dist = keras.distribution.distribution()
        axis = getattr(dist, "batch_dim_name", None)
        if axis is not None:
            mesh = dist.device_mesh
            return int(mesh.shape[list(mesh.axis_names).index(axis)]), "shards"
    return 1, None


def untuned_pipeline(batches, example):
    """A tf.data pipeline of the batches that the generator ``batches()`` yields, prefetched
    without tf.data's autotuning, for ``fit`` under TensorFlow without a ``tf.distribute``
    strategy; None elsewhere (Keras takes the batches as they are).

    Keras turns a ``keras.utils.PyDataset`` into an autotuned pipeline. Deleting an
    autotuned iterator (when every ``fit`` returns, and Keras has already opened the next
    pass) waits for its background thread: up to seconds per call on a small model, about
    30 s on a large one. One ``fit`` per phase pays that at every phase.

    Args:
        batches: a function returning a generator of batches (tuples of arrays, or of
            dicts of arrays).
        example: one batch: the pipeline's dtypes and shapes.

    Example:
        >>> untuned_pipeline(lambda: iter([(x, y)]), (x, y))  # doctest: +SKIP
    """
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf  # already imported by the backend

    if tf.distribute.has_strategy():
        return None
    signature = tf.nest.map_structure(
        lambda a: tf.TensorSpec((None, *np.shape(a)[1:]), tf.as_dtype(np.asarray(a).dtype)),
        example,
    )
    options = tf.data.Options()
    options.autotune.enabled = False
    return (
        tf.data.Dataset.from_generator(batches, output_signature=signature)
        .prefetch(2)
        .with_options(options)
    )


def per_replica(loss):
    """``loss`` / replicas under a tf.distribute strategy, as Keras scales its compiled loss
    (the replicas' gradients are summed); unchanged elsewhere (JAX's DataParallel computes
    the global loss, so nothing to scale there)."""
    replicas, how = batch_splits()
    return loss / replicas if how == "replicas" and replicas > 1 else loss


def multi_worker_strategy():
    """The active ``tf.distribute`` strategy if it spans more than one worker, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf  # already imported by the backend

    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    local = len(strategy.extended.worker_devices)
    return strategy if strategy.num_replicas_in_sync > local else None


def jax_process_count():
    """JAX's process count (``keras.distribution.initialize``); 1 on other backends."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()
