"""Algorithm 1: layer-progressive binarization with the BiTAT dependency transform."""

import dataclasses
import json
import math
import time

import keras
import numpy as np
from keras import ops

from bitat_keras import quantizers, transform
from bitat_keras._data import TrainData
from bitat_keras.checkpoint import Checkpointer
from bitat_keras.config import BiTATConfig
from bitat_keras.distill import Distiller, per_replica
from bitat_keras.layers import BinaryConv2D
from bitat_keras.models import binarize, eligible_layers
from bitat_keras.regularizers import BinaryL1, DependencyPenalty, TransformRegularizer
from bitat_keras.statistics import patch_rows


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
    """

    model: keras.Model
    history: list
    config: BiTATConfig
    transforms: list
    v_parameters: dict
    seconds: float


@keras.saving.register_keras_serializable(package="bitat_keras")
class BlockTransform(keras.layers.Layer):
    """Owns the trainable importance ``s`` and dependency ``V`` of one block (Eq. 11-13).

    Args:
        s: initial importance vector (K,).
        v: initial dependency matrix (K, K).
        sigma: Reg's target for sum(log s): the sum at initialisation.
        members: list of ``(layer_name, group_ids or None, k)`` in block order.
        lam, gamma, reg_weight: weights of the penalty, the l1 term and Reg.
        use_transform: False for the "none" ablation (only the l1 term remains).
        penalty_gradient: "latent" or "sign": which side of W - Q(W) the penalty's
            gradient flows through (see ``residuals``).
        kernel_quantizer: the sign quantizer whose straight-through gradient "sign" uses.
    """

    def __init__(
        self,
        s,
        v,
        sigma,
        members,
        lam,
        gamma,
        reg_weight,
        use_transform=True,
        penalty_gradient="latent",
        kernel_quantizer="ste_sign",
    ):
        super().__init__(name="block_transform")
        self.penalty_gradient = penalty_gradient
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self.members = [(name, ids, k) for name, ids, k in members]
        self.sigma = float(sigma)
        self.use_transform = use_transform
        self.penalty_term = DependencyPenalty(lam)
        self.reg_term = TransformRegularizer(reg_weight)
        self.l1_term = BinaryL1(gamma)
        self.s = self.v = None
        if use_transform:
            self.s = self.add_weight(
                shape=np.shape(s), initializer=keras.initializers.Constant(s), name="s"
            )
            self.v = self.add_weight(
                shape=np.shape(v), initializer=keras.initializers.Constant(v), name="v"
            )
        self._ids = [None if ids is None else ops.convert_to_tensor(ids) for _, ids, _ in members]

    def residuals(self, kernels):
        """P_j (W_j - Q(W_j)) for each member, Q(W) = alpha[o] * sgn(W).

        ``penalty_gradient="latent"``: Q(W) is a fixed target and the gradient moves the
        latent W towards it. ``"sign"``: W is the fixed target and the gradient flows
        through sgn's straight-through estimator, so the binary weights move towards the
        outputs of the latent (initially pre-trained) ones in the important directions.
        """
        out = []
        for kernel, ids, (_, _, k) in zip(kernels, self._ids, self.members, strict=True):
            c = kernel.shape[-1]
            alpha = ops.stop_gradient(ops.mean(ops.abs(kernel), axis=(0, 1, 2)))
            if self.penalty_gradient == "sign":
                residual = ops.stop_gradient(kernel) - self.kernel_quantizer(kernel) * alpha
            else:
                residual = kernel - ops.stop_gradient(ops.where(kernel >= 0, 1.0, -1.0) * alpha)
            out.append(transform.reduce_residual(ops.reshape(residual, (-1, c)), ids, k))
        return out

    def terms(self, kernels):
        """(penalty, reg, l1) of Eq. 13 for the members' current kernels."""
        l1 = sum(self.l1_term(k) for k in kernels)
        if not self.use_transform:
            zero = ops.zeros(())
            return zero, zero, l1
        penalty = self.penalty_term(self.s, self.v, self.residuals(kernels))
        reg = self.reg_term(self.s, self.v, self.sigma)
        return penalty, reg, l1


class _Phase(Distiller):
    """The network trained on the task loss (or the teacher's distribution) plus, in a
    quantization phase, Eq. 13's extra terms."""

    def __init__(self, net, block_transform=None, teacher=None):
        super().__init__(net, teacher, name="bitat_phase")
        self.block_transform = block_transform
        self.member_layers = []
        if block_transform is not None:
            self.member_layers = [net.get_layer(name) for name, _, _ in block_transform.members]

    def extra_loss(self):
        penalty, reg, l1 = self.block_transform.terms([m.kernel for m in self.member_layers])
        return penalty + reg + l1

    def compute_loss(self, *args, **kwargs):
        loss = super().compute_loss(*args, **kwargs)
        if self.block_transform is not None:
            loss = loss + per_replica(self.extra_loss())
        return loss


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


def _jit_compile():
    """XLA under TensorFlow costs more to compile per phase than it saves on CPU-sized
    phases; JAX always compiles; torch.compile recompiles for every phase and layer type
    (minutes on a tiny model), so torch runs eagerly."""
    return keras.backend.backend() == "jax"


def _linear_decay(lr, steps):
    return keras.optimizers.schedules.PolynomialDecay(
        lr, decay_steps=max(int(steps), 1), end_learning_rate=0.0, power=1.0
    )


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


def _set_trainable(net, boundary):
    """Freeze every layer up to index ``boundary`` of ``net.layers``; train the rest."""
    for i, layer in enumerate(net.layers):
        layer.trainable = i > boundary


def recalibrate_batchnorm(net, batches):
    """Re-estimate the moving statistics of trainable BatchNorm layers (cumulative average
    over ``batches``, forward passes in training mode, no gradient)."""
    bns = [
        layer
        for layer in net.layers
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    if not bns:
        return 0
    momenta = [bn.momentum for bn in bns]
    count = 0
    try:
        for count, x in enumerate(batches, start=1):
            for bn in bns:
                bn.momentum = (count - 1) / count  # 0 first: replace, then running mean
            net(x, training=True)
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
    return count


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")
    if not model.built or not getattr(model, "inputs", None):
        raise ValueError(
            f"Model {model.name!r} is not built: progressive_fit needs a built functional or "
            "Sequential model with a known input shape (start it with keras.Input)."
        )


def _resolve_loss(model):
    loss = getattr(model, "loss", None) if getattr(model, "compiled", False) else None
    return loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)


class _Run:
    """State of one progressive_fit call (kept in one place so resume can rebuild it)."""

    def __init__(self, model, train_data, config, validation_data, callbacks, ckpt, verbose):
        self.config = config
        self.callbacks = list(callbacks or [])
        self.verbose = verbose
        self.loss = _resolve_loss(model)
        self.net = binarize(model, input_quantizer=None, kernel_quantizer=None)
        self.teacher = None
        if config.distillation != "none":  # a frozen copy of the pre-trained model
            self.teacher = keras.models.clone_model(model)
            self.teacher.set_weights(model.get_weights())
        self.names = eligible_layers(self.net)
        if not self.names:
            raise ValueError(
                f"Model {model.name!r} has no layer progressive_fit can binarize: it needs "
                "regular Conv2D layers besides the first conv and the classifier."
            )
        self.blocks = _make_blocks(self.net, self.names, config.blocks)
        self.block_of = {n: b for b in self.blocks for n in b}
        self.position = {layer.name: i for i, layer in enumerate(self.net.layers)}
        self.data = TrainData(train_data, self.net, config.batch_size)
        self.val = None
        if validation_data is not None:
            self.val = TrainData(validation_data, self.net, config.batch_size, "validation_data")
        self.ckpt = ckpt
        self.history = []
        self.transforms = []
        self.block = None  # {"layers", "s", "v", "ids", "ks", "dims"} of the open block

    # -- helpers -------------------------------------------------------------------------
    def log(self, message):
        if self.verbose:
            print(f"[BiTAT] {message}", flush=True)

    def quantize(self, name):
        layer = self.net.get_layer(name)
        layer.input_quantizer = quantizers.get(self.config.input_quantizer)
        layer.kernel_quantizer = quantizers.get(self.config.kernel_quantizer)

    def fit(self, model, lr, epochs, label, record):
        guard = _PhaseMonitor()
        model.compile(
            optimizer=keras.optimizers.Adam(_linear_decay(lr, epochs * self.data.steps)),
            loss=self.loss,
            metrics=["accuracy"],
            jit_compile=_jit_compile(),
        )
        start = time.perf_counter()
        hist = model.fit(
            **self.data.fit_kwargs(),
            epochs=epochs,
            callbacks=[guard, *self.callbacks],
            verbose=self.verbose,
        )
        record["seconds"][label] = time.perf_counter() - start
        record["compile_seconds"] = guard.compile_seconds()  # included in the fit time
        record["loss"] = [float(v) for v in hist.history.get("loss", [])]
        record["accuracy"] = [float(v) for v in hist.history.get("accuracy", [])]
        return guard

    def evaluate(self, record):
        if self.val is None:
            return
        start = time.perf_counter()
        self.net.compile(loss=self.loss, metrics=["accuracy"])
        loss, acc = self.net.evaluate(**_eval_kwargs(self.val), verbose=0)
        record["val_loss"], record["val_accuracy"] = float(loss), float(acc)
        record["seconds"]["evaluate"] = time.perf_counter() - start

    def finish_phase(self, record, guard, index, phase, snapshot):
        if guard.bad is not None:
            batch, value = guard.bad
            self.net.set_weights(snapshot)
            if phase == "activations":
                where = f"all {len(self.names)} layers"
                for name in self.names:
                    self.net.get_layer(name).input_quantizer = None
            else:
                name = self.names[index]
                where = f"layer {index + 1}/{len(self.names)} {name!r}"
            if phase == "quantize":  # back to the state before this phase: layer still real
                layer = self.net.get_layer(name)
                layer.input_quantizer = layer.kernel_quantizer = None
                if self.config.activations_first_epochs:
                    layer.input_quantizer = quantizers.get(self.config.input_quantizer)
            raise NonFiniteLossError(
                f"Non-finite loss ({value}) at {where}, "
                f"phase {phase!r}, batch {batch}. The model is restored to its state "
                "before this phase; the checkpoint (if any) keeps the last completed layer. "
                "Lower the learning rate or lam.",
                model=self.net,
                history=self.history,
            )
        start = time.perf_counter()
        seed = self.config.seed + (index if index is not None else len(self.names))
        batches = self.data.batches(self.config.bn_recalibration_batches, seed)
        record["bn_batches"] = recalibrate_batchnorm(self.net, batches)
        record["seconds"]["batchnorm"] = time.perf_counter() - start
        self.evaluate(record)
        self.history.append(record)

    def task_phase(self, record, index, seed, lr, epochs):
        """Train the trainable layers on the task loss (or the teacher's distribution, unless
        distillation is "none") for ``epochs``; used by the fine-tune and activation phases."""
        keras.utils.set_random_seed(seed)
        snapshot = self.net.get_weights()
        teacher = self.teacher if self.config.distillation != "none" else None
        guard = self.fit(_Phase(self.net, None, teacher), lr, epochs, record["phase"], record)
        record["epochs"] = epochs
        self.finish_phase(record, guard, index, record["phase"], snapshot)

    # -- optional first phase: every layer's input activations binarized at once ----------
    def binarize_activations(self):
        for name in self.names:
            self.net.get_layer(name).input_quantizer = quantizers.get(self.config.input_quantizer)

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
        _set_trainable(self.net, -1)
        self.binarize_activations()
        seed = cfg.seed * 7919 + 2 * len(self.names) + 1  # a seed no layer step uses
        self.task_phase(record, None, seed, cfg.learning_rate, cfg.activations_first_epochs)
        if self.ckpt is not None:
            self.ckpt.save(self.net, 0, self.history, *self.block_state())

    # -- Algorithm 1, lines 7-10 -----------------------------------------------------------
    def init_transform(self, index, name, record):
        layer = self.net.get_layer(name)
        if self.block is None:
            self.block = {"layers": [], "s": None, "v": None, "ids": [], "ks": [], "dims": []}
        d = int(np.prod(layer.kernel.shape[:3]))
        ids, k = self._grouping(index, layer, d, record)
        self.block["layers"].append(name)
        self.block["ids"].append(None if k == d else ids)
        self.block["ks"].append(k)
        self.block["dims"].append(d)
        record["groups"], record["input_dims"] = k, d

    def _grouping(self, index, layer, d, record):
        """Statistics, P and the PCA-initialised expansion of s and V for one layer."""
        cfg = self.config
        if cfg.transform == "none":
            return None, d
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
        if method is None:  # "cross" and "intra": P = I
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
        s, v = transform.expand_block(self.block["s"], self.block["v"], s_new, v_new)
        self.block.update(s=s, v=v)
        return ids, k

    def block_transform(self):
        cfg, b = self.config, self.block
        use = cfg.transform != "none"
        s = b["s"] if use else np.zeros((0,))
        v = b["v"] if use else np.zeros((0, 0))
        sigma = float(np.sum(np.log(np.maximum(np.abs(s), 1e-12)))) if use else 0.0
        members = list(zip(b["layers"], b["ids"], b["ks"], strict=True))
        return BlockTransform(
            s,
            v,
            sigma,
            members,
            cfg.lam,
            cfg.gamma,
            cfg.reg_weight,
            use,
            cfg.penalty_gradient,
            cfg.kernel_quantizer,
        )

    # -- one layer: quantize (Alg. 1 lines 7-12), then fine-tune the layers above -----------
    def step(self, index):
        cfg, name = self.config, self.names[index]
        total = len(self.names)
        record = {"layer": name, "index": index, "phase": "quantize", "seconds": {}}
        self.log(f"layer {index + 1}/{total} {name!r}: quantize, {cfg.epochs_per_layer} epochs")
        keras.utils.set_random_seed(cfg.seed * 7919 + 2 * index)
        previous = self.position[self.names[index - 1]] if index else -1
        _set_trainable(self.net, previous)
        self.quantize(name)
        self.init_transform(index, name, record)
        block_transform = self.block_transform()
        teacher = self.teacher if cfg.distillation == "all" else None
        phase = _Phase(self.net, block_transform, teacher)
        snapshot = self.net.get_weights()
        guard = self.fit(phase, cfg.learning_rate, cfg.epochs_per_layer, "quantize", record)
        if guard.bad is None and cfg.transform != "none":
            self.block["s"] = ops.convert_to_numpy(block_transform.s)
            self.block["v"] = ops.convert_to_numpy(block_transform.v)
        penalty, reg, l1 = block_transform.terms(
            [self.net.get_layer(n).kernel for n in self.block["layers"]]
        )
        record.update(  # via numpy: torch tensors that require grad warn on float()
            epochs=cfg.epochs_per_layer,
            penalty=float(ops.convert_to_numpy(penalty)),
            reg=float(ops.convert_to_numpy(reg)),
            l1=float(ops.convert_to_numpy(l1)),
        )
        _set_trainable(self.net, self.position[name])  # Alg. 1 line 12: freeze sgn(w)
        self.finish_phase(record, guard, index, "quantize", snapshot)

        if cfg.finetune_epochs and index + 1 < total:
            record = {"layer": name, "index": index, "phase": "finetune", "seconds": {}}
            self.log(
                f"layer {index + 1}/{total} {name!r}: fine-tune the layers above, "
                f"{cfg.finetune_epochs} epochs"
            )
            seed = cfg.seed * 7919 + 2 * index + 1
            self.task_phase(record, index, seed, cfg.finetune_learning_rate, cfg.finetune_epochs)

        last = index + 1 == total or cfg.transform == "intra"
        if last or self.block_of[self.names[index + 1]] is not self.block_of[name]:
            self.close_block()
        if self.ckpt is not None:
            meta, arrays = self.block_state()
            self.ckpt.save(self.net, index + 1, self.history, meta, arrays)

    def close_block(self):
        if self.block is not None:
            self.transforms.append(self.block)
            self.block = None

    # -- checkpoint (de)serialization of the open block and closed transforms ---------------
    def block_state(self):
        blocks = self.transforms + ([self.block] if self.block is not None else [])
        meta, arrays = [], {}
        for i, b in enumerate(blocks):
            meta.append({"layers": b["layers"], "ks": b["ks"], "dims": b["dims"]})
            if b["s"] is not None:
                arrays[f"s{i}"], arrays[f"v{i}"] = b["s"], b["v"]
            for j, ids in enumerate(b["ids"]):
                if ids is not None:
                    arrays[f"ids{i}_{j}"] = np.asarray(ids)
        meta = {"blocks": meta, "open": self.block is not None}
        return meta, arrays

    def restore(self, state):
        completed = state["completed"]
        if self.config.activations_first_epochs:
            self.binarize_activations()
        for name in self.names[:completed]:
            self.quantize(name)
        _set_trainable(self.net, self.position[self.names[completed - 1]] if completed else -1)
        self.net.load_weights(state["weights_path"])
        self.history = state["history"]
        arrays = state["block_arrays"] or {}
        meta = state["block_meta"]
        blocks = []
        for i, m in enumerate(meta["blocks"]):
            blocks.append(
                {
                    "layers": m["layers"],
                    "ks": m["ks"],
                    "dims": m["dims"],
                    "s": arrays.get(f"s{i}"),
                    "v": arrays.get(f"v{i}"),
                    "ids": [arrays.get(f"ids{i}_{j}") for j in range(len(m["layers"]))],
                }
            )
        self.block = blocks.pop() if meta["open"] else None
        self.transforms = blocks
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


def _fingerprint(config, names, model):
    return json.dumps(
        {"config": config.fingerprint(), "layers": names, "params": int(model.count_params())}
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
    full precision, with the task loss + the Eq. 13 penalty, l1 and Reg terms (fresh Adam,
    linear decay); freeze it (its kernel is exactly alpha[o] * sign(w) from then on);
    re-estimate BatchNorm statistics; fine-tune the layers above with the task loss.

    Args:
        model: a built, pre-trained full-precision Keras model (or one from ``bk.binarize``).
        train_data: ``(x, y)`` numpy arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches.
        config: a ``BiTATConfig`` (paper defaults if None).
        validation_data: optional data of the same kind, evaluated after every phase.
        callbacks: Keras callbacks, passed to every ``fit`` call (each phase).
        checkpoint_dir: folder for per-layer checkpoints; a run restarted with the same
            arguments resumes after the last completed layer.
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
    _check_model(model)
    run = _Run(model, train_data, config, validation_data, callbacks, None, verbose)
    first, state = 0, None
    if checkpoint_dir is not None:
        run.ckpt = Checkpointer(checkpoint_dir, _fingerprint(config, run.names, run.net))
        state = run.ckpt.load()
        if state is not None:
            first = run.restore(state)
            run.log(f"resuming from {checkpoint_dir!r} after layer {first}/{len(run.names)}")
    if config.activations_first_epochs and state is None:
        run.activation_phase()
    for index in range(first, len(run.names)):
        run.step(index)
    run.close_block()
    for layer in run.net.layers:
        layer.trainable = not isinstance(layer, BinaryConv2D)
    run.net.compile(loss=run.loss, metrics=["accuracy"])
    return BiTATResult(
        model=run.net,
        history=run.history,
        config=config,
        transforms=run.transforms,
        v_parameters=run.v_parameters(),
        seconds=time.perf_counter() - start,
    )
