"""BiTATConfig: every hyperparameter of the method in one serializable place."""

import dataclasses
import json

from bitat_keras import caller
from bitat_keras.method.block import PENALTY_NORMALIZATIONS
from bitat_keras.method.transform import TRANSFORMS
from bitat_keras.nn import quantizers

__all__ = ["BiTATConfig", "MIN_PHASE_STEPS", "check_phase_steps"]

DISTILLATION = ("none", "finetune", "all")
PENALTY_GRADIENTS = ("latent", "sign")

# Fewer optimizer steps than this in a layer's quantization phase and the layer cannot
# adapt to its binarization (docs/method.md: between the runs that collapsed and those that
# did not).
MIN_PHASE_STEPS = 100


@dataclasses.dataclass
class BiTATConfig:
    """Hyperparameters of BiTAT.

    The defaults are the best configuration of the project's validation sweep
    (``benchmarks/sweep.py``, docs/method.md); ``BiTATConfig.paper()`` gives the paper's
    section 7.1 values.

    Args:
        lam: weight lambda of the dependency penalty (Eq. 13). With
            ``penalty_normalization="output"`` the penalty is a relative output error
            (about 0.3-0.6 for a freshly binarized layer), so lam is comparable to the
            task loss; the paper's 100 applies to its plain sum.
        penalty_normalization: "output" (divide the penalty by the block's output energy
            ||diag(s) V^T P W||^2 at the start of each quantization phase: scale-free
            across layers and models) or "none" (the paper's plain sum).
        gamma: weight of the l1 term on Q(W) (Eq. 13). Paper: 1e-5.
        groups: k, the maximum number of input-dimension groups (Alg. 1). Paper: 256.
        learning_rate: Adam learning rate of the quantization phase, decayed linearly to 0.
        finetune_learning_rate: Adam learning rate of the fine-tune phase (linear decay).
        epochs_per_layer: epochs of the quantization phase of each layer (paper: 40).
        finetune_epochs: epochs of fine-tuning the layers above after each layer (paper: 40).
        batch_size: batch size when the data are numpy arrays (paper: 800).
        transform: "aggregated" (full BiTAT), "cross" (intra + cross-layer, no k-means),
            "intra" (per-layer transform), "filter" (filter-wise groups), or "none"
            (no penalty and no Reg): the ablation rows of the paper's Figure 7.
        blocks: "auto" (a block starts at every layer with a kernel larger than 1x1: the
            3x3 + 1x1 convs of a ReActNet block), an int n (n consecutive layers per block),
            or a list of lists of layer names.
        reg_weight: multiplier of Reg(s, V) (paper: 1).
        input_quantizer / kernel_quantizer: names of the sign quantizers.
        stats_images: images drawn from the training data for the input statistics.
        stats_rows: the most im2col rows kept per layer (memory bound: stats_rows * d
            float32, e.g. 4096 * 2304 * 4 B = 38 MB for a 3x3 conv on 256 channels).
        kmeans_max_iter: iterations of k-means.
        bn_recalibration_batches: batches used to re-estimate BatchNorm statistics after
            every phase (0 turns it off). 8 batches estimate them as well as 20 (test
            accuracy within 0.1 point on the CPU benchmark's network) at 40 % of the cost.
        distillation: "none" (task loss, as in the paper; the best on our validation
            sweep, where the binary network outgrows its teacher), "finetune" (the
            fine-tune, activation and final phases match the pre-trained model's softmax,
            ReActNet's distributional loss) or "all" (every phase; the best where the
            pre-trained model is clearly better than what the labelled data can train,
            e.g. 2,000 labels under a strong teacher: +1.8 points; see docs/method.md).
        activations_first_epochs: 0 (the paper: each layer's inputs and weights are
            binarized together in its step) or the epochs of a first phase that binarizes
            every layer's input activations at once with real weights (ReActNet's first
            step), after which the progressive loop binarizes the weights layer by layer.
        penalty_gradient: which side of W - Q(W) in the penalty gets the gradient (the
            paper leaves it open): "latent" (Q(W) is the fixed target; the penalty pulls the
            latent weights towards their binary values) or "sign" (W is the fixed target;
            the gradient flows through sgn's straight-through estimator, pushing the binary
            weights towards the latent, initially pre-trained, weights' outputs in the
            important directions).
        final_epochs: epochs of a joint phase after the last layer (0: the paper, which
            ends with the last layer's quantization): every weight trains again, the binary
            layers' latent weights included, with the fine-tune loss and learning rate.
            With few labels and a strong pre-trained model, a larger share of the epochs
            here measured better (docs/method.md, "Which settings for which data").
        log_gradient_ratio: log in each quantize phase's record the ratio of the penalty's
            gradient to the task loss's on the layer's kernel (``"gradient_ratio"``), a
            diagnostic that costs two gradients through the network and a BatchNorm
            re-estimation per layer (off by default).
        seed: seeds data order, k-means and initialisations; a run is reproducible.

    Example:
        >>> config = BiTATConfig(epochs_per_layer=1, finetune_epochs=1, batch_size=128)
    """

    lam: float = 0.3
    gamma: float = 1e-5
    groups: int = 64
    learning_rate: float = 8e-3
    finetune_learning_rate: float = 8e-3
    epochs_per_layer: float = 2
    finetune_epochs: float = 0
    batch_size: int = 128
    transform: str = "aggregated"
    blocks: object = "auto"
    reg_weight: float = 1.0
    input_quantizer: str = "approx_sign"
    kernel_quantizer: str = "ste_sign"
    stats_images: int = 256
    stats_rows: int = 4096
    kmeans_max_iter: int = 100
    bn_recalibration_batches: int = 8
    distillation: str = "none"
    activations_first_epochs: float = 0
    penalty_gradient: str = "sign"
    penalty_normalization: str = "output"
    final_epochs: float = 8
    log_gradient_ratio: bool = False
    seed: int = 0

    @classmethod
    def paper(cls, **overrides):
        """The paper's section 7.1 settings (CIFAR-100): lam = 100 on the plain sum,
        gamma = 1e-5, k = 256, Adam lr 3e-4 with linear decay, batch 800, 40 + 40 epochs
        per layer, task loss only, no joint phase.

        Example:
            >>> config = BiTATConfig.paper(epochs_per_layer=5, finetune_epochs=5)
        """
        values = dict(
            lam=100.0,
            penalty_normalization="none",
            penalty_gradient="latent",
            gamma=1e-5,
            groups=256,
            learning_rate=3e-4,
            finetune_learning_rate=3e-4,
            epochs_per_layer=40,
            finetune_epochs=40,
            batch_size=800,
            transform="aggregated",
            distillation="none",
            activations_first_epochs=0,
            final_epochs=0,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def for_data(cls, teacher_accuracy, labels_accuracy, labelled_images, **overrides):
        """The settings that measured best for data like yours (docs/method.md, "Which
        settings for which data").

        The rule: when the pre-trained model (the teacher) scores higher on validation
        than a binary model trained on the labels alone (``labels_accuracy``, for example
        ``bk.naive_ste`` for a few epochs), every phase learns the teacher's distribution
        (``distillation="all"``) and two thirds of the epochs go to the joint final phase
        (1 epoch per layer, 16 final epochs), at learning rate 4e-3 below 5,000 labelled
        images and 8e-3 above; otherwise (the binary network outgrows its teacher) the
        defaults, ``BiTATConfig()``, which train on the labels. On the three benchmark
        presets this picks the validation sweep's best setting: ``cpu`` (teacher 89.30 %,
        labels 91.04 %: defaults), ``cpu_strong`` (93.02 % against 91.68 %, 20,000
        images: the teacher, 8e-3) and ``lowdata`` (94.06 % against 87.28 %, 2,000
        images: the teacher, 4e-3).

        Args:
            teacher_accuracy: the pre-trained model's validation accuracy (0-1).
            labels_accuracy: the validation accuracy a binary model reaches on the labels
                alone (0-1).
            labelled_images: how many labelled training images there are.
            **overrides: any field, applied last.

        Example:
            >>> config = BiTATConfig.for_data(0.93, 0.917, 20000)
            >>> config.distillation, config.learning_rate
            ('all', 0.008)
        """
        for name, value in (
            ("teacher_accuracy", teacher_accuracy),
            ("labels_accuracy", labels_accuracy),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"`{name}` must be a fraction in [0, 1]. Received: {value!r}")
        if not isinstance(labelled_images, int) or labelled_images < 1:
            raise ValueError(
                f"`labelled_images` must be an integer >= 1. Received: {labelled_images!r}"
            )
        values = {}
        if teacher_accuracy > labels_accuracy:
            lr = 4e-3 if labelled_images < 5000 else 8e-3
            values = dict(
                distillation="all",
                learning_rate=lr,
                finetune_learning_rate=lr,
                epochs_per_layer=1,
                final_epochs=16,
            )
        values.update(overrides)
        return cls(**values)

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"Unknown transform {self.transform!r}. Expected one of {TRANSFORMS}.")
        if self.distillation not in DISTILLATION:
            raise ValueError(
                f"Unknown distillation {self.distillation!r}. Expected one of {DISTILLATION}."
            )
        if self.penalty_normalization not in PENALTY_NORMALIZATIONS:
            raise ValueError(
                f"Unknown penalty_normalization {self.penalty_normalization!r}. "
                f"Expected one of {PENALTY_NORMALIZATIONS}."
            )
        if self.penalty_gradient not in PENALTY_GRADIENTS:
            raise ValueError(
                f"Unknown penalty_gradient {self.penalty_gradient!r}. "
                f"Expected one of {PENALTY_GRADIENTS}."
            )
        if not isinstance(self.groups, int) or isinstance(self.groups, bool) or self.groups < 1:
            raise ValueError(f"`groups` must be an integer >= 1. Received: {self.groups!r}")
        for name in (
            "epochs_per_layer",
            "finetune_epochs",
            "activations_first_epochs",
            "final_epochs",
        ):  # fractional epochs end inside a pass over the data
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"`{name}` must be a number >= 0. Received: {value!r}")
        value = self.bn_recalibration_batches
        if not isinstance(value, int) or value < 0:
            raise ValueError(
                f"`bn_recalibration_batches` must be an integer >= 0. Received: {value!r}"
            )
        for name in ("batch_size", "stats_images", "stats_rows", "kmeans_max_iter"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be an integer >= 1. Received: {value!r}")
        for name in ("lam", "gamma", "reg_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`{name}` must be >= 0. Received: {getattr(self, name)!r}")
        for name in ("learning_rate", "finetune_learning_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0. Received: {getattr(self, name)!r}")
        if not self.epochs_per_layer > 0:
            raise ValueError(f"`epochs_per_layer` must be > 0. Received: {self.epochs_per_layer!r}")
        quantizers.get(self.input_quantizer)
        quantizers.get(self.kernel_quantizer)
        blocks = self.blocks
        valid = (
            blocks == "auto"
            or (isinstance(blocks, int) and not isinstance(blocks, bool) and blocks >= 1)
            or (
                isinstance(blocks, list | tuple)
                and all(isinstance(b, list | tuple) and b for b in blocks)
            )
        )
        if not valid:
            raise ValueError(
                "`blocks` must be 'auto', an integer >= 1 or a list of lists of layer names. "
                f"Received: {blocks!r}"
            )

    def to_dict(self):
        return dataclasses.asdict(self)

    def fingerprint(self):
        """A stable string identifying this configuration (used to match checkpoints)."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)


def check_phase_steps(config, steps_per_epoch, warn=True):
    """Say when a layer's quantization phase gets too few optimizer steps to adapt.

    Args:
        config: the ``BiTATConfig``.
        steps_per_epoch: optimizer steps in one epoch of the training data.
        warn: issue a ``UserWarning`` (else only return the message).

    Returns:
        The message, or None when every phase has at least ``MIN_PHASE_STEPS`` steps.
    """
    steps = int(round(config.epochs_per_layer * steps_per_epoch))
    if steps >= MIN_PHASE_STEPS:
        return None
    epochs = -(-MIN_PHASE_STEPS // max(steps_per_epoch, 1))
    message = (
        f"Each layer's quantization phase gets {steps} optimizer steps "
        f"({config.epochs_per_layer} epoch(s) x {steps_per_epoch} steps of batch "
        f"{config.batch_size}); below {MIN_PHASE_STEPS} a layer cannot adapt to its "
        f"binarization and accuracy collapses. Use epochs_per_layer >= {epochs} or a "
        "smaller batch_size (more steps per epoch)."
    )
    if warn:
        caller.warn(message)
    return message
