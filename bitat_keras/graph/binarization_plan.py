"""The binarization plan: what ``binarize`` and ``progressive_fit`` will do to a model,
decided before any work.

For every conv (and dense) layer: binarized, or kept float and why; for each binarized
conv, whether a shortcut carries the real-valued signal around it and the sign statistics
of its input (with data), and whether it gets an input threshold because its input is
one-signed (after a ReLU, ``sign`` maps every value to +1).
"""

import dataclasses
import importlib.metadata
import re

import keras

from bitat_keras import caller
from bitat_keras.fit.data import sample_images
from bitat_keras.graph.precision import mixed_precision_of
from bitat_keras.graph.structure import (
    check_model,
    decisions,
    flatten_model,
    has_shortcut,
    predecessors,
    relu_fed,
)
from bitat_keras.graph.thresholds import SignStats, input_batches

__all__ = ["BinarizationPlan", "PlanRow", "plan"]


@dataclasses.dataclass
class PlanRow:
    """One conv or dense layer of the plan.

    Attributes:
        name, type: the layer's name and class name.
        kernel: kernel size as text ("3x3"; "" for dense layers).
        binarized: whether ``binarize`` makes it a ``BinaryConv2D``.
        reason: why it stays float (None when binarized).
        shortcut: for a binarized conv, whether its output reaches an ``Add`` before the
            next weighted layer (None: unknown, or not binarized).
        relu_input: whether its input comes out of a ReLU/ReLU6 (read from the graph).
        positive_share: share of its input values that ``sign`` maps to +1 (with data).
        one_signed_share: share of its input channels whose sign is (almost) constant.
        threshold: whether it gets a learnable input threshold (``sign(x - t)``).
        constant_input: every input channel constant over the sample: nothing to binarize.
    """

    name: str
    type: str
    kernel: str
    binarized: bool
    reason: str | None = None
    shortcut: bool | None = None
    relu_input: bool = False
    positive_share: float | None = None
    one_signed_share: float | None = None
    threshold: bool = False
    constant_input: bool = False


@dataclasses.dataclass
class BinarizationPlan:
    """What binarization will do to a model (``bk.plan``); ``str(plan)`` is a table.

    Attributes:
        model_name: the model's name.
        rows: one ``PlanRow`` per conv or dense layer, bottom to top.
        samples: images the statistics came from (0: decided from the graph alone).
        warnings: structure that binarizes badly, said in words.
        errors: problems no default fixes (``check`` raises them).
    """

    model_name: str
    rows: list
    samples: int = 0
    warnings: list = dataclasses.field(default_factory=list)
    errors: list = dataclasses.field(default_factory=list)

    @property
    def binarized(self):
        """Names of the layers to binarize, bottom to top."""
        return [r.name for r in self.rows if r.binarized]

    @property
    def thresholded(self):
        """Names of the binarized layers that get an input threshold."""
        return [r.name for r in self.rows if r.threshold]

    @property
    def kept_float(self):
        """``{name: reason}`` of the layers that stay float."""
        return {r.name: r.reason for r in self.rows if not r.binarized}

    def check(self):
        """Raise ``ValueError`` naming the layers and the cause if the plan has errors."""
        if self.errors:
            raise ValueError(
                f"Model {self.model_name!r} cannot be binarized: " + " ".join(self.errors)
            )

    def to_dict(self):
        return {
            "model": self.model_name,
            "samples": self.samples,
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "warnings": list(self.warnings),
            "errors": list(self.errors),
        }

    def table(self):
        """The plan as text: one line per layer, then the warnings."""
        head = ("layer", "type", "kernel", "decision", "input >= 0", "1-signed ch", "shortcut")
        lines = []
        for r in self.rows:
            if r.binarized:
                decision = "binary + threshold" if r.threshold else "binary"
            else:
                decision = f"float: {r.reason}"
            lines.append(
                (
                    r.name,
                    r.type,
                    r.kernel,
                    decision,
                    _percent(r.positive_share) + (" (ReLU)" if r.relu_input else ""),
                    _percent(r.one_signed_share),
                    {True: "yes", False: "no", None: ""}[r.shortcut if r.binarized else None],
                )
            )
        widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]

        def fmt(row):
            return "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()

        source = f"input statistics of {self.samples} images" if self.samples else "graph only"
        out = [
            f"Binarization plan for {self.model_name!r} ({len(self.binarized)} of "
            f"{len(self.rows)} conv/dense layers binarized; {source})",
            fmt(head),
            *map(fmt, lines),
        ]
        out += [f"warning: {w}" for w in self.warnings]
        out += [f"error: {e}" for e in self.errors]
        return "\n".join(out)

    def __str__(self):
        return self.table()


def _percent(share):
    return "" if share is None else f"{100 * share:.0f} %"


def _kernel_text(layer):
    size = getattr(layer, "kernel_size", None)
    return "x".join(map(str, size)) if size else ""


def _names(names, limit=4):
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def plan(model, data=None, *, images=256, seed=0, input_quantized=True, warn=False):
    """Decide, before any work, what ``binarize`` / ``progressive_fit`` do to ``model``.

    Args:
        model: a built functional or Sequential ``keras.Model``.
        data: optional sample data: ``(x, y)`` / ``(x, y, sample_weight)`` arrays, an
            array of images, or a ``tf.data.Dataset`` of batches. With data the plan
            measures each binarized conv's input (inference mode) and gives a threshold
            to those whose input is one-signed; without, it goes by the graph (inputs
            that come out of a ReLU/ReLU6).
        images: how many images to draw from ``data``.
        seed: seeds the draw.
        input_quantized: False when the inputs stay real (no thresholds are needed).
        warn: also issue each warning (``warnings.warn``, naming the first line outside
            ``bitat_keras`` that led here).

    Returns:
        A ``BinarizationPlan``; ``print(plan)`` shows the table.

    Example:
        >>> model = keras.applications.MobileNet((32, 32, 3), alpha=0.25, weights=None)
        >>> print(bk.plan(model, x_train[:256]))  # doctest: +SKIP
    """
    check_model(model, training=data is not None)  # statistics need one image input
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    model = flatten_model(model)
    preds = predecessors(model)
    rows = []
    for layer, reason in decisions(model):
        row = PlanRow(layer.name, type(layer).__name__, _kernel_text(layer), reason is None)
        row.reason = reason
        if row.binarized:
            row.shortcut = has_shortcut(model, layer.name, preds)
            row.relu_input = relu_fed(model, layer.name, preds)
            row.threshold = input_quantized and row.relu_input
        rows.append(row)
    result = BinarizationPlan(model.name, rows)
    binary = [r for r in rows if r.binarized]
    if data is not None and binary:
        sample = sample_images(data, images, seed)
        result.samples = len(sample)
        layers = [model.get_layer(r.name) for r in binary]
        stats = [SignStats(layer.input.shape[-1]) for layer in layers]
        for batch in input_batches(model, layers, sample):
            for s, x in zip(stats, batch, strict=True):
                s.update(x)
        for r, s in zip(binary, stats, strict=True):
            r.positive_share = s.positive_share
            r.one_signed_share = s.one_signed_share
            r.threshold = input_quantized and s.needs_threshold
            r.constant_input = bool(s.constant.all())
    if nested:
        result.warnings.append(
            f"the model nests the sub-model(s) {_names(nested)}: they are planned, binarized "
            "and trained as one flat model (their layers keep their names unless two "
            "clash), and the binarized model comes back flat."
        )
    _advise(result, model)
    if warn:
        for message in result.warnings:
            caller.warn(message)
    return result


def tensorflow_version():
    """The installed TensorFlow's ``(major, minor)``, read from the package metadata without
    importing it; None when neither ``tensorflow`` nor ``tensorflow-cpu`` is installed."""
    for dist in ("tensorflow", "tensorflow-cpu"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return None


def _advise(result, model):
    policy = mixed_precision_of(model)
    if policy is not None:
        result.warnings.append(
            f"the model (or the global policy) uses the dtype policy {policy!r}; the "
            "binarized model computes in float32 (binary layers and LCE export need "
            "float32). Your model and the global policy are left as they are."
        )
    gelu = [
        layer.name
        for layer in model.layers
        if getattr(getattr(layer, "activation", None), "__name__", "") == "gelu"
    ]
    version = tensorflow_version()
    if gelu and version is not None and version >= (2, 21):
        result.warnings.append(
            f"the layer(s) {_names(gelu)} use exact GELU, which the installed TensorFlow "
            f"{version[0]}.{version[1]} lowers to a custom Erfc op that LCE's runtime lacks: "
            "bk.convert_keras_model would refuse the trained model. Use "
            "keras.activations.gelu(x, approximate=True) (TFLite's GELU op) before "
            "training, or convert under TensorFlow 2.16."
        )
    binary = [r for r in result.rows if r.binarized]
    constant = [r.name for r in binary if r.constant_input]
    if constant:
        result.errors.append(
            f"the inputs of {_names(constant)} are constant over the {result.samples} "
            "sampled images (every channel takes one value), so a binarized conv there "
            "computes a constant. Check the layers below them (dead ReLUs, a zero scale) or "
            "the data."
        )
    if not binary:
        kinds = sorted({r.reason.split(" (")[0] for r in result.rows if r.reason})
        result.warnings.append(
            "no layer can be binarized: BiTAT binarizes regular, undilated Conv2D layers "
            "other than the first conv and the classifier; this model has only "
            + (", ".join(kinds) or "no conv")
            + " layers."
        )
        return
    without = [r.name for r in binary if r.shortcut is False]
    if without:
        result.warnings.append(
            f"{len(without)} of {len(binary)} binarized convs have no shortcut around them "
            f"({_names(without)}): their binarization error passes on undamped, so expect a "
            "larger accuracy drop than in a network built for binarization (every binary "
            "conv with an identity shortcut, as bk.models.reactnet_mobilenet)."
        )
    thresholded = [r.name for r in binary if r.threshold]
    if thresholded:
        why = "are one-signed" if result.samples else "come out of a ReLU/ReLU6"
        result.warnings.append(
            f"the inputs of {len(thresholded)} binarized convs {why} ({_names(thresholded)}): "
            "sign() would map them all to +1, so each gets a learnable per-channel threshold "
            "before its sign (sign(x - t)), initialised so that the sign splits its values."
        )
    floats = [r for r in result.rows if not r.binarized]
    depthwise = [r.name for r in floats if r.reason.startswith(("depthwise", "separable"))]
    if depthwise:
        result.warnings.append(
            f"{len(depthwise)} depthwise/separable convs stay float ({_names(depthwise)}); "
            "only the regular convs between them are binarized."
        )
