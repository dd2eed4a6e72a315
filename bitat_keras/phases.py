"""One traced training step for every phase of Algorithm 1.

Algorithm 1 changes, from phase to phase, which layers are binarized, which weights train,
which block's s and V enter the loss, and it starts each phase with a fresh optimizer.
Recompiling for each phase made tracing most of the run's time. Here every one of those
switches is a variable read by a single train step:

- ``GatedBinaryConv2D``: a ``BinaryConv2D`` whose input and kernel binarization are switched
  on by two gate variables (0: real, 1: binary, with one-padding);
- ``PhaseAdam``: Adam with one gradient mask per variable (0: frozen; with the slots reset
  to zero a masked weight does not move at all), the phase's learning rate and its
  linear-decay length as variables, and ``reset()`` for the fresh optimizer of every phase;
- ``PhaseTrainer``: the model ``fit`` runs: task loss (or the full-precision teacher's
  distribution, switched by a variable) plus the Eq. 13 terms of the block being quantized.

The returned model is rebuilt from plain ``BinaryConv2D`` layers (``clean_model``), so it
converts to LCE exactly like any other binary model.
"""

import math
import time

import keras
import numpy as np
from keras import ops

from bitat_keras import training
from bitat_keras.distill import per_replica, soft_cross_entropy
from bitat_keras.layers import BinaryConv2D

__all__ = [
    "GatedBinaryConv2D",
    "PhaseAdam",
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
    gated layer computes exactly what the plain layer computes.

    Args:
        *args, **kwargs: as ``BinaryConv2D``; both quantizers must be set.

    Example:
        >>> layer = GatedBinaryConv2D(8, 3)  # doctest: +SKIP
        >>> layer.attach_gates(input_gate, kernel_gate)  # doctest: +SKIP
    """

    gates = None

    def attach_gates(self, input_gate, kernel_gate):
        object.__setattr__(self, "gates", _Gates(input_gate, kernel_gate))

    def call(self, inputs):
        x = inputs
        padding = self.padding
        on_input = self.gates.input > 0.5
        x = ops.where(on_input, self.input_quantizer(self.shifted(x)), x)
        if padding == "same" and self.pad_values != 0.0:
            pads = self._one_padding(x.shape)
            border = ops.pad(ops.zeros_like(x), pads, constant_values=self.pad_values)
            x = ops.pad(x, pads) + ops.where(on_input, border, ops.zeros_like(border))
            padding = "valid"
        w = ops.convert_to_tensor(self.kernel)
        kernel = ops.where(self.gates.kernel > 0.5, self.quantized_kernel(), w)
        return self._convolve(x, kernel, padding)


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


class _PhaseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr * (1 - step / steps), both read from ``PhaseAdam``'s variables."""

    def __init__(self):
        self.optimizer = None

    def __call__(self, step):
        opt = self.optimizer
        frac = ops.cast(step, "float32") / ops.maximum(opt.phase_steps, 1.0)
        return opt.phase_lr * ops.maximum(1.0 - frac, 0.0)

    def get_config(self):
        return {}


class PhaseAdam(keras.optimizers.Adam):
    """Adam for phases that share one traced train step.

    Each trainable variable has a gradient mask (``set_masks``); ``start_phase`` resets the
    moments and the step count (Algorithm 1's fresh optimizer) and sets the learning rate,
    which decays linearly to 0 over the phase's steps. A masked variable, with its moments
    at zero, gets an update of exactly zero.

    Args:
        **kwargs: as ``keras.optimizers.Adam`` (but ``learning_rate``).

    Example:
        >>> opt = PhaseAdam()
        >>> trainer.compile(optimizer=opt)  # doctest: +SKIP
        >>> opt.start_phase(1e-3, steps=300)  # doctest: +SKIP
    """

    def __init__(self, **kwargs):
        schedule = _PhaseDecay()
        super().__init__(learning_rate=schedule, **kwargs)
        schedule.optimizer = self
        self.phase_lr = self.add_variable((), initializer="zeros", name="phase_lr")
        self.phase_steps = self.add_variable((), initializer="ones", name="phase_steps")
        self._masks = []

    def build(self, var_list):
        super().build(var_list)
        self._masks = [
            self.add_variable((), initializer="ones", name=f"mask_{i}")
            for i in range(len(var_list))
        ]

    def set_masks(self, trainable):
        """``trainable``: the set of ``id(variable)`` that may move in this phase."""
        for var in self._trainable_variables:
            mask = self._masks[self._get_variable_index(var)]
            mask.assign(1.0 if id(var) in trainable else 0.0)

    def start_phase(self, learning_rate, steps):
        self.iterations.assign(0)
        for var in self._trainable_variables:
            index = self._get_variable_index(var)
            for slot in (self._momentums[index], self._velocities[index]):
                slot.assign(ops.zeros(slot.shape, slot.dtype))
        self.phase_lr.assign(float(learning_rate))
        self.phase_steps.assign(float(max(int(steps), 1)))

    def update_step(self, gradient, variable, learning_rate):
        mask = self._masks[self._get_variable_index(variable)]
        gradient = ops.cast(gradient, variable.dtype) * ops.cast(mask, variable.dtype)
        super().update_step(gradient, variable, learning_rate * mask)


class PhaseTrainer(keras.Model):
    """The model that every phase's ``fit`` trains: the gated network, its gates, the
    blocks' s and V, and the loss of Eq. 13.

    Loss: the task loss, or (``distill`` gate at 1) the cross-entropy to the frozen
    teacher's softmax; plus, for the block whose ``block_on`` gate is 1, the penalty,
    Reg(s, V) and the l1 term of Eq. 13.

    Args:
        net: the gated network (``gated_model``).
        names: its gated layers, bottom to top.
        blocks: one ``BlockTransform`` per block (with ``transform="none"`` only its l1 term).
        member_layers: per block, its members' layer names.
        teacher: the frozen full-precision model, or None.

    Example:
        >>> trainer = PhaseTrainer(net, names, blocks, members, teacher)  # doctest: +SKIP
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
        self.distill_gate = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="distill"
        )
        self.blocks = list(blocks)
        self.block_gates = [
            self.add_weight(shape=(), initializer="zeros", trainable=False, name=f"block_{i}")
            for i in range(len(self.blocks))
        ]
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
        for i, gate in enumerate(self.block_gates):
            gate.assign(1.0 if i == index else 0.0)

    def set_distill(self, on):
        if on and self.teacher is None:
            raise ValueError("Distillation needs a teacher.")
        self.distill_gate.assign(1.0 if on else 0.0)

    def block_terms(self, index):
        """(penalty, reg, l1) of block ``index`` for its members' current kernels."""
        return self.blocks[index].terms([m.kernel for m in self.member_layers[index]])

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

        task_norm = np.linalg.norm(training.gradient(task, kernel))
        penalty_norm = np.linalg.norm(training.gradient(penalty, kernel))
        return float(penalty_norm / max(task_norm, 1e-30))

    # -- loss --------------------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The task loss or (``distill`` gate at 1) the teacher term, both weighted by
        ``sample_weight`` as Keras weights a loss (``sum(w_i * l_i) / batch_size``); in
        training, plus the Eq. 13 terms of the block being quantized."""
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if self.teacher is not None:
            teacher = self.teacher(x, training=False)
            kd = per_replica(soft_cross_entropy(teacher, y_pred, sample_weight))
            loss = loss + self.distill_gate * (kd - loss)
        if not training:
            return loss
        self.traces += 1
        for index, gate in enumerate(self.block_gates):
            extra = ops.cond(
                gate > 0.5,
                lambda index=index: sum(self.block_terms(index)),
                lambda: ops.zeros(()),
            )
            loss = loss + per_replica(extra)
        return loss


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
