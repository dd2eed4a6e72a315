"""Algorithm 1: layer-progressive binarization with the BiTAT dependency transform."""

import dataclasses
import json
import time

import keras
import numpy as np

from bitat_keras.fit import multi_worker, phases, training
from bitat_keras.fit.checkpoint import Checkpointer, CheckpointError, weights_digest
from bitat_keras.fit.data import with_sample_weight
from bitat_keras.fit.phase_runner import NonFiniteLossError, PhaseRecord, PhaseRunner, timed
from bitat_keras.graph.precision import float32_policy
from bitat_keras.graph.structure import check_model
from bitat_keras.method import transform
from bitat_keras.method.config import BiTATConfig
from bitat_keras.method.statistics import patch_rows
from bitat_keras.method.trained_block import TrainedBlock, v_parameters
from bitat_keras.nn.layers import BinaryConv2D

__all__ = [
    "BiTATResult",
    "NonFiniteLossError",
    "PhaseRecord",
    "progressive_fit",
]


@dataclasses.dataclass
class BiTATResult:
    """What ``progressive_fit`` returns.

    Attributes:
        model: the binarized ``keras.Model`` (compiled with the task loss and accuracy).
        history: one ``PhaseRecord`` per phase, in order: layer, index, phase, epochs,
            loss per epoch, penalty, validation loss/accuracy (if validation data were
            given), seconds by kind of work.
        config: the ``BiTATConfig`` used.
        transforms: one ``TrainedBlock`` per block: its layers, their group ids and sizes,
            the trained ``s`` and ``V``.
        v_parameters: ``{"full": ..., "used": ..., "ratio": ...}``: entries of V as used
            against the full (un-aggregated, cross-layer) V over all blocks.
        seconds: wall time of the whole run (this process only, when resumed).
        traces: how many times a training step was traced (compiled): once per phase
            (each phase has its own step), plus once for a last partial batch of another
            size.
        plan: the ``BinarizationPlan`` decided before training (``print(result.plan)``).
    """

    model: keras.Model
    history: list
    config: BiTATConfig
    transforms: list
    v_parameters: dict
    seconds: float
    traces: int = 0
    plan: object = None

    def seconds_by_layer(self):
        """Seconds of every phase summed per layer name, in the order the layers ran
        (``"*"``: the phases over all layers, activations-first and final)."""
        out = {}
        for record in self.history:
            out[record.layer] = out.get(record.layer, 0.0) + sum(record.seconds.values())
        return out

    def seconds_by_kind(self):
        """Seconds summed over the phases per kind of work: the training kinds
        (``quantize``, ``finetune``, ``final``, ``activations``), ``statistics`` (input
        statistics and the penalty's normaliser), ``grouping``, ``pca``, ``thresholds``,
        ``batchnorm`` (re-estimation), ``evaluate``, ``diagnostics`` (the gradient ratio
        and the penalty read-out of the history), ``teacher`` (the teacher's logits of the
        training images); plus ``compile`` (tracing, inside the
        training kinds), ``other`` (the rest of the wall time: building the gated
        network, checkpoints, the returned model), ``overhead`` (wall time that was not a
        traced training step) and ``overhead_share`` (of ``seconds``). For a resumed run
        ``seconds`` counts this process only, while ``history`` holds every phase: its
        overhead is then not meaningful."""
        out = {}
        for record in self.history:
            for kind, value in record.seconds.items():
                out[kind] = out.get(kind, 0.0) + value
            out["compile"] = out.get("compile", 0.0) + (record.compile_seconds or 0.0)
        train = sum(record.training_seconds for record in self.history)
        out["other"] = self.seconds - sum(out.values()) + out["compile"]
        out["overhead"] = self.seconds - train + out["compile"]
        out["overhead_share"] = out["overhead"] / self.seconds if self.seconds else 0.0
        return out


class _Algorithm1(PhaseRunner):
    """Algorithm 1's phases over a ``PhaseRunner``."""

    # -- optional first phase: every layer's input activations binarized at once ----------
    def activation_phase(self):
        """All eligible layers get binary inputs (real weights) and the whole network is
        trained for ``activations_first_epochs``; the progressive loop then binarizes the
        weights layer by layer (ReActNet's order of steps, before BiTAT's)."""
        cfg = self.config
        record = PhaseRecord("*", None, "activations")
        self.log(
            f"{self.where(record)}: binarize activations, {cfg.activations_first_epochs} epochs"
        )
        before = self.trainer.get_weights()
        self.binarize_activations()
        self.init_thresholds(record, None, self.names, cfg.seed)
        self.trainer.set_block(None)
        self.trainer.set_distill(cfg.distillation != "none")
        trainable = self.trainable_above(-1)
        seed = self.phase_seed(len(self.names), 1)
        self.run_phase(
            record, cfg.learning_rate, cfg.activations_first_epochs, trainable, seed, before
        )
        self.checkpoint(record, None, 0)

    # -- Algorithm 1, lines 7-10 -----------------------------------------------------------
    def init_transform(self, index, name, record):
        """Statistics, P and the PCA-initialised expansion of s and V for one layer."""
        cfg = self.config
        layer = self.net.get_layer(name)
        block = self.trainer.blocks[self.block_index[name]]
        j = block.names.index(name)
        d = self.dims[name]
        record.input_dims = d
        if cfg.transform == "none":
            block.join(j, None, None)
            self.grouping[name] = (None, d)
            record.groups = d
            return
        # the statistics run the layers below as a training step does (BatchNorm on batch
        # statistics): what the layer sees while it trains, and no BatchNorm re-estimation
        # (a pass over the data) is needed first; runs with and without checkpoints (whose
        # re-estimated moving statistics these do not read) take the same statistics
        t = time.perf_counter()
        images = self.data.images(cfg.stats_images, cfg.seed + index)
        rows = patch_rows(
            self.net,
            layer,
            images,
            max_rows=cfg.stats_rows,
            seed=cfg.seed + index,
            batch_size=cfg.batch_size,
            training=True,
        )
        record.seconds["statistics"] = time.perf_counter() - t
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
        record.seconds["grouping"] = time.perf_counter() - t
        t = time.perf_counter()
        s_new, v_new = transform.grouped_pca(rows, ids, k)
        record.seconds["pca"] = time.perf_counter() - t
        block.join(j, s_new, v_new, None if k == d else ids)
        self.grouping[name] = (None if k == d else ids, k)
        record.groups = k

    def gradient_ratio(self, index, b):
        """||d (lam * penalty) / d W|| / ||d loss / d W|| for the kernel W of the layer being
        quantized, on one batch at the start of its phase (0 without a penalty; None on
        several devices, where an eager tape cannot read tf.distribute variables)."""
        if self.trainer.blocks[b].s is None or self.config.lam == 0:
            return 0.0
        if self.data.devices > 1:
            return None
        kernel = self.net.get_layer(self.names[index]).kernel
        x, y = self.data.sample(self.config.batch_size, self.config.seed + index)
        return self.trainer.gradient_ratio(b, kernel, x, y)

    # -- one layer: quantize (Alg. 1 lines 7-12), then fine-tune the layers above -----------
    def step(self, index):
        cfg, name = self.config, self.names[index]
        total = len(self.names)
        record = PhaseRecord(name, index, "quantize")
        self.log(f"{self.where(record)}: quantize, {cfg.epochs_per_layer} epochs")
        before = self.trainer.get_weights()
        if not cfg.activations_first_epochs:  # else set with every layer's, at the start
            self.init_thresholds(record, index, [name], cfg.seed + index)
        self.trainer.set_binary(index, inputs=True, kernel=True)
        self.init_transform(index, name, record)
        b = self.block_index[name]
        if cfg.penalty_normalization == "output" and self.trainer.blocks[b].s is not None:
            with timed(record, "statistics"):  # E||(PW)^T o||^2, the penalty's normaliser
                self.trainer.normalize_penalty(b)
        self.trainer.set_block(b)
        self.trainer.set_distill(cfg.distillation == "all")
        if cfg.log_gradient_ratio:
            self.recalibrate(record, index)  # the task gradient runs in inference mode
            with timed(record, "diagnostics"):
                record.gradient_ratio = self.gradient_ratio(index, b)
        previous = self.position[self.names[index - 1]] if index else -1
        trainable = self.trainable_above(previous, b)  # from the layer being quantized up
        seed = self.phase_seed(index, 0)
        self.run_phase(record, cfg.learning_rate, cfg.epochs_per_layer, trainable, seed, before)
        with timed(record, "diagnostics"):
            penalty, reg, l1 = self.trainer.block_terms(b)
            record.penalty = phases.numpy_float(penalty)
            record.reg = phases.numpy_float(reg)
            record.l1 = phases.numpy_float(l1)
        if cfg.finetune_epochs and index + 1 < total:  # Alg. 1 line 12: sgn(w) frozen
            record = PhaseRecord(name, index, "finetune")
            self.log(
                f"{self.where(record)}: fine-tune the layers above, {cfg.finetune_epochs} epochs"
            )
            seed = self.phase_seed(index, 1)
            lr, epochs = cfg.finetune_learning_rate, cfg.finetune_epochs
            self.task_phase(record, seed, lr, epochs, self.position[name])
        last = index + 1 == total
        if last or self.block_index[self.names[index + 1]] != b:
            self.close_block(b)
        self.checkpoint(record, index, index + 1)

    def final_phase(self):
        """Every layer binarized; every weight trains again, binary layers' latent weights
        included (ReActNet's second step, started from the progressive result)."""
        cfg = self.config
        record = PhaseRecord("*", None, "final")
        self.log(f"{self.where(record)}: joint fine-tune, {cfg.final_epochs} epochs")
        seed = self.phase_seed(len(self.names), 2)
        self.task_phase(record, seed, cfg.finetune_learning_rate, cfg.final_epochs, -1)

    def close_block(self, b):
        """Keep the block's trained s and V (active slots only) for the result."""
        names = self.block_names[b]
        closed = TrainedBlock.close(self.trainer.blocks[b], names, self.grouping, self.dims)
        if self.transforms and self.transforms[-1].layers == names:
            self.transforms[-1] = closed
        else:
            self.transforms.append(closed)


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


def _check_same_checkpoint(state, checkpoint_dir):
    """In several processes every one must resume from the chief's checkpoint (the folder
    on storage they all read), or they would train different networks."""
    if multi_worker.process_count() == 1:
        return
    mine = np.array([-1, 0] if state is None else [state["completed"], state["final_done"]])
    chief = multi_worker.broadcast(mine)
    if not np.array_equal(mine, chief):
        raise CheckpointError(
            f"Process {multi_worker.process_index()} finds in checkpoint_dir "
            f"{checkpoint_dir!r} {_describe(mine)}, but the chief finds {_describe(chief)}. "
            "Every process must read the chief's checkpoint: put checkpoint_dir on storage "
            "that all of them share, or copy the chief's folder to each before resuming."
        )


def _describe(completed_final):
    completed, final = (int(v) for v in completed_final)
    if completed < 0:
        return "no checkpoint"
    return f"a checkpoint after layer {completed}" + (" and the final phase" if final else "")


def progressive_fit(
    model,
    train_data,
    *,
    config=None,
    validation_data=None,
    callbacks=None,
    checkpoint_dir=None,
    verbose="auto",
    sample_weight=None,
):
    """Binarize ``model`` layer by layer, bottom to top, with BiTAT (Algorithm 1).

    For each eligible conv (every regular Conv2D but the first conv and the classifier):
    collect its input statistics with the lower layers in their current (binarized) state,
    build the reduction matrix P (k-means over input dimensions) and PCA-initialised s and V,
    expanding them inside the block (Eq. 11); train the layer binarized, the layers above in
    full precision, with the task loss (or the teacher's distribution) + the Eq. 13 penalty,
    l1 and Reg terms (fresh Adam, linear decay); freeze it (its kernel is exactly
    alpha[o] * sign(w) from then on); fine-tune the layers above. With ``final_epochs`` a
    joint phase then trains every weight again. Each phase traces a step that
    differentiates only its trainable weights (``bitat_keras.fit.phases``); BatchNorm
    statistics are re-estimated before inference-mode use.
    Warns before training when a layer's quantization phase gets too few optimizer steps.

    Args:
        model: a built, pre-trained full-precision Keras model (or one from ``bk.binarize``).
        train_data: ``(x, y)`` or ``(x, y, sample_weight)`` numpy arrays, the numpy
            pipeline of ``bk.datasets.augmented_batches``, or a ``tf.data.Dataset`` of
            ``(x, y)`` or ``(x, y, sample_weight)`` batches.
        config: a ``BiTATConfig`` (its defaults if None; ``BiTATConfig.paper()`` for the
            paper's settings).
        validation_data: optional data of the same kind, evaluated after every phase.
        callbacks: Keras callbacks, passed to every ``fit`` call (each phase).
        checkpoint_dir: folder for per-layer checkpoints; a run restarted with the same
            arguments resumes after the last completed layer (or the final phase). In
            several processes (``tf.distribute.MultiWorkerMirroredStrategy``, JAX's
            ``keras.distribution.initialize``) only the chief writes it, and every process
            must read the chief's folder when resuming (shared storage).
        verbose: Keras verbosity for the epoch level; any truthy value also prints the
            layer level ("layer k/L").
        sample_weight: optional per-sample weights (shape (N,), finite, >= 0) for numpy
            ``(x, y)`` ``train_data``, as in ``keras.Model.fit``: every phase's task loss
            and teacher term become ``sum(w_i * loss_i) / batch_size`` per batch (the
            input statistics and BatchNorm re-estimation use every sample). A ValueError
            with a Dataset or ``(x, y, sample_weight)`` data (give the weights there).

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
    # float32_policy: every layer built from here on computes in float32
    with float32_policy(), multi_worker.keras_fit_fixes():
        check_model(model)
        train_data = with_sample_weight(train_data, sample_weight)
        run = _Algorithm1(model, train_data, config, validation_data, callbacks, verbose)
        first, state = 0, None
        if checkpoint_dir is not None:
            run.ckpt = Checkpointer(
                checkpoint_dir, _fingerprint(config, run.names, model, run.data)
            )
            state = run.ckpt.load()
            _check_same_checkpoint(state, checkpoint_dir)
            if state is not None:
                first = run.restore(state)
                run.log(f"resuming from {checkpoint_dir!r} after layer {first}/{len(run.names)}")
        if config.activations_first_epochs and state is None:
            run.activation_phase()
        for index in range(first, len(run.names)):
            run.step(index)
        if config.final_epochs and not (state is not None and state.get("final_done")):
            run.final_phase()
            run.checkpoint(run.history[-1], None, len(run.names), final=True)
        run.recalibrate(run.history[-1], None)  # for the returned model
        net = run.model()
        for layer in net.layers:
            layer.trainable = not isinstance(layer, BinaryConv2D)
        training.compile_result(net, run.loss)
    return BiTATResult(
        model=net,
        history=run.history,
        config=config,
        transforms=run.transforms,
        v_parameters=v_parameters(run.transforms),
        seconds=time.perf_counter() - start,
        traces=run.trainer.traces,
        plan=run.plan,
    )
