"""bitat-keras: BiTAT binarization for Keras 3, exported with larq-compute-engine."""

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

from bitat_keras import (
    analysis,
    baselines,
    callbacks,
    constraints,
    datasets,
    layers,
    models,
    multi_worker,
    quantizers,
    regularizers,
    structure,
    teacher,
    thresholds,
    trained_block,
    training,
    transform,
)
from bitat_keras.baselines import naive_ste, reactnet_two_step
from bitat_keras.binarization_plan import BinarizationPlan, plan
from bitat_keras.checkpoint import CheckpointError
from bitat_keras.config import BiTATConfig
from bitat_keras.export import convert_keras_model, inspect_tflite, verify_tflite
from bitat_keras.models import binarize
from bitat_keras.progressive import BiTATResult, NonFiniteLossError, progressive_fit

__version__ = "0.2.0"

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
