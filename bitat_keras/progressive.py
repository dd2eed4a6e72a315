"""Algorithm 1: layer-progressive binarization with the BiTAT dependency transform."""

import dataclasses
import json
import math
import time

import keras
import numpy as np
from keras import ops

from bitat_keras import phases, training, transform
from bitat_keras._data import TrainData
from bitat_keras.block import BlockTransform
from bitat_keras.callbacks import flip_rate, kernel_signs
from bitat_keras.checkpoint import Checkpointer, weights_digest
from bitat_keras.config import BiTATConfig, check_phase_steps
from bitat_keras.layers import BinaryConv2D
from bitat_keras.models import binarize, check_model, eligible_layers
from bitat_keras.statistics import patch_rows
from bitat_keras.training import recalibrate_batchnorm

__all__ = [
    "BiTATResult",
    "BlockTransform",
    "NonFiniteLossError",
    "progressive_fit",
    "recalibrate_batchnorm",
]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; ``.model`` holds the last good state."""

    def __init__(self, message, model=None, history=None):
        super().__init__(message)
        self.model = model
        self.history = history


@dataclasses.dataclass
class BiTATResult:
    """What ``progressive_fit`` returns.

    Attributes:
        model: the binarized ``keras.Model`` (compiled with the task loss and accuracy).
        history: per-layer records: layer, index, phase, epochs, loss per epoch, penalty,
            validation loss/accuracy (if validation data were given) and seconds per step.
        config: the ``BiTATConfig`` used.
        transforms: per block, the trained ``s``, ``V``, the layers and their group ids.
        v_parameters: ``{"full": ..., "used": ..., "ratio": ...}``: entries of V as used
            against the full (un-aggregated, cross-layer) V over all blocks.
        seconds: wall time of the whole run (this process only, when resumed).
        traces: how many times the training step was traced (compiled): one for the whole
            run, plus one for a last partial batch of another size.
    """

    model: keras.Model
    history: list
    config: BiTATConfig
    transforms: list
    v_parameters: dict
    seconds: float
    traces: int = 0


class _PhaseMonitor(keras.callbacks.Callback):
    """Stops training at the first non-finite batch loss and remembers where; times batches
    so the compile overhead of a phase can be told apart from its training time."""

    def __init__(self):
        super().__init__()
        self.bad = None
        self.batch_seconds = []
        self._last = None

    def on_train_begin(self, logs=None):
        self._last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self.batch_seconds.append(now - self._last)
        self._last = now
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.bad = (batch, float(loss))
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._last = time.perf_counter()  # exclude end-of-epoch work from the next batch

    def compile_seconds(self):
        """First batch (trace/compile + one step) minus a typical step."""
        if len(self.batch_seconds) < 2:
            return 0.0
        return max(self.batch_seconds[0] - float(np.median(self.batch_seconds[1:])), 0.0)


def _make_blocks(net, names, spec):
    if spec == "auto":
        blocks = []
        for name in names:
            if not blocks or max(net.get_layer(name).kernel_size) > 1:
                blocks.append([])
            blocks[-1].append(name)
        return blocks
    if isinstance(spec, int):
        return [list(names[i : i + spec]) for i in range(0, len(names), spec)]
    blocks = [list(b) for b in spec]
    flat = [n for b in blocks for n in b]
    if flat != list(names):
        raise ValueError(
            "`blocks` must list every eligible layer once, in order, bottom to top. "
            f"Expected the order {list(names)}. Received: {blocks}"
        )
    return blocks


def _resolve_loss(model):
    loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    return loss or training.task_loss()


class _Run:
    """State of one progressive_fit call (kept in one place so resume can rebuild it)."""

    def __init__(self, model, train_data, config, validation_data, callbacks, verbose):
        self.config = config
        self.callbacks = list(callbacks or [])
        self.verbose = verbose
        self.loss = _resolve_loss(model)
        plain = binarize(
            model, input_quantizer=config.input_quantizer, kernel_quantizer=config.kernel_quantizer
        )
        self.names = eligible_layers(plain)
        if not self.names:
            raise ValueError(
                f"Model {model.name!r} has no layer progressive_fit can binarize: it needs "
                "regular Conv2D layers besides the first conv and the classifier."
            )
        self.net = phases.gated_model(plain, self.names)
        self.position = {layer.name: i for i, layer in enumerate(self.net.layers)}
        bn = keras.layers.BatchNormalization
        self.bns = [layer for layer in self.net.layers if isinstance(layer, bn)]
        self.data = TrainData(train_data, self.net, config.batch_size)
        self.val = None
        if validation_data is not None:
            self.val = TrainData(validation_data, self.net, config.batch_size, "validation_data")
        check_phase_steps(config, self.data.steps, warn=True)
        self.block_names = _make_blocks(self.net, self.names, config.blocks)
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
            [self._block_transform(i, b) for i, b in enumerate(self.block_names)],
            self.block_names,
            teacher,
        )
        self.optimizer = phases.PhaseAdam()
        self.trainer.compile(
            optimizer=self.optimizer,
            loss=self.loss,
            metrics=["accuracy"],
            jit_compile=training.jit_compile(),
        )
        self.optimizer.build(self.trainer.trainable_variables)
        self.ckpt = None
        self.bn_stale = True
        self.history = []
        self.transforms = []  # closed blocks: {"layers", "s", "v", "ids", "ks", "dims"}
        self.grouping = {}  # layer name -> (group ids or None, k) once it has joined

    # -- helpers -------------------------------------------------------------------------
    def log(self, message):
        if self.verbose:
            print(f"[BiTAT] {message}", flush=True)

    def phase_seed(self, index, part):
        """The data-order seed of a phase: ``part`` 0 quantize, 1 fine-tune (or, after the
        last layer, the activation phase), 2 the final phase."""
        return self.config.seed * 7919 + 2 * index + part

    def _block_transform(self, index, names):
        """A block's s and V with one slot per member, sized before any training."""
        cfg = self.config
        members = []
        for name in names:
            d = int(np.prod(self.net.get_layer(name).kernel.shape[:3]))
            reduce = cfg.transform in ("aggregated", "filter") and d > cfg.groups
            k = cfg.groups if reduce else d
            members.append((name, np.zeros(d, "int32") if reduce else None, k))
        size = sum(k for _, _, k in members)
        return BlockTransform(
            np.zeros(size),
            np.zeros((size, size)),
            0.0,
            members,
            cfg.lam,
            cfg.gamma,
            cfg.reg_weight,
            use_transform=cfg.transform != "none",
            penalty_gradient=cfg.penalty_gradient,
            kernel_quantizer=cfg.kernel_quantizer,
            active=0,
            name=f"block_transform_{index}",
        )

    def trainable_above(self, boundary, block=None):
        """ids of the weights that train: every layer above ``net.layers[boundary]``, and
        the s and V of ``block``."""
        ids = phases.weights_above(self.net, self.position, boundary)
        if block is not None and self.trainer.blocks[block].s is not None:
            ids.update({id(self.trainer.blocks[block].s), id(self.trainer.blocks[block].v)})
        return ids

    def fit(self, label, lr, epochs, trainable, record, seed):
        guard = _PhaseMonitor()
        kwargs, steps = self.data.phase_kwargs(epochs, seed)
        self.optimizer.start_phase(lr, steps)
        self.optimizer.set_masks(trainable)
        layers = {name: self.net.get_layer(name) for name in self.names}
        moving = {  # binarized kernels that train in this phase: their sign flips are logged
            name: layer
            for name, layer in layers.items()
            if id(layer.kernel) in trainable and phases.numpy_float(layer.gates.kernel) > 0.5
        }
        signs = {name: kernel_signs(layer) for name, layer in moving.items()}
        start = time.perf_counter()
        hist = self.trainer.fit(**kwargs, callbacks=[guard, *self.callbacks], verbose=self.verbose)
        record["seconds"][label] = time.perf_counter() - start
        record["flip_rate"] = {  # fraction of signs that changed during the phase
            name: flip_rate(signs[name], kernel_signs(layer)) for name, layer in moving.items()
        }
        record["compile_seconds"] = guard.compile_seconds()  # included in the fit time
        record["epochs"] = epochs
        record["steps"] = steps
        record["loss"] = [float(v) for v in hist.history.get("loss", [])]
        record["accuracy"] = [float(v) for v in hist.history.get("accuracy", [])]
        return guard

    def evaluate(self, record, index):
        if self.val is None:
            return
        self.recalibrate(record, index)
        start = time.perf_counter()
        distill = phases.numpy_float(self.trainer.distill_gate)
        self.trainer.set_distill(False)
        loss, acc = self.trainer.evaluate(**_eval_kwargs(self.val), verbose=0)[:2]
        self.trainer.distill_gate.assign(distill)
        record["val_loss"], record["val_accuracy"] = float(loss), float(acc)
        record["seconds"]["evaluate"] = time.perf_counter() - start

    def run_phase(self, record, index, label, lr, epochs, trainable, where, seed, before=None):
        """Fit one phase (data order from ``seed``); on a non-finite loss put everything
        back as it was before the phase (``before``: the trainer's weights, gates included,
        taken before the caller switched any gate) and raise; then evaluate."""
        snapshot = self.trainer.get_weights() if before is None else before
        guard = self.fit(label, lr, epochs, trainable, record, seed)
        if guard.bad is not None:
            batch, value = guard.bad
            self.trainer.set_weights(snapshot)
            raise NonFiniteLossError(
                f"Non-finite loss ({value}) at {where}, phase {label!r}, batch {batch}. The "
                "model is restored to its state before this phase; the checkpoint (if any) "
                "keeps the last completed layer. Lower the learning rate or lam.",
                model=self.model(),
                history=self.history,
            )
        self.bn_stale = True
        self.evaluate(record, index)
        self.history.append(record)

    def recalibrate(self, record, index):
        """Re-estimate every BatchNorm's moving statistics, when training changed them
        since the last time: they matter only in inference mode (statistics, evaluation,
        the returned model), and the estimate does not depend on their old values."""
        if not self.bn_stale:
            return
        start = time.perf_counter()
        seed = self.config.seed + (index if index is not None else len(self.names))
        batches = self.data.batches(
            self.config.bn_recalibration_batches, seed, self.data.merge_for()
        )
        record["bn_batches"] = training.recalibrate_batchnorm(self.net, batches, self.bns)
        record["seconds"]["batchnorm"] = time.perf_counter() - start
        self.bn_stale = False

    def task_phase(self, record, index, seed, lr, epochs, boundary, where):
        """Train the layers above ``boundary`` on the task loss (or the teacher's
        distribution, unless distillation is "none"): the fine-tune, activation and final
        phases."""
        self.trainer.set_block(None)
        self.trainer.set_distill(self.config.distillation != "none")
        trainable = self.trainable_above(boundary)
        self.run_phase(record, index, record["phase"], lr, epochs, trainable, where, seed)

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

    # -- optional first phase: every layer's input activations binarized at once ----------
    def binarize_activations(self):
        for i in range(len(self.names)):
            self.trainer.set_binary(i, inputs=True)

    def activation_phase(self):
        """All eligible layers get binary inputs (real weights) and the whole network is
        trained for ``activations_first_epochs``; the progressive loop then binarizes the
        weights layer by layer (ReActNet's order of steps, before BiTAT's)."""
        cfg = self.config
        record = {"layer": "*", "index": None, "phase": "activations", "seconds": {}}
        self.log(
            f"all {len(self.names)} layers: binarize activations, "
            f"{cfg.activations_first_epochs} epochs"
        )
        before = self.trainer.get_weights()
        self.binarize_activations()
        self.trainer.set_block(None)
        self.trainer.set_distill(cfg.distillation != "none")
        self.run_phase(
            record,
            None,
            "activations",
            cfg.learning_rate,
            cfg.activations_first_epochs,
            self.trainable_above(-1),
            f"all {len(self.names)} layers",
            self.phase_seed(len(self.names), 1),
            before,
        )
        self.recalibrate(record, None)
        if self.ckpt is not None:
            self.ckpt.save(self.net, 0, self.history, *self.block_state())

    # -- Algorithm 1, lines 7-10 -----------------------------------------------------------
    def init_transform(self, index, name, record):
        """Statistics, P and the PCA-initialised expansion of s and V for one layer."""
        cfg = self.config
        layer = self.net.get_layer(name)
        block = self.trainer.blocks[self.block_index[name]]
        j = block.names.index(name)
        d = int(np.prod(layer.kernel.shape[:3]))
        record["input_dims"] = d
        if cfg.transform == "none":
            block.join(j, None, None)
            self.grouping[name] = (None, d)
            record["groups"] = d
            return
        t = time.perf_counter()
        images = self.data.images(cfg.stats_images, cfg.seed + index)
        rows = patch_rows(
            self.net,
            layer,
            images,
            max_rows=cfg.stats_rows,
            seed=cfg.seed + index,
            batch_size=cfg.batch_size,
        )
        record["seconds"]["statistics"] = time.perf_counter() - t
        t = time.perf_counter()
        method = {"aggregated": "kmeans", "filter": "filter"}.get(cfg.transform)
        if method is None or block.ids[j] is None:  # "cross", "intra", small layers: P = I
            ids, k = np.arange(d), d
        else:
            ids, k = transform.group_ids(
                rows,
                cfg.groups,
                method,
                kernel_shape=layer.kernel.shape[:3],
                seed=cfg.seed + index,
                max_iter=cfg.kmeans_max_iter,
            )
        record["seconds"]["grouping"] = time.perf_counter() - t
        t = time.perf_counter()
        reduced = rows if k == d else rows @ transform.reduction_matrix(ids, k).T
        s_new, v_new = transform.pca_init(transform.second_moment(reduced))
        record["seconds"]["pca"] = time.perf_counter() - t
        block.join(j, s_new, v_new, None if k == d else ids)
        self.grouping[name] = (None if k == d else ids, k)
        record["groups"] = k

    def gradient_ratio(self, index, b):
        """||d (lam * penalty) / d W|| / ||d loss / d W|| for the kernel W of the layer being
        quantized, on one batch at the start of its phase (0 without a penalty; None on
        several devices)."""
        block = self.trainer.blocks[b]
        if block.s is None or self.config.lam == 0:
            return 0.0
        if self.data.devices > 1:  # an eager tape cannot read tf.distribute variables
            return None
        kernel = self.net.get_layer(self.names[index]).kernel
        x, y = self.data.sample(self.config.batch_size, self.config.seed + index)
        x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)

        def task():
            return self.trainer.compute_loss(x, y, self.trainer(x), training=False)

        def penalty():
            return self.trainer.block_terms(b)[0]

        task_norm = np.linalg.norm(training.gradient(task, kernel))
        penalty_norm = np.linalg.norm(training.gradient(penalty, kernel))
        return float(penalty_norm / max(task_norm, 1e-30))

    def normalize_penalty(self, block_index):
        """inv_energy = 1 / ||diag(s) V^T P W||^2 at the phase's start ("output"), or 1."""
        block = self.trainer.blocks[block_index]
        if self.config.penalty_normalization != "output" or block.s is None:
            return
        kernels = [m.kernel for m in self.trainer.member_layers[block_index]]
        energy = phases.numpy_float(block.output_energy(kernels))
        block.inv_energy.assign(1.0 / max(energy, 1e-12))

    # -- one layer: quantize (Alg. 1 lines 7-12), then fine-tune the layers above -----------
    def step(self, index):
        cfg, name = self.config, self.names[index]
        total = len(self.names)
        record = {"layer": name, "index": index, "phase": "quantize", "seconds": {}}
        self.log(f"layer {index + 1}/{total} {name!r}: quantize, {cfg.epochs_per_layer} epochs")
        before = self.trainer.get_weights()
        self.trainer.set_binary(index, inputs=True, kernel=True)
        self.init_transform(index, name, record)
        b = self.block_index[name]
        self.normalize_penalty(b)
        self.trainer.set_block(b)
        self.trainer.set_distill(cfg.distillation == "all")
        record["gradient_ratio"] = self.gradient_ratio(index, b)
        previous = self.position[self.names[index - 1]] if index else -1
        where = f"layer {index + 1}/{total} {name!r}"
        self.run_phase(
            record,
            index,
            "quantize",
            cfg.learning_rate,
            cfg.epochs_per_layer,
            self.trainable_above(previous, b),
            where,
            self.phase_seed(index, 0),
            before,
        )
        penalty, reg, l1 = self.trainer.block_terms(b)
        record.update(
            penalty=phases.numpy_float(penalty),
            reg=phases.numpy_float(reg),
            l1=phases.numpy_float(l1),
        )
        if cfg.finetune_epochs and index + 1 < total:  # Alg. 1 line 12: sgn(w) frozen
            record = {"layer": name, "index": index, "phase": "finetune", "seconds": {}}
            self.log(
                f"layer {index + 1}/{total} {name!r}: fine-tune the layers above, "
                f"{cfg.finetune_epochs} epochs"
            )
            self.task_phase(
                record,
                index,
                self.phase_seed(index, 1),
                cfg.finetune_learning_rate,
                cfg.finetune_epochs,
                self.position[name],
                where,
            )
        self.recalibrate(record, index)  # for the next layer's statistics and the checkpoint
        last = index + 1 == total
        if last or self.block_index[self.names[index + 1]] != b:
            self.close_block(b)
        if self.ckpt is not None:
            self.ckpt.save(self.net, index + 1, self.history, *self.block_state())

    def final_phase(self):
        """Every layer binarized; every weight trains again, binary layers' latent weights
        included (ReActNet's second step, started from the progressive result)."""
        cfg = self.config
        record = {"layer": "*", "index": None, "phase": "final", "seconds": {}}
        self.log(f"all {len(self.names)} layers: joint fine-tune, {cfg.final_epochs} epochs")
        self.task_phase(
            record,
            None,
            self.phase_seed(len(self.names), 2),
            cfg.finetune_learning_rate,
            cfg.final_epochs,
            -1,
            f"all {len(self.names)} layers",
        )

    def close_block(self, b):
        """Keep the block's trained s and V (active slots only) for the result."""
        block = self.trainer.blocks[b]
        names = self.block_names[b]
        entry = {
            "layers": names,
            "ids": [self.grouping[n][0] for n in names],
            "ks": [self.grouping[n][1] for n in names],
            "dims": [int(np.prod(self.net.get_layer(n).kernel.shape[:3])) for n in names],
            "s": None,
            "v": None,
        }
        if block.s is not None:
            s, v = block.numpy_sv()
            active = block.active_index()
            entry["s"], entry["v"] = s[active], v[np.ix_(active, active)]
        if self.transforms and self.transforms[-1]["layers"] == names:
            self.transforms[-1] = entry
        else:
            self.transforms.append(entry)

    # -- checkpoint (de)serialization of the blocks ------------------------------------------
    def block_state(self):
        """Every block's trainer variables (s, V, gates of its members, group ids) and the
        closed blocks' summaries."""
        meta = {"transforms": [], "grouping": {}}
        arrays = {}
        for i, block in enumerate(self.trainer.blocks):
            for j, w in enumerate(block.weights):
                arrays[f"b{i}_{j}"] = ops.convert_to_numpy(w)
        for name, (ids, k) in self.grouping.items():
            meta["grouping"][name] = k
            if ids is not None:
                arrays[f"ids_{name}"] = np.asarray(ids)
        for i, t in enumerate(self.transforms):
            meta["transforms"].append(t["layers"])
            if t["s"] is not None:
                arrays[f"s{i}"], arrays[f"v{i}"] = t["s"], t["v"]
        return meta, arrays

    def restore(self, state):
        completed = state["completed"]
        if self.config.activations_first_epochs:
            self.binarize_activations()
        for i in range(completed):
            self.trainer.set_binary(i, inputs=True, kernel=True)
        self.ckpt.load_weights(self.net, state)
        self.bn_stale = False  # saved right after a re-estimation
        self.history = state["history"]
        arrays = state["block_arrays"] or {}
        meta = state["block_meta"]
        for i, block in enumerate(self.trainer.blocks):
            for j, w in enumerate(block.weights):
                w.assign(arrays[f"b{i}_{j}"])
        for name, k in meta["grouping"].items():
            self.grouping[name] = (arrays.get(f"ids_{name}"), k)
        for i, _ in enumerate(meta["transforms"]):
            b = self.block_index[meta["transforms"][i][0]]
            self.close_block(b)
            self.transforms[-1]["s"] = arrays.get(f"s{i}")
            self.transforms[-1]["v"] = arrays.get(f"v{i}")
        return completed

    def v_parameters(self):
        full = sum(sum(b["dims"]) ** 2 for b in self.transforms)
        if self.config.transform == "none":
            used = 0
        else:
            used = sum(sum(b["ks"]) ** 2 for b in self.transforms)
        return {"full": int(full), "used": int(used), "ratio": used / full if full else 0.0}


def _eval_kwargs(data):
    kwargs = data.fit_kwargs()
    kwargs.pop("shuffle", None)
    return kwargs


def _fingerprint(config, names, model, data):
    return json.dumps(
        {
            "config": config.fingerprint(),
            "layers": names,
            "params": int(model.count_params()),
            "weights": weights_digest(model),
            "data": data.digest,
        }
    )


def progressive_fit(
    model,
    train_data,
    *,
    config=None,
    validation_data=None,
    callbacks=None,
    checkpoint_dir=None,
    verbose="auto",
):
    """Binarize ``model`` layer by layer, bottom to top, with BiTAT (Algorithm 1).

    For each eligible conv (every regular Conv2D but the first conv and the classifier):
    collect its input statistics with the lower layers in their current (binarized) state,
    build the reduction matrix P (k-means over input dimensions) and PCA-initialised s and V,
    expanding them inside the block (Eq. 11); train the layer binarized, the layers above in
    full precision, with the task loss (or the teacher's distribution) + the Eq. 13 penalty,
    l1 and Reg terms (fresh Adam, linear decay); freeze it (its kernel is exactly
    alpha[o] * sign(w) from then on); fine-tune the layers above. With ``final_epochs`` a
    joint phase then trains every weight again. One traced train step serves every phase
    (``bitat_keras.phases``); BatchNorm statistics are re-estimated before inference-mode use.
    Warns before training when a layer's quantization phase gets too few optimizer steps.

    Args:
        model: a built, pre-trained full-precision Keras model (or one from ``bk.binarize``).
        train_data: ``(x, y)`` numpy arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches.
        config: a ``BiTATConfig`` (its defaults if None; ``BiTATConfig.paper()`` for the
            paper's settings).
        validation_data: optional data of the same kind, evaluated after every phase.
        callbacks: Keras callbacks, passed to every ``fit`` call (each phase).
        checkpoint_dir: folder for per-layer checkpoints; a run restarted with the same
            arguments resumes after the last completed layer (or the final phase).
        verbose: Keras verbosity for the epoch level; any truthy value also prints the
            layer level ("layer k/L").

    Returns:
        A ``BiTATResult``.

    Example:
        >>> result = bk.progressive_fit(fp_model, (x, y), config=bk.BiTATConfig(
        ...     epochs_per_layer=1, finetune_epochs=1, batch_size=128))  # doctest: +SKIP
        >>> binary_model = result.model
    """
    start = time.perf_counter()
    config = config or BiTATConfig()
    if not isinstance(config, BiTATConfig):
        raise TypeError(f"`config` must be a BiTATConfig. Received: {type(config).__name__}")
    check_model(model)
    run = _Run(model, train_data, config, validation_data, callbacks, verbose)
    first, state = 0, None
    if checkpoint_dir is not None:
        run.ckpt = Checkpointer(checkpoint_dir, _fingerprint(config, run.names, model, run.data))
        state = run.ckpt.load()
        if state is not None:
            first = run.restore(state)
            run.log(f"resuming from {checkpoint_dir!r} after layer {first}/{len(run.names)}")
    if config.activations_first_epochs and state is None:
        run.activation_phase()
    for index in range(first, len(run.names)):
        run.step(index)
    if config.final_epochs and not (state is not None and state.get("final_done")):
        run.final_phase()
        run.recalibrate(run.history[-1], None)
        if run.ckpt is not None:
            run.ckpt.save(run.net, len(run.names), run.history, *run.block_state(), final=True)
    net = run.model()
    for layer in net.layers:
        layer.trainable = not isinstance(layer, BinaryConv2D)
    net.compile(loss=run.loss, metrics=["accuracy"])
    return BiTATResult(
        model=net,
        history=run.history,
        config=config,
        transforms=run.transforms,
        v_parameters=run.v_parameters(),
        seconds=time.perf_counter() - start,
        traces=run.trainer.traces,
    )
