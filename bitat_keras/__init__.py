"""bitat-keras: BiTAT binarization for Keras 3, exported with larq-compute-engine.

The package in floors: ``nn`` (quantizers, layers, constraints, regularizers), ``graph``
(structure, plan, thresholds, ``binarize``), ``method`` (BiTAT's transform), ``fit``
(Algorithm 1, its phases, the baselines), ``applications``, ``inspect``, ``export``, ``cli``;
``datasets`` and ``plots`` beside them; ``models`` gathers the whole-model functions.
"""

import sys as _sys

try:
    import keras  # noqa: F401  (Keras imports its backend here)
except ModuleNotFoundError as error:  # TensorFlow is an extra: it may be missing
    backend = (error.name or "").split(".")[0]
    if backend not in ("tensorflow", "jax", "torch"):
        raise
    raise ModuleNotFoundError(
        f"Keras' {backend} backend is not installed ({error}). bitat-keras does not install "
        "TensorFlow itself, so that a runtime's own TensorFlow (Colab's GPU build) is never "
        'replaced. Install one: `pip install "bitat-keras[tensorflow]"` (or '
        '`[tensorflow-cpu]`), or `pip install "bitat-keras[jax]"` and set KERAS_BACKEND=jax.',
        name=error.name,
    ) from error

from bitat_keras import datasets, models
from bitat_keras.export import convert_keras_model, inspect_tflite, verify_tflite
from bitat_keras.fit import baselines, multi_worker, teacher, training
from bitat_keras.fit.baselines import naive_ste, reactnet_two_step
from bitat_keras.fit.checkpoint import CheckpointError
from bitat_keras.fit.progressive import (
    BiTATResult,
    NonFiniteLossError,
    PhaseRecord,
    progressive_fit,
)
from bitat_keras.graph import structure, thresholds
from bitat_keras.graph.binarization_plan import BinarizationPlan, plan
from bitat_keras.graph.binarize import binarize
from bitat_keras.inspect import analysis, callbacks
from bitat_keras.method import trained_block, transform
from bitat_keras.method.config import BiTATConfig
from bitat_keras.nn import constraints, layers, quantizers, regularizers

__version__ = "0.2.0"

# The floors' public modules under their 0.2 paths too, where the package was flat:
# `from bitat_keras.layers import BinaryConv2D` keeps working.
for _name in (
    "analysis", "baselines", "callbacks", "constraints", "layers", "multi_worker", "quantizers",
    "regularizers", "structure", "teacher", "thresholds", "trained_block", "training", "transform",
):  # fmt: skip
    _sys.modules[f"{__name__}.{_name}"] = globals()[_name]
del _name

__all__ = [
    "BiTATConfig",
    "analysis",
    "baselines",
    "callbacks",
    "datasets",
    "BiTATResult",
    "BinarizationPlan",
    "CheckpointError",
    "NonFiniteLossError",
    "PhaseRecord",
    "binarize",
    "convert_keras_model",
    "inspect_tflite",
    "verify_tflite",
    "constraints",
    "layers",
    "models",
    "multi_worker",
    "naive_ste",
    "plan",
    "progressive_fit",
    "quantizers",
    "reactnet_two_step",
    "regularizers",
    "structure",
    "teacher",
    "thresholds",
    "trained_block",
    "training",
    "transform",
]
