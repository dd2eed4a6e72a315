"""The network and the loss that every phase of Algorithm 1 trains.

Algorithm 1 changes, from phase to phase, which layers are binarized, which weights train,
which block's s and V enter the loss, and whether the loss is the task's or the teacher's;
it starts each phase with a fresh optimizer.

- ``GatedBinaryConv2D``: a ``BinaryConv2D`` whose input and kernel binarization are switched
  on by two gate variables (0: real, 1: binary, with one-padding), so that statistics,
  BatchNorm re-estimation and evaluation run one network in every state;
- ``PhaseTrainer``: the model ``fit`` runs. Each phase traces its own train step
  (``phase``): only the phase's trainable weights are differentiated, so the backward
  pass stops at the lowest layer that trains (every layer below is frozen); the teacher runs
  only in a phase whose loss uses it (not at all where its logits come with the batch:
  ``distill.targets``); only the quantized block's Eq. 13 terms are computed.

The returned model is rebuilt from plain ``BinaryConv2D`` layers (``clean_model``), so it
converts to LCE exactly like any other binary model.
"""

import contextlib
import math
import time

import keras
import numpy as np
from keras import ops

from bitat_keras.fit import backend, training
from bitat_keras.fit.backend import per_replica
from bitat_keras.fit.distill import split_targets, teacher_loss
from bitat_keras.nn.layers import BinaryConv2D

__all__ = [
    "GatedBinaryConv2D",
    "PhaseMonitor",
    "PhaseTrainer",
    "clean_model",
    "gated_model",
    "numpy_float",
    "weights_above",
]


class _Gates:
    """Holds a layer's gate variables without making them the layer's weights (the gated
    network's weights keep the layout of the plain binary network)."""

    def __init__(self, input_gate, kernel_gate):
        self.input = input_gate
        self.kernel = kernel_gate


class GatedBinaryConv2D(BinaryConv2D):
    """A ``BinaryConv2D`` whose binarization is switched by gate variables at run time.

    With the input gate at 1 the layer sees ``input_quantizer(x)`` one-padded (as the plain
    layer); at 0 it sees ``x`` zero-padded (as the full-precision conv). With the kernel
    gate at 1 it uses ``alpha[o] * sign(w)``, at 0 ``w``. Gates are attached with
    ``attach_gates`` by ``PhaseTrainer``; the values are selected, never interpolated, so a
    gated layer computes exactly what the plain layer computes. While ``fixed`` holds two
    booleans (a phase's train step, traced for the gates' values then), the layer computes
    only the selected branch.

    Args:
        *args, **kwargs: as ``BinaryConv2D``; both quantizers must be set.

    Example:
        >>> layer = GatedBinaryConv2D(8, 3)  # doctest: +SKIP
        >>> layer.attach_gates(input_gate, kernel_gate)  # doctest: +SKIP
    """

    gates = None
    fixed = None  # (input binary, kernel binary) while a phase's step is traced

    def attach_gates(self, input_gate, kernel_gate):
        object.__setattr__(self, "gates", _Gates(input_gate, kernel_gate))

    def call(self, inputs):
        if self.fixed is not None:
            return self._fixed_call(inputs, *self.fixed)
        signed, padding = self.binarized_input(inputs)
        real = inputs
        if padding != self.padding:  # one-padded for a "valid" conv: real is zero-padded
            real = ops.pad(inputs, self._one_padding(inputs.shape))
        x = ops.where(self.gates.input > 0.5, signed, real)
        w = ops.convert_to_tensor(self.kernel)
        on_kernel = self.gates.kernel > 0.5
        binary, scale = self.kernel_and_scale()
        kernel = ops.where(on_kernel, binary, w)
        if scale is not None:
            scale = ops.where(on_kernel, scale, ops.ones_like(scale))
        return self._convolve(x, kernel, scale, padding)

    def _fixed_call(self, x, binary_input, binary_kernel):
        """What ``call`` selects for gates fixed at these values, without computing the
        other branch (a phase's train step: its gates do not change while it runs)."""
        padding = self.padding
        if binary_input:
            x, padding = self.binarized_input(x)
        kernel, scale = self.kernel_and_scale() if binary_kernel else (self.kernel, None)
        return self._convolve(x, kernel, scale, padding)


def _swap_conv_class(model, cls, names, quantizers_of=None):
    """Clone ``model`` with the convs in ``names`` rebuilt as ``cls``; weights copied."""

    def clone(layer):
        config = layer.get_config()
        if layer.name in names:
            if quantizers_of is not None:
                config.update(quantizers_of(layer.name))
            return cls.from_config(config)
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for src, dst in zip(model.layers, new.layers, strict=True):
        dst.set_weights(src.get_weights())
    return new


def gated_model(net, names):
    """The binary network ``net`` with its ``BinaryConv2D`` layers ``names`` gated."""
    return _swap_conv_class(net, GatedBinaryConv2D, set(names))


def clean_model(gated, names, quantizers_of):
    """Plain ``BinaryConv2D`` layers again; ``quantizers_of(name)`` gives each layer's
    ``{"input_quantizer": ..., "kernel_quantizer": ...}`` (None for real)."""
    return _swap_conv_class(gated, BinaryConv2D, set(names), quantizers_of)


class PhaseTrainer(keras.Model):
    """The model that every phase's ``fit`` trains: the gated network, its gates, the
    blocks' s and V, and the loss of Eq. 13.

    Loss: the task loss, or (``set_distill(True)``) the cross-entropy to the frozen
    teacher's softmax; plus, for the block set by ``set_block``, the penalty, Reg(s, V) and
    the l1 term of Eq. 13. ``phase`` compiles the step of one phase: a fresh Adam
    over exactly the weights that train in it, the only ones differentiated.

    Args:
        net: the gated network (``gated_model``).
        names: its gated layers, bottom to top.
        blocks: one ``BlockTransform`` per block (with ``transform="none"`` only its l1 term).
        member_layers: per block, its members' layer names.
        teacher: the frozen full-precision model, or None.

    Example:
        >>> trainer = PhaseTrainer(net, names, blocks, members, teacher)  # doctest: +SKIP
        >>> with trainer.phase(trainable_ids, loss, 8e-3, steps=300, example=(x[:2], y[:2])):
        ...     trainer.fit(x, y)  # doctest: +SKIP
    """

    def __init__(self, net, names, blocks, member_layers, teacher=None):
        super().__init__(name="bitat_phase")
        self.student = net
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.names = list(names)
        self.input_gates = [
            self.add_weight(shape=(), initializer="zeros", trainable=False, name=f"in_{i}")
            for i in range(len(names))
        ]
        self.kernel_gates = [
            self.add_weight(shape=(), initializer="zeros", trainable=False, name=f"k_{i}")
            for i in range(len(names))
        ]
        for i, name in enumerate(names):
            net.get_layer(name).attach_gates(self.input_gates[i], self.kernel_gates[i])
        self.distilling = False  # read when a step is traced
        self.blocks = list(blocks)
        self.block = None  # the block whose Eq. 13 terms enter the loss
        self.member_layers = [[net.get_layer(n) for n in members] for members in member_layers]
        self.traces = 0  # Python runs of the training loss: traces, outside eager mode
        self.built = True

    def call(self, inputs, training=False):
        return self.student(inputs, training=training)

    # -- switches ----------------------------------------------------------------------------
    def set_binary(self, index, inputs=None, kernel=None):
        if inputs is not None:
            self.input_gates[index].assign(1.0 if inputs else 0.0)
        if kernel is not None:
            self.kernel_gates[index].assign(1.0 if kernel else 0.0)

    def binary_state(self):
        """``[(input_binary, kernel_binary)]`` per gated layer."""
        return [
            (float(ops.convert_to_numpy(i)) > 0.5, float(ops.convert_to_numpy(k)) > 0.5)
            for i, k in zip(self.input_gates, self.kernel_gates, strict=True)
        ]

    def set_block(self, index):
        """Only block ``index`` (None: no block) contributes Eq. 13's terms."""
        if index != self.block:
            self.block = index
            self._retrace()

    def set_distill(self, on):
        """The loss is the teacher's distribution (True) or the task loss (False)."""
        if on and self.teacher is None:
            raise ValueError("Distillation needs a teacher.")
        if bool(on) != self.distilling:
            self.distilling = bool(on)
            self._retrace()

    def _retrace(self):
        """The loss is read when a step is traced: a changed loss needs new traces."""
        self.train_function = self.test_function = None

    @contextlib.contextmanager
    def phase(self, trainable, loss, learning_rate, steps, example):
        """Within the block, ``fit`` trains one phase: only the variables whose ids are in
        ``trainable`` are trainable (the others, frozen, get no gradient and no optimizer
        state), with a fresh Adam whose rate decays linearly from ``learning_rate`` to 0
        over ``steps`` (Algorithm 1's new optimizer per phase). The train step is traced
        anew for the phase, with every gate fixed at its value (the gates do not change
        during a phase); afterwards every variable is trainable again, as before.
        ``example``: a few ``(x, y)`` samples whose shapes build the metrics before the
        step is traced (under TensorFlow a metric built inside the first trace makes it
        trace twice)."""
        variables = list(self.trainable_variables)
        for v in variables:
            v.trainable = id(v) in trainable
        gated = [self.student.get_layer(name) for name in self.names]
        for layer, state in zip(gated, self.binary_state(), strict=True):
            object.__setattr__(layer, "fixed", state)
        try:
            optimizer = keras.optimizers.Adam(training.linear_decay(learning_rate, steps))
            self.compile(
                optimizer=optimizer,
                loss=loss,
                metrics=["accuracy"],
                jit_compile=backend.jit_compile(),
            )
            optimizer.build(self.trainable_variables)
            x, y = example
            self.compute_metrics(x, y, self._output_like(x))
            self.reset_metrics()
            yield optimizer
        finally:
            for v in variables:
                v.trainable = True
            for layer in gated:
                object.__setattr__(layer, "fixed", None)

    def _output_like(self, x):
        """Zeros shaped as the network's output for ``x``: what building the metrics needs,
        without a forward pass (a model without one symbolic output runs the forward)."""
        try:
            shape = tuple(self.student.output.shape[1:])
        except (AttributeError, ValueError):
            return self(x, training=False)
        rows = keras.tree.flatten(x)[0].shape[0]
        return ops.zeros((rows, *shape), dtype=self.student.output.dtype)

    def block_terms(self, index):
        """(penalty, reg, l1) of block ``index`` for its members' current kernels, each
        quantized as its layer quantizes it (``kernel_and_scale``)."""
        members = self.member_layers[index]
        return self.blocks[index].terms(
            [m.kernel for m in members], [m.kernel_and_scale() for m in members]
        )

    def normalize_penalty(self, index):
        """Eq. 13's penalty of block ``index`` divided by ||diag(s) V^T P W||^2 of its
        members' current kernels: the relative error of the block's outputs."""
        kernels = [m.kernel for m in self.member_layers[index]]
        energy = numpy_float(self.blocks[index].output_energy(kernels))
        self.blocks[index].inv_energy.assign(1.0 / max(energy, 1e-12))

    def gradient_ratio(self, index, kernel, x, y):
        """||d penalty / d W|| / ||d loss / d W|| of block ``index``'s penalty (lam
        included) and the task loss on the batch ``(x, y)``, for the kernel ``W``."""
        x, y = ops.convert_to_tensor(x), ops.convert_to_tensor(y)

        def task():
            return self.compute_loss(x, y, self(x), training=False)

        def penalty():
            return self.block_terms(index)[0]

        task_norm = np.linalg.norm(backend.gradient(task, kernel))
        penalty_norm = np.linalg.norm(backend.gradient(penalty, kernel))
        return float(penalty_norm / max(task_norm, 1e-30))

    # -- loss --------------------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The task loss or (distilling) the teacher term, both weighted by
        ``sample_weight`` as Keras weights a loss (``sum(w_i * l_i) / batch_size``); in
        training, plus the Eq. 13 terms (Eq. 13) of the block being quantized. The teacher
        runs only when distilling and its logits did not come with the batch (``y``: the
        labels, or ``distill.targets``), the block terms only for that block."""
        y, teacher_logits = split_targets(y)
        if self.distilling:
            loss = teacher_loss(self.teacher, x, y_pred, sample_weight, teacher_logits)
        else:
            loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if not training:
            return loss
        self.traces += 1
        if self.block is not None:
            loss = loss + per_replica(sum(self.block_terms(self.block)))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, split_targets(y)[0], y_pred, sample_weight)


class PhaseMonitor(keras.callbacks.Callback):
    """Stops a phase at the first non-finite batch loss and remembers where (``bad``);
    times batches so that a phase's compile time can be told apart from its training time.

    Example:
        >>> monitor = PhaseMonitor()
        >>> trainer.fit(x, y, callbacks=[monitor])  # doctest: +SKIP
        >>> monitor.bad, monitor.compile_seconds()  # doctest: +SKIP
    """

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


def weights_above(net, position, boundary):
    """ids of the trainable weights of ``net``'s layers above index ``boundary``."""
    out = set()
    for layer in net.layers:
        if position[layer.name] > boundary:
            out.update(id(v) for v in layer.trainable_weights)
    return out


def numpy_float(x):
    """A scalar tensor or variable as a Python float (via numpy: torch tensors that
    require a gradient warn on float())."""
    return float(np.asarray(ops.convert_to_numpy(x)))
