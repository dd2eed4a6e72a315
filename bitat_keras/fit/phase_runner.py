"""How one phase of Algorithm 1 runs, and the state that a resumed run rebuilds.

``progressive.py`` holds Algorithm 1 itself (which phase comes when, with which weights
training); this module holds what every phase shares: the gated network and its trainer
(``phases``), the data, fitting a phase with a fresh optimizer on a given set of
trainable weights, stopping on a non-finite loss, BatchNorm re-estimation, validation, the
returned plain binary model, and the checkpoint form of the blocks.
"""

import collections.abc
import contextlib
import dataclasses
import time

import keras
from keras import ops

from bitat_keras.fit import phases, training
from bitat_keras.fit.batches import fit_input
from bitat_keras.fit.batchnorm import recalibrate_batchnorm
from bitat_keras.fit.data import TrainData
from bitat_keras.fit.teacher import check_pretrained
from bitat_keras.graph.binarization_plan import plan
from bitat_keras.graph.binarize import binarize
from bitat_keras.graph.structure import eligible_layers, flatten_model
from bitat_keras.graph.thresholds import set_thresholds
from bitat_keras.inspect.callbacks import flip_rate, kernel_signs
from bitat_keras.method import transform
from bitat_keras.method.block import BlockTransform
from bitat_keras.method.config import check_phase_steps
from bitat_keras.method.trained_block import TrainedBlock, partition

__all__ = ["NonFiniteLossError", "PhaseRecord", "PhaseRunner", "timed"]


@dataclasses.dataclass(eq=False)
class PhaseRecord(collections.abc.Mapping):
    """What one phase of Algorithm 1 did: an entry of ``BiTATResult.history``.

    Read its fields as attributes or by name (``record["val_accuracy"]``); a field the
    phase did not measure is None and absent from the mapping (``"val_loss" in record`` is
    False without validation data), except layer, index and phase, which every record has;
    ``dict(record)`` is the record as JSON keeps it.

    Attributes:
        layer: the layer being binarized, or ``"*"`` for a phase over all layers.
        index: that layer's position among the binarized layers (None for ``"*"``).
        phase: ``"activations"``, ``"quantize"``, ``"finetune"`` or ``"final"``.
        seconds: wall seconds by kind of work: the phase's own kind (its optimizer steps,
            tracing included), ``statistics``, ``grouping``, ``pca``, ``thresholds``,
            ``batchnorm``, ``evaluate``, ``diagnostics``, ``teacher`` (its logits of the
            training images, in the first distilling phase).
        epochs, steps: the phase's epochs and optimizer steps per epoch.
        loss, accuracy: the training loss and accuracy per epoch.
        compile_seconds: seconds spent tracing the phase's step (inside its own kind).
        flip_rate: per trained binary kernel, the fraction of its signs that changed.
        val_loss, val_accuracy: on the validation data, after the phase.
        bn_batches: batches of the last BatchNorm re-estimation in this phase.
        input_dims, groups: the layer's input dimensions d and its group count k.
        gradient_ratio: ||d(lam penalty)/dW|| / ||d loss/dW|| at the phase's start.
        penalty, reg, l1: the Eq. 13 terms of the layer's block after the phase.

    Example:
        >>> r = PhaseRecord("conv2", 1, "quantize")
        >>> r.seconds["quantize"] = 12.5
        >>> r["phase"], "val_accuracy" in r
        ('quantize', False)
    """

    layer: str
    index: int | None
    phase: str
    seconds: dict = dataclasses.field(default_factory=dict)
    epochs: int | None = None
    steps: int | None = None
    loss: list | None = None
    accuracy: list | None = None
    compile_seconds: float | None = None
    flip_rate: dict | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    bn_batches: int | None = None
    input_dims: int | None = None
    groups: int | None = None
    gradient_ratio: float | None = None
    penalty: float | None = None
    reg: float | None = None
    l1: float | None = None

    def __getitem__(self, key):
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key):
        return key in _RECORD_FIELDS and (key in _IDENTITY or getattr(self, key) is not None)

    def __iter__(self):
        return (name for name in _RECORD_FIELDS if name in self)

    def __len__(self):
        return sum(1 for _ in self)

    @classmethod
    def from_dict(cls, record):
        """A record from ``dict(record)`` (a checkpoint's history)."""
        return cls(**{k: v for k, v in record.items() if k in _RECORD_FIELDS})

    @property
    def training_seconds(self):
        """Seconds of the phase's optimizer steps (tracing included)."""
        return self.seconds.get(self.phase, 0.0)


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(PhaseRecord))
_IDENTITY = ("layer", "index", "phase")  # in every record's mapping, None or not


@contextlib.contextmanager
def timed(record, kind):
    """Add the wall time of the ``with`` body to ``record.seconds[kind]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        record.seconds[kind] = record.seconds.get(kind, 0.0) + time.perf_counter() - start


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; ``.model`` holds the last good state."""

    def __init__(self, message, model=None, history=None):
        super().__init__(message)
        self.model = model
        self.history = history


def _resolve_loss(model):
    loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    return loss or training.task_loss()


class PhaseRunner:
    """The state of one ``progressive_fit`` call and how one phase runs (kept in one place
    so that resume can rebuild it): the gated network and its ``PhaseTrainer``, the blocks,
    the data, the history; fit a phase on a set of trainable weights, stop and restore on a
    non-finite loss, re-estimate BatchNorm, evaluate, save and restore the blocks.

    Args:
        model: the pre-trained full-precision model.
        train_data, validation_data: as ``progressive_fit`` takes them.
        config: a ``BiTATConfig``.
        callbacks: Keras callbacks passed to every phase's ``fit``.
        verbose: Keras verbosity; truthy also prints the layer level.

    Example:
        >>> runner = PhaseRunner(fp_model, (x, y), BiTATConfig(), None, [], 0)  # doctest: +SKIP
        >>> runner.names  # the layers Algorithm 1 binarizes  # doctest: +SKIP
    """

    def __init__(self, model, train_data, config, validation_data, callbacks, verbose):
        self.config = config
        self.callbacks = list(callbacks or [])
        self.verbose = verbose
        self.loss = _resolve_loss(model)
        self.data = TrainData(train_data, model, config.batch_size)
        model = check_pretrained(
            model,
            self.data,
            teacher=config.distillation != "none",
            seed=config.seed,
        )
        self.plan = plan(
            model,
            self.data.images(config.stats_images, config.seed),
            seed=config.seed,
            warn=True,
        )
        if verbose:
            print(self.plan, flush=True)
        self.plan.check()
        model = flatten_model(model)  # nested sub-models: one flat network (the plan says so)
        plain = binarize(
            model,
            input_quantizer=config.input_quantizer,
            kernel_quantizer=config.kernel_quantizer,
            thresholds=self.plan.thresholded,
        )
        self.names = eligible_layers(plain)
        if not self.names:
            raise ValueError(
                f"Model {model.name!r} has no layer progressive_fit can binarize (it needs "
                "regular, undilated Conv2D layers besides the first conv and the "
                f"classifier):\n{self.plan}"
            )
        self.net = phases.gated_model(plain, self.names)
        self.position = {layer.name: i for i, layer in enumerate(self.net.layers)}
        bn = keras.layers.BatchNormalization
        self.bns = [layer for layer in self.net.layers if isinstance(layer, bn)]
        self.val = None
        if validation_data is not None:
            self.val = TrainData(validation_data, self.net, config.batch_size, "validation_data")
        check_phase_steps(config, self.data.steps, warn=True)
        self.dims = {n: transform.input_dims(self.net.get_layer(n)) for n in self.names}
        sizes = {n: self.net.get_layer(n).kernel_size for n in self.names}
        self.block_names = partition(sizes, config.blocks)
        if config.transform == "intra":  # one transform per layer
            self.block_names = [[n] for n in self.names]
        self.block_index = {n: i for i, b in enumerate(self.block_names) for n in b}
        teacher = None
        if config.distillation != "none":  # a frozen copy of the pre-trained model
            teacher = keras.models.clone_model(model)
            teacher.set_weights(model.get_weights())
        self.trainer = phases.PhaseTrainer(
            self.net,
            self.names,
            [
                BlockTransform.sized_for(
                    {n: self.dims[n] for n in names}, config, f"block_transform_{i}"
                )
                for i, names in enumerate(self.block_names)
            ],
            self.block_names,
            teacher,
        )
        self.trainer.compile(loss=self.loss, metrics=["accuracy"])  # evaluate() before a phase
        self.example = self.data.sample(2, config.seed)  # builds each phase's metrics
        self.ckpt = None
        self.bn_stale = False  # the pre-trained statistics hold until a phase trains
        self.history = []
        self.transforms = []  # closed blocks (TrainedBlock)
        self.grouping = {}  # layer name -> (group ids or None, k) once it has joined

    # -- helpers -------------------------------------------------------------------------
    def log(self, message):
        if self.verbose:
            print(f"[BiTAT] {message}", flush=True)

    def phase_seed(self, index, part):
        """The data-order seed of a phase: ``part`` 0 quantize, 1 fine-tune (or, after the
        last layer, the activation phase), 2 the final phase."""
        return self.config.seed * 7919 + 2 * index + part

    def trainable_above(self, boundary, block=None):
        """ids of the weights that train: every layer above ``net.layers[boundary]``, and
        the s and V of ``block``; not the input threshold of a layer whose input stays real
        in the phase (it does not enter the loss: Keras would warn of a missing gradient)."""
        ids = phases.weights_above(self.net, self.position, boundary)
        for name, (binary_input, _) in zip(self.names, self.trainer.binary_state(), strict=True):
            threshold = self.net.get_layer(name).threshold
            if threshold is not None and not binary_input:
                ids.discard(id(threshold))
        if block is not None and self.trainer.blocks[block].s is not None:
            ids.update({id(self.trainer.blocks[block].s), id(self.trainer.blocks[block].v)})
        return ids

    def fit(self, record, lr, epochs, trainable, seed):
        guard = phases.PhaseMonitor()
        if self.trainer.distilling and self.data.teacher_pass_due:  # once, if it can
            with timed(record, "teacher"):
                self.data.cache_teacher(self.trainer.teacher)
        kwargs, steps = self.data.phase_kwargs(epochs, seed)
        layers = {name: self.net.get_layer(name) for name in self.names}
        moving = {  # binarized kernels that train in this phase: their sign flips are logged
            name: layer
            for name, layer in layers.items()
            if id(layer.kernel) in trainable and phases.numpy_float(layer.gates.kernel) > 0.5
        }
        signs = {name: kernel_signs(layer) for name, layer in moving.items()}
        start = time.perf_counter()
        with self.trainer.phase(trainable, self.loss, lr, steps, self.example):
            hist = self.trainer.fit(
                **fit_input(kwargs),
                callbacks=[guard, *self.callbacks],
                verbose=self.verbose,
            )
        record.seconds[record.phase] = time.perf_counter() - start
        record.flip_rate = {  # fraction of signs that changed during the phase
            name: flip_rate(signs[name], kernel_signs(layer)) for name, layer in moving.items()
        }
        record.compile_seconds = guard.compile_seconds()  # included in the fit time
        record.epochs = epochs
        record.steps = steps
        record.loss = [float(v) for v in hist.history.get("loss", [])]
        record.accuracy = [float(v) for v in hist.history.get("accuracy", [])]
        return guard

    def where(self, record):
        """The phase's place in the run, for messages: "layer 3/8 'conv3'" or "all 8 layers"."""
        total = len(self.names)
        if record.index is None:
            return f"all {total} layers"
        return f"layer {record.index + 1}/{total} {record.layer!r}"

    def evaluate(self, record):
        if self.val is None:
            return
        self.recalibrate(record, record.index)
        start = time.perf_counter()
        distill = self.trainer.distilling
        self.trainer.set_distill(False)
        loss, acc = self.trainer.evaluate(**self.val.eval_kwargs(), verbose=0)[:2]
        self.trainer.set_distill(distill)
        record.val_loss, record.val_accuracy = float(loss), float(acc)
        record.seconds["evaluate"] = time.perf_counter() - start

    def run_phase(self, record, lr, epochs, trainable, seed, before=None):
        """Fit ``record``'s phase: ``epochs`` epochs (data order from ``seed``) of a fresh
        Adam at ``lr`` over the ``trainable`` weights (ids). On a non-finite loss put
        everything back as it was before the phase (``before``: the trainer's weights, gates
        included, taken before the caller switched any gate) and raise; then evaluate."""
        snapshot = self.trainer.get_weights() if before is None else before
        guard = self.fit(record, lr, epochs, trainable, seed)
        if guard.bad is not None:
            batch, value = guard.bad
            self.trainer.set_weights(snapshot)
            raise NonFiniteLossError(
                f"Non-finite loss ({value}) at {self.where(record)}, phase {record.phase!r}, "
                f"batch {batch}. The model is restored to its state before this phase; the "
                "checkpoint (if any) keeps the last completed layer. Lower the learning rate "
                "or lam; `bk.plan(model, data)` shows the inputs and structure that binarize "
                "badly.",
                model=self.model(),
                history=self.history,
            )
        self.bn_stale = True
        self.evaluate(record)
        self.history.append(record)

    def checkpoint(self, record, index, completed, final=False):
        """With a ``checkpoint_dir``: save the state after ``completed`` layers (BatchNorm
        statistics re-estimated first, as a resumed run expects them)."""
        if self.ckpt is None:
            return
        self.recalibrate(record, index)
        history = [dict(r) for r in self.history]
        self.ckpt.save(self.net, completed, history, *self.block_state(), final=final)

    def recalibrate(self, record, index):
        """Re-estimate every BatchNorm's moving statistics, when training changed them
        since the last time: they matter only in inference mode (thresholds, evaluation,
        checkpoints, the gradient ratio, the returned model; not the next layer's input
        statistics, which run in training mode), and the
        estimate does not depend on their old values."""
        if not self.bn_stale:
            return
        start = time.perf_counter()
        seed = self.config.seed + (index if index is not None else len(self.names))
        batches = self.data.batches(
            self.config.bn_recalibration_batches, seed, self.data.merge_for()
        )
        # through the trainer, whose variables include the gates that the network's forward
        # reads: its traced forward is reused (the network's Python state never changes
        # outside a phase), so all its state must be arguments
        record.bn_batches = recalibrate_batchnorm(
            self.trainer, batches, self.bns, reuse_key="phase_trainer"
        )
        record.seconds["batchnorm"] = time.perf_counter() - start
        self.bn_stale = False

    def task_phase(self, record, seed, lr, epochs, boundary):
        """Train the layers above ``boundary`` on the task loss (or the teacher's
        distribution, unless distillation is "none"): the fine-tune, activation and final
        phases."""
        self.trainer.set_block(None)
        self.trainer.set_distill(self.config.distillation != "none")
        trainable = self.trainable_above(boundary)
        self.run_phase(record, lr, epochs, trainable, seed)

    def model(self):
        """A plain binary model (``BinaryConv2D`` layers) in the network's current state."""
        cfg = self.config
        state = dict(zip(self.names, self.trainer.binary_state(), strict=True))

        def quantizers_of(name):
            inputs, kernel = state[name]
            return {
                "input_quantizer": cfg.input_quantizer if inputs else None,
                "kernel_quantizer": cfg.kernel_quantizer if kernel else None,
            }

        return phases.clean_model(self.net, self.names, quantizers_of)

    def binarize_activations(self):
        """Every eligible layer gets binary inputs (its weights stay as they are)."""
        for i in range(len(self.names)):
            self.trainer.set_binary(i, inputs=True)

    def init_thresholds(self, record, index, names, seed):
        """Initialise the input thresholds of ``names`` (those the plan gave one) from
        their inputs now, with the layers below in their current state."""
        names = [n for n in names if n in self.plan.thresholded]
        if names:
            self.recalibrate(record, index)  # thresholds read inference-mode inputs
            with timed(record, "thresholds"):
                images = self.data.images(self.config.stats_images, seed)
                set_thresholds(self.net, names, images)

    # -- checkpoint (de)serialization of the blocks ------------------------------------------
    def block_state(self):
        """Every block's trainer variables (s, V, gates of its members, group ids: their
        one copy in the checkpoint), each joined layer's slot count and the closed
        blocks."""
        meta = {"transforms": [t.layers for t in self.transforms], "grouping": {}}
        arrays = {}
        for i, block in enumerate(self.trainer.blocks):
            for j, w in enumerate(block.weights):
                arrays[f"b{i}_{j}"] = ops.convert_to_numpy(w)
        for name, (_, k) in self.grouping.items():
            meta["grouping"][name] = k
        for i, t in enumerate(self.transforms):
            arrays.update(t.checkpoint_arrays(i))
        return meta, arrays

    def restore(self, state):
        completed = state["completed"]
        if self.config.activations_first_epochs:
            self.binarize_activations()
        for i in range(completed):
            self.trainer.set_binary(i, inputs=True, kernel=True)
        self.ckpt.load_weights(self.net, state)
        self.bn_stale = False  # saved right after a re-estimation
        self.history = [PhaseRecord.from_dict(r) for r in state["history"]]
        arrays = state["block_arrays"] or {}
        meta = state["block_meta"]
        for i, block in enumerate(self.trainer.blocks):
            for j, w in enumerate(block.weights):
                w.assign(arrays[f"b{i}_{j}"])
        for name, k in meta["grouping"].items():  # the group ids from the block's variables
            block = self.trainer.blocks[self.block_index[name]]
            ids = block.ids[block.names.index(name)]
            grouped = ids is not None and k != self.dims[name]
            self.grouping[name] = (ops.convert_to_numpy(ids) if grouped else None, k)
        self.transforms = [
            TrainedBlock.from_checkpoint(layers, self.grouping, self.dims, arrays, i)
            for i, layers in enumerate(meta["transforms"])
        ]
        return completed
