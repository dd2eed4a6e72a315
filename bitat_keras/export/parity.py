"""Parity: the Keras model's outputs against the LCE interpreter's on the same inputs."""

import numpy as np

from bitat_keras.export.flatbuffer import read_flatbuffer
from bitat_keras.export.interpreter import LceInterpreter
from bitat_keras.graph.structure import check_model

__all__ = ["input_list", "parity", "verify_tflite"]


def input_list(model, x, what="x"):
    """Turn `x` into a list of float arrays, one per model input, with equal batch size."""
    arrays = list(x) if isinstance(x, list | tuple) else [x]
    n_inputs = len(model.inputs) if getattr(model, "inputs", None) else 1
    if len(arrays) != n_inputs:
        raise ValueError(
            f"Model {model.name!r} has {n_inputs} input(s); `{what}` gave {len(arrays)} "
            "array(s). Pass one array, or a list with one array per input."
        )
    arrays = [np.asarray(a) for a in arrays]
    for a in arrays:
        if a.ndim == 0 or len(a) == 0:
            raise ValueError(
                f"`{what}` must hold at least one sample (batch first). "
                f"Received an array of shape {a.shape}"
            )
    if len({len(a) for a in arrays}) != 1:
        raise ValueError(
            f"All `{what}` arrays need the same batch size. "
            f"Received: {[a.shape for a in arrays]}"
        )
    return arrays


def _keras_outputs(model, arrays, chunk=32):
    import keras

    outputs = []
    for start in range(0, len(arrays[0]), chunk):
        batch = [a[start : start + chunk] for a in arrays]
        y = model(batch[0] if len(batch) == 1 else batch, training=False)
        y = y if isinstance(y, list | tuple) else [y]
        outputs.append([keras.ops.convert_to_numpy(t) for t in y])
    return [np.concatenate(parts) for parts in zip(*outputs, strict=True)]


def parity(model, flatbuffer, x, **interpreter_kwargs):
    """(max |keras - lce|, max |keras|) over all outputs."""
    check_model(model, training=False)
    data = read_flatbuffer(flatbuffer)
    arrays = [a.astype(np.float32) for a in input_list(model, x)]
    expected = _keras_outputs(model, arrays)
    actual = LceInterpreter(data, **interpreter_kwargs).predict(arrays)
    actual = actual if isinstance(actual, list) else [actual]
    if len(expected) != len(actual):
        raise ValueError(
            f"Model {model.name!r} has {len(expected)} output(s); the flatbuffer has "
            f"{len(actual)}."
        )
    diff, scale = 0.0, 0.0
    for e, a in zip(expected, actual, strict=True):
        if e.shape != a.shape:
            raise ValueError(
                f"Output shape mismatch: Keras gave {e.shape}, the interpreter {a.shape}."
            )
        d = float(np.max(np.abs(e.astype(np.float64) - a)))
        diff = max(diff, float("inf") if np.isnan(d) else d)  # a NaN output never matches
        scale = max(scale, float(np.max(np.abs(np.where(np.isnan(e), 0.0, e)))))
    return diff, scale


def verify_tflite(
    model,
    flatbuffer,
    x,
    *,
    use_indirect_bgemm=False,
    num_threads=1,
    use_reference_bconv=False,
):
    """Max absolute difference between a Keras model and the LCE interpreter on ``x``.

    The Keras model runs in inference mode (``training=False``). The flatbuffer runs in
    ``larq_compute_engine``'s interpreter (which also runs plain TFLite models) through
    :class:`LceInterpreter`, chunked to the flatbuffer's fixed batch size (1 for LCE
    conversions); int8 inputs/outputs are (de)quantized with their scales. Works under
    numpy 1 and numpy 2.

    Args:
        model: the ``keras.Model`` the flatbuffer was converted from.
        flatbuffer: serialized model (bytes) or path to a ``.tflite`` file.
        x: numpy array of inputs (batch first), or a list of arrays for multi-input models.
        use_indirect_bgemm: use LCE's indirect-BGEMM binary conv kernel (fastest on x86).
        num_threads: interpreter threads.
        use_reference_bconv: use LCE's reference (slow, simple) binary conv kernel.

    Returns:
        ``max |model(x) - interpreter(x)|`` over all outputs, as a float.

    Raises:
        LceNumpyError: LCE's interpreter cannot run under this numpy (an unknown dtype
            layout, or 1-byte inputs or outputs under numpy 2); the message says what to do.

    Example:
        >>> data = convert_keras_model(model)
        >>> verify_tflite(model, data, np.random.normal(size=(4, 28, 28, 1)))
        1.1e-05
    """
    diff, _ = parity(
        model,
        flatbuffer,
        x,
        use_indirect_bgemm=bool(use_indirect_bgemm),
        num_threads=int(num_threads),
        use_reference_bconv=bool(use_reference_bconv),
    )
    return diff
