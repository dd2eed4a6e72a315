"""Training helpers shared by progressive_fit, the baselines, the demo and the benchmarks:
the linear-decay Adam schedule, the jit choice, BatchNorm re-estimation, accuracy and the
task loss."""

import weakref

import keras
import numpy as np

__all__ = [
    "accuracy",
    "call_model",
    "compile_result",
    "gradient",
    "jit_compile",
    "linear_decay",
    "recalibrate_batchnorm",
    "task_loss",
    "traced_statistics",
    "train_full_precision",
]


def jit_compile():
    """Whether to XLA-compile train steps: always under JAX. XLA under TensorFlow costs more
    to compile than it saves on CPU-sized runs; torch.compile recompiles for every phase and
    layer type (minutes on a tiny model), so torch runs eagerly."""
    return keras.backend.backend() == "jax"


def linear_decay(lr, steps):
    """Learning rate ``lr`` decayed linearly to 0 over ``steps`` optimizer steps."""
    return keras.optimizers.schedules.PolynomialDecay(
        lr, decay_steps=max(int(steps), 1), end_learning_rate=0.0, power=1.0
    )


def task_loss():
    """Sparse categorical cross-entropy on logits (the default task loss)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def call_model(model, x, training=False):
    """``model(x)``, with ``x`` wrapped in a list for a functional model built on a list of
    one input (``keras.Model([inp], out)``: Keras warns when it gets a bare tensor)."""
    return model(_as_inputs(model, x), training=training)


def _as_inputs(model, x):
    try:
        as_list = isinstance(model.input, list | tuple)
    except (AttributeError, ValueError):  # a Sequential model never called
        as_list = False
    return [x] if as_list else x


def compile_result(model, loss=None):
    """Compile a returned model with ``loss`` (default: ``task_loss()``) and accuracy, so
    that ``evaluate`` works, and build its (unused) optimizer, so that a model saved from it
    loads without Keras' warning about skipped optimizer variables."""
    model.compile(loss=loss or task_loss(), metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)
    return model


def traced_statistics():
    """Whether BatchNorm re-estimation runs traced forward passes: under JAX and
    TensorFlow (torch runs them eagerly)."""
    return keras.backend.backend() in ("jax", "tensorflow")


def recalibrate_batchnorm(net, batches, layers=None, reuse_key=None):
    """Re-estimate BatchNorm moving statistics as a cumulative average over ``batches``
    (forward passes in training mode, no gradient).

    Short training phases leave the moving statistics behind the weights (BatchNorm's
    momentum 0.99 needs hundreds of steps), so inference-mode accuracy lags training-mode
    accuracy until the statistics are re-estimated. Under JAX (jitted) and TensorFlow
    (``tf.function``) the forward passes run traced, once per call (or once for every call
    with the same ``reuse_key``); under torch eagerly.

    Args:
        net: the model whose forward (in training mode) runs the BatchNorms.
        batches: an iterable of input batches; empty batches (0 rows, as a slice past the
            data's end gives) are skipped: their mean and variance are undefined.
        layers: the BatchNormalization layers to re-estimate (default: every trainable one
            of ``net.layers``); the others keep their statistics.
        reuse_key: None (trace the forward for this call), or a hashable: later calls with
            the same key (and network, layers and input shape) reuse the trace. The caller
            vouches that nothing the forward reads outside ``net``'s variables has changed
            since (a quantizer swapped on a layer, a variable of an outer model such as a
            gate): such state is read at its value of the first trace.

    Returns:
        The number of (non-empty) batches used.
    """
    every = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    bns = [layer for layer in every if layer.trainable] if layers is None else list(layers)
    if not bns:
        return 0
    others = [layer for layer in every if all(layer is not bn for bn in bns)]
    momenta = [bn.momentum for bn in bns + others]
    batches = (x for x in batches if keras.tree.flatten(x)[0].shape[0] != 0)
    count = 0
    try:
        for bn in others:
            bn.momentum = 1.0  # keep their statistics: only ``layers`` are re-estimated
        if traced_statistics():
            for bn in bns:
                bn.momentum = 0.0  # the traced forward's moving statistics are the batch's
            count = _average_batch_statistics(net, bns, batches, reuse_key)
        else:
            for count, x in enumerate(batches, start=1):
                for bn in bns:
                    bn.momentum = (count - 1) / count  # 0 first: replace, then running mean
                call_model(net, x, training=True)
    finally:
        for bn, m in zip(bns + others, momenta, strict=True):
            bn.momentum = m
    return count


_STATISTICS_FORWARD = weakref.WeakKeyDictionary()  # net -> {BatchNorms: jitted forward}


def _trace(fn):
    """``fn`` compiled by the backend: ``jax.jit``, or a ``tf.function`` (not XLA)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    import tensorflow as tf  # already imported by the backend

    return tf.function(fn, reduce_retracing=True)


def _average_batch_statistics(net, bns, batches, reuse_key=None):
    """One traced forward per batch (traced once per network, set of BatchNorms and input
    shape, instead of dispatching every operation eagerly), with the momentum of ``bns``
    at 0, so that each forward returns the batch's mean and variance; their running mean
    over the batches is assigned at the end, as the eager loop computes it."""
    compiled = _STATISTICS_FORWARD.setdefault(net, {})
    key = (reuse_key, tuple(id(bn) for bn in bns))
    if reuse_key is None or key not in compiled:
        model = weakref.ref(net)  # the cache must not keep the network alive

        def updated(trainable, non_trainable, x):
            inputs = _as_inputs(model(), x)
            _, non_trainable = model().stateless_call(
                trainable, non_trainable, inputs, training=True
            )
            return non_trainable

        compiled[key] = _trace(updated)
    forward = compiled[key]
    position = {id(v): i for i, v in enumerate(net.non_trainable_variables)}
    targets = [v for bn in bns for v in (bn.moving_mean, bn.moving_variance)]
    count, means = 0, None
    for count, x in enumerate(batches, start=1):
        values = forward(
            [keras.ops.convert_to_tensor(v) for v in net.trainable_variables],
            [keras.ops.convert_to_tensor(v) for v in net.non_trainable_variables],
            keras.ops.convert_to_tensor(x),
        )
        batch = [values[position[id(v)]] for v in targets]
        if means is None:
            means = batch
        else:  # running mean: m + (b - m) / count
            means = [m + (b - m) / count for m, b in zip(means, batch, strict=True)]
    for v, m in zip(targets, means or [], strict=True):
        v.assign(m)
    return count


def accuracy(model, x, y, batch_size=512):
    """Top-1 accuracy of a logits model on numpy data."""
    logits = model.predict(x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(y)))


def train_full_precision(model, train, epochs, batch_size, verbose=0, learning_rate=1e-3):
    """Adam with linear decay on the task loss, then BatchNorm statistics re-estimated.

    Args:
        model: the full-precision model (trained in place).
        train: ``(x, y)`` numpy arrays.
        epochs, batch_size, verbose, learning_rate: as in ``keras.Model.fit``.

    Returns:
        ``model``.
    """
    x, y = train
    steps = epochs * int(np.ceil(len(x) / batch_size))
    model.compile(
        keras.optimizers.Adam(linear_decay(learning_rate, steps)),
        task_loss(),
        metrics=["accuracy"],
        jit_compile=jit_compile(),
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=verbose)
    order = np.random.default_rng(0).permutation(len(x))[: 20 * batch_size]
    recalibrate_batchnorm(
        model, (x[order[i : i + batch_size]] for i in range(0, len(order), batch_size))
    )
    return model


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
