"""Keras 3 model -> LCE flatbuffer (every ``BinaryConv2D`` checked to be an ``LceBconv2d``),
and Keras 3 model -> plain float or int8 TFLite for comparisons."""

import inspect
import re
import tempfile

from bitat_keras import caller
from bitat_keras.export.checks import ConversionWarning, check_convertible
from bitat_keras.export.flatbuffer import (
    BCONV_OP,
    LCE_CUSTOM_OPS,
    custom_op_names,
    float_conv_tensor_names,
    inspect_tflite,
)
from bitat_keras.export.parity import input_list
from bitat_keras.graph.structure import check_model, walk_layers
from bitat_keras.nn.layers import BinaryConv2D, is_binary_conv

__all__ = [
    "ConversionWarning",
    "binary_conv_layers",
    "check_runtime_ops",
    "convert_float_tflite",
    "convert_keras_model",
]

_NO_BINARY_MESSAGE = "no BinaryConv2D layers; the flatbuffer is float"


def binary_conv_layers(model):
    """Names of the ``BinaryConv2D`` layers that LCE should turn into ``LceBconv2d``.

    Those are the layers (nested models included) for which ``layers.is_binary_conv``
    holds: ``BinaryConv2D`` layers whose ``input_quantizer`` and ``kernel_quantizer`` are
    both set; a layer with only one side binarized stays a float convolution by design.

    Args:
        model: a ``keras.Model``.

    Returns:
        A list of layer names, in the model's layer order.

    Example:
        >>> model = bk.models.reactnet_mobilenet((28, 28, 1), 10, 0.25, binary=True)
        >>> len(binary_conv_layers(model))
        31
    """
    check_model(model, training=False)
    names = []
    for layer in walk_layers(model):
        if is_binary_conv(layer) and layer.name not in names:
            names.append(layer.name)
    return names


def _any_binary_conv(model):
    return any(isinstance(layer, BinaryConv2D) for layer in walk_layers(model))


def _lce_convert_kwargs(lce_kwargs):
    """Validate keyword arguments for ``larq_compute_engine.convert_saved_model``."""
    import larq_compute_engine as lce

    params = inspect.signature(lce.convert_saved_model).parameters
    accepted = sorted(n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    unknown = sorted(set(lce_kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"Unknown larq-compute-engine conversion option(s): {unknown}. "
            f"Expected some of: {accepted}"
        )
    return lce_kwargs


def _input_specs(model, batch_size=None):
    import tensorflow as tf

    specs = []
    for tensor in model.inputs:
        shape = list(tensor.shape)
        shape[0] = batch_size
        specs.append(tf.TensorSpec(shape, tensor.dtype or "float32", name=tensor.name))
    return specs


def _export_with_keras(model, directory):
    """SavedModel through Keras' own exporter (`model.export`)."""
    model.export(directory, format="tf_saved_model", verbose=False)


def _export_with_tf_function(model, directory, batch_size=None):
    """SavedModel of one traced ``tf.function`` with the variables frozen into constants.

    TensorFlow backend only. Faster than ``model.export`` and allows a fixed batch size.
    (Keeping live variables in a bare ``tf.Module`` instead made LCE 0.16 abort the process
    with "LLVM ERROR: Failed to infer result type(s)".)
    """
    import keras
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    if keras.config.backend() != "tensorflow":
        raise RuntimeError(
            f"tf.function export needs the TensorFlow backend; current: {keras.config.backend()}"
        )
    if not model.inputs:
        raise ValueError(f"Model {model.name!r} has no symbolic inputs to trace.")
    specs = _input_specs(model, batch_size)
    single = len(specs) == 1

    def call(*args):
        return model(args[0] if single else list(args), training=False)

    frozen = convert_variables_to_constants_v2(tf.function(call).get_concrete_function(*specs))
    module = tf.Module()
    module.serve = tf.function(lambda *args: frozen(*args), input_signature=specs)
    tf.saved_model.save(
        module,
        directory,
        signatures=module.serve.get_concrete_function(),
        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
    )


def _convert_via_saved_model(model, lce_kwargs):
    """Export `model` to a temporary SavedModel and convert it with LCE.

    Tries Keras' exporter first, then a single traced ``tf.function``; raises RuntimeError
    with both errors if neither works.
    """
    import keras
    import larq_compute_engine as lce

    errors = []
    for label, exporter in (
        ("model.export", _export_with_keras),
        ("tf.function", _export_with_tf_function),
    ):
        with tempfile.TemporaryDirectory(prefix="bitat_keras_export_") as directory:
            try:
                exporter(model, directory)
            except Exception as error:  # noqa: BLE001 - we report every route's error
                errors.append(f"{label}: {type(error).__name__}: {error}".strip())
                continue
            try:
                data = lce.convert_saved_model(directory, **lce_kwargs)
            except (TypeError, ValueError):
                raise  # bad conversion options: the caller's error, not the exporter's
            except Exception as error:  # noqa: BLE001 - we report every route's error
                errors.append(f"{label}: {type(error).__name__}: {error}".strip())
                continue
        if errors:
            caller.warn(
                f"Keras' exporter route failed ({errors[0]}); converted through a traced "
                "tf.function instead.",
                ConversionWarning,
            )
        return bytes(data)
    hint = ""
    if keras.config.backend() != "tensorflow":
        hint = (
            f" LCE conversion needs KERAS_BACKEND=tensorflow (current backend: "
            f"{keras.config.backend()}). Save the model (`model.save('m.keras')`) and run "
            "`bitat-keras convert m.keras -o m.tflite` in a TensorFlow-backend process."
        )
    raise RuntimeError(
        f"Could not convert model {model.name!r} with larq-compute-engine."
        + hint
        + " Errors: "
        + " | ".join(errors)
    )


def _layer_pattern(name):
    # TF scopes a Keras layer "conv" as ".../conv_1/..." (suffix from name uniquification);
    # converter names fuse several locations with ";".
    return re.compile(r"(?:^|[/;])" + re.escape(name) + r"(?:_\d+)?/")


def _locate_float_layers(data, expected, missing):
    """Best-effort: which of `expected` layer names stayed float convs in `data`."""
    convs = float_conv_tensor_names(data)
    patterns = {name: _layer_pattern(name) for name in expected}
    located = []
    for use_weak in (False, True):
        if len(located) >= missing:
            break
        for name, pattern in patterns.items():
            if name in located:
                continue
            for strong, weak in convs:
                names = strong + weak if use_weak else strong
                if any(pattern.search(n) for n in names):
                    located.append(name)
                    break
    return [name for name in expected if name in located]


def _check_binary(model, data, strict):
    """Compare LceBconv2d ops with the model's BinaryConv2D layers; raise or warn."""
    expected = binary_conv_layers(model)
    if not expected:
        if _any_binary_conv(model):
            message = (
                f"Model {model.name!r} has no BinaryConv2D layers with both input_quantizer "
                f"and kernel_quantizer set: {_NO_BINARY_MESSAGE}."
            )
        else:
            message = f"Model {model.name!r} has {_NO_BINARY_MESSAGE}."
        caller.warn(message, ConversionWarning)
        return
    found = inspect_tflite(data)["ops"].get(BCONV_OP, 0)
    if found >= len(expected):
        return
    missing = len(expected) - found
    located = _locate_float_layers(data, expected, missing)
    if located:
        which = f"These stayed float: {located}"
        if len(located) < missing:
            which += f" (and {missing - len(located)} more not identified by name)"
    else:
        which = "Could not tell which by tensor names"
    message = (
        f"Only {found} of {len(expected)} BinaryConv2D layers in model {model.name!r} became "
        f"{BCONV_OP} ops; {missing} stayed float convolution(s). {which}. "
        "LCE needs a sign input binarizer, a kernel that folds to a constant equal to "
        "+-alpha per output channel, VALID or TF-SAME padding, and for grouped convs a "
        "multiple of 32 input channels per group."
    )
    if strict:
        raise ValueError(message + " Pass strict=False to keep the partly float flatbuffer.")
    caller.warn(message, ConversionWarning)


# What the converter lowers to a custom op that no runtime registers, and the way out.
_CUSTOM_OP_HINTS = {
    "Erfc": "exact GELU (keras.activations.gelu, approximate=False), which TensorFlow 2.21 "
    "lowers to Erfc (TensorFlow 2.16 converts it to TFLite's GELU op): use "
    "gelu(x, approximate=True), which converts to the GELU op under both",
}


def check_runtime_ops(model, data, strict=True):
    """Raise (``strict``) or warn when the flatbuffer ``data`` of ``model`` needs custom ops
    that neither TFLite's builtins nor LCE provide: LCE's interpreter and
    ``lce_benchmark_model`` would refuse it when allocating its tensors.

    Example:
        >>> check_runtime_ops(bnn, convert_keras_model(bnn))  # doctest: +SKIP
    """
    unknown = sorted(custom_op_names(data) - LCE_CUSTOM_OPS)
    if not unknown:
        return
    hints = [f"{op}: {_CUSTOM_OP_HINTS[op]}" for op in unknown if op in _CUSTOM_OP_HINTS]
    message = (
        f"The flatbuffer of model {model.name!r} needs the custom op(s) {unknown}, which "
        "neither TFLite's builtins nor LCE provide, so LCE's interpreter and runtime cannot "
        "run it. Expected only builtin ops and LCE's "
        f"{sorted(LCE_CUSTOM_OPS)}."
        + (f" Where they come from: {'; '.join(hints)}." if hints else "")
    )
    if strict:
        raise ValueError(
            message + " Pass strict=False to keep it for a runtime that registers them."
        )
    caller.warn(message, ConversionWarning)


def convert_keras_model(model, *, strict=True, **lce_kwargs):
    """Convert a Keras 3 model to a larq-compute-engine (LCE) TFLite flatbuffer.

    The model is first checked (:func:`~bitat_keras.export.checks.check_convertible`):
    layers LCE cannot convert exactly and non-finite weights are errors, a model that looks
    never trained a warning. It is then exported to a temporary SavedModel (``model.export(...,
    format="tf_saved_model")``; a single traced ``tf.function`` if that fails) and converted
    with ``larq_compute_engine.convert_saved_model``. The result is parsed: every
    ``BinaryConv2D`` with both quantizers set must have become an ``LceBconv2d`` op.

    Args:
        model: a built functional or Sequential ``keras.Model``. Needs the TensorFlow
            backend.
        strict: if True (default), raise ``ValueError`` naming the ``BinaryConv2D`` layers
            that stay (or stayed) float or are grouped; if False, only warn
            (``ConversionWarning``).
        **lce_kwargs: passed to ``larq_compute_engine.convert_saved_model``
            (``inference_input_type``, ``inference_output_type``, ``target``,
            ``experimental_default_int8_range``).

    Returns:
        The flatbuffer as ``bytes``. A model without ``BinaryConv2D`` layers converts to a
        float flatbuffer with a ``ConversionWarning``.

    Raises:
        TypeError: ``model`` is not a ``keras.Model`` or an LCE option is unknown.
        ValueError: a layer LCE cannot convert exactly, a NaN or infinite weight, or
            (strict) binary convolutions that stay float or are grouped, or custom ops
            that neither TFLite nor LCE provide (``check_runtime_ops``).
        RuntimeError: the model could not be exported or converted.

    Example:
        >>> model = bk.models.reactnet_mobilenet((28, 28, 1), 10, 0.25, binary=True)
        >>> data = convert_keras_model(model)
        >>> inspect_tflite(data)["ops"]["LceBconv2d"]
        31
    """
    check_convertible(model, strict=strict)
    lce_kwargs = _lce_convert_kwargs(lce_kwargs)
    data = _convert_via_saved_model(model, lce_kwargs)
    _check_binary(model, data, strict)
    check_runtime_ops(model, data, strict)
    return data


def convert_float_tflite(model, *, int8=False, representative_data=None):
    """Convert a Keras 3 model to a plain TFLite flatbuffer with TensorFlow's converter.

    Meant for size and latency comparisons with the LCE flatbuffer. Binary layers stay
    float (their sign ops run as ordinary TFLite ops).

    Args:
        model: a built functional or Sequential ``keras.Model`` (TensorFlow backend).
        int8: if True, post-training integer quantization calibrated on
            ``representative_data`` (inputs and outputs stay float32; ops that cannot be
            quantized stay float).
        representative_data: numpy array of model inputs (batch first), or a list of arrays
            for a multi-input model. Required when ``int8=True``; at most 200 samples used.

    Returns:
        The flatbuffer as ``bytes``.

    Example:
        >>> data = convert_float_tflite(model)
        >>> data8 = convert_float_tflite(model, int8=True, representative_data=x_train[:100])
    """
    check_model(model, training=False)
    if int8 and representative_data is None:
        raise ValueError(
            "int8=True needs `representative_data` (a numpy array of typical model inputs, "
            "batch first). Received: representative_data=None"
        )
    samples = None
    if int8:
        arrays = input_list(model, representative_data, "representative_data")
        count = min(len(arrays[0]), 200)
        samples = [[a[i : i + 1] for a in arrays] for i in range(count)]

    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="bitat_keras_export_") as directory:
        try:
            _export_with_keras(model, directory)
        except Exception:  # noqa: BLE001 - fall back to the traced-function route
            _export_with_tf_function(model, directory)
        converter = tf.lite.TFLiteConverter.from_saved_model(directory)
        if int8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: iter(samples)
        return bytes(converter.convert())
