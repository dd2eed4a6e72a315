"""Several processes training one model: which process this is, the chief's value for all,
and two gaps of Keras' TensorFlow trainer under ``MultiWorkerMirroredStrategy``.

Under several JAX processes each one feeds its share of every batch (``batch_part``), and
Keras is told not to shard those batches again (``keras_fit_fixes``).

A progressive run makes decisions from data between its phases (the input statistics, the
groups, s and V, the thresholds, the BatchNorm re-estimation). Every process must make the
same ones, or the processes would train different networks: so the samples they are made
from are taken from the chief (``broadcast``). Only the chief writes files (``is_chief``).

Keras 3 (3.15) does not run ``fit`` under ``tf.distribute.MultiWorkerMirroredStrategy``
(keras-team/keras#20585): ``fit`` reduces its first batch across workers with
``strategy.reduce`` on the whole (x, y) structure, which TensorFlow's collective reduce
cannot take, and the logs of each step are reduced with ``axis=0``, which fails for the
scalar loss and metrics. ``keras_fit_fixes`` mends both for the duration of a call, only
when such a strategy with more than one worker is active.
"""

import contextlib
import threading

import keras
import numpy as np

from bitat_keras.fit import backend

__all__ = [
    "batch_part",
    "broadcast",
    "is_chief",
    "keras_fit_fixes",
    "process_count",
    "process_index",
]

_LOCK = threading.Lock()


def process_count():
    """How many processes train the model: the workers of a multi-worker ``tf.distribute``
    strategy, or JAX's processes (``keras.distribution.initialize``); 1 otherwise."""
    strategy = backend.multi_worker_strategy()
    if strategy is not None:
        return strategy.num_replicas_in_sync // len(strategy.extended.worker_devices)
    return backend.jax_process_count()


def process_index():
    """This process's place among ``process_count()`` (0: the chief). TensorFlow orders a
    cluster's chief task first, then the workers by index, as its replica ids do."""
    strategy = backend.multi_worker_strategy()
    if strategy is not None:
        resolver = strategy.cluster_resolver
        if resolver.task_type == "chief":
            return 0
        has_chief = "chief" in resolver.cluster_spec().as_dict()
        return int(resolver.task_id) + int(has_chief)
    if backend.jax_process_count() > 1:
        import jax

        return jax.process_index()
    return 0


def is_chief():
    """True in the process that writes checkpoints and results (the only one, alone)."""
    return process_index() == 0


def batch_part():
    """``(index, count)`` when this process must feed only its share of every batch (several
    JAX processes: Keras assembles the global batch from each process's part, in process
    order), else None (one process; ``tf.distribute`` shards the batches itself)."""
    count = backend.jax_process_count()
    if count == 1:
        return None
    import jax

    return jax.process_index(), count


def broadcast(array):
    """The chief's ``array`` in every process (the same shape and dtype everywhere; a
    no-op in a single process). Collective: every process must call it, in the same
    order."""
    array = np.asarray(array)
    strategy = backend.multi_worker_strategy()
    if strategy is not None:
        return _tf_broadcast(strategy, array)
    if backend.jax_process_count() > 1:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.broadcast_one_to_all(array))
    return array


_SHARE = {}  # one traced broadcast per strategy (traced again only for a new shape)


def _tf_broadcast(strategy, array):
    import tensorflow as tf

    if id(strategy) not in _SHARE:

        def contribute(value):
            # Replica 0 is the chief's first device: its value plus zeros from every other
            # replica (an exact sum; the values are finite, as TrainData checks).
            ctx = tf.distribute.get_replica_context()
            mine = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), value.dtype)
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, value * mine)

        _SHARE.clear()  # a strategy of an earlier run is not used again
        _SHARE[id(strategy)] = tf.function(
            lambda value: strategy.run(contribute, args=(value,)), reduce_retracing=True
        )
    dtype = array.dtype
    value = tf.constant(array.astype(np.float64) if dtype.kind in "iub" else array)
    shared = strategy.experimental_local_results(_SHARE[id(strategy)](value))[0]
    return np.asarray(shared).astype(dtype)


@contextlib.contextmanager
def keras_fit_fixes():
    """Within the block, Keras' TensorFlow ``fit``/``evaluate``/``predict`` work under a
    multi-worker strategy, and under several JAX processes Keras takes each process's
    batches as its share (see the module's docstring); in one process nothing changes."""
    if batch_part() is not None:
        with _process_local_batches():
            yield
        return
    strategy = backend.multi_worker_strategy()
    if strategy is None:
        yield
        return
    tf_trainer = keras_private_trainer()
    with _LOCK:
        build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
        reduce = tf_trainer.reduce_per_replica
        tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _local_symbolic_build(build)
        tf_trainer.reduce_per_replica = _elementwise_mean(reduce)
        try:
            yield
        finally:
            tf_trainer.TensorFlowTrainer._maybe_symbolic_build = build
            tf_trainer.reduce_per_replica = reduce


# The Keras-private functions keras_fit_fixes wraps, with the parameters the wrappers were
# written for (Keras 3.15): another signature means another Keras, whose fit may need other
# fixes, so the wrappers refuse to run rather than guess.
KERAS_PRIVATE = {
    "TensorFlowTrainer._maybe_symbolic_build": ("self", "iterator", "data_batch"),
    "reduce_per_replica": ("values", "strategy", "reduction"),
}


def keras_private_trainer():
    """Keras' private TensorFlow trainer module, after checking that the functions
    ``keras_fit_fixes`` wraps have the parameters in ``KERAS_PRIVATE``; a RuntimeError
    naming the Keras version otherwise."""
    import inspect

    from keras.src.backend.tensorflow import trainer

    for path, expected in KERAS_PRIVATE.items():
        fn = trainer
        for part in path.split("."):
            fn = getattr(fn, part, None)
        found = None if fn is None else tuple(inspect.signature(fn).parameters)
        if found != expected:
            raise RuntimeError(
                f"Multi-worker training under tf.distribute wraps Keras' private "
                f"`keras.src.backend.tensorflow.trainer.{path}`{expected}, written for Keras "
                f"3.15; Keras {keras.version()} has {found or 'no such function'}. Use "
                "Keras 3.15 for multi-worker TensorFlow training, or JAX's processes."
            )
    return trainer


@contextlib.contextmanager
def _process_local_batches():
    """Several JAX processes: the batches progressive_fit and the baselines give Keras are
    each process's share already (``SeededBatches``), so Keras must not shard them again."""
    distribution = keras.distribution.distribution()
    if distribution is None or not distribution.auto_shard_dataset:
        yield
        return
    distribution.auto_shard_dataset = False
    try:
        yield
    finally:
        distribution.auto_shard_dataset = True


def _local_symbolic_build(build):
    """Keras builds the model from one batch, before training, for its shapes only: take
    this worker's part of that batch instead of reducing it across workers."""
    import tensorflow as tf

    def symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            strategy = self.distribute_strategy
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(
                    lambda v: (
                        strategy.experimental_local_results(v)[0]
                        if isinstance(v, tf.distribute.DistributedValues)
                        else v
                    ),
                    next(batches),
                )
                break
        return build(self, data_batch=data_batch)

    return symbolic_build


def _elementwise_mean(reduce):
    """Each step's logs (scalars) averaged over every replica of every worker, element by
    element, as ``MirroredStrategy`` averages them over one machine's replicas; other
    reductions (``predict``'s concatenation) as Keras makes them."""
    import tensorflow as tf

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean"):
            return reduce(values, strategy, reduction)

        def mean(v):
            if not isinstance(v, tf.distribute.DistributedValues):
                return v
            return strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)

        return keras.tree.map_structure(mean, values)

    return reduce_per_replica
