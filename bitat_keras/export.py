"""Export Keras 3 models to TFLite flatbuffers with larq-compute-engine (LCE).

TensorFlow and ``larq_compute_engine`` are imported lazily, inside the functions, so that
``import bitat_keras.export`` stays cheap and the training code can run under the JAX
backend without TensorFlow. Conversion itself needs ``KERAS_BACKEND=tensorflow``.

The main entry points:

- :func:`convert_keras_model`: Keras model -> LCE flatbuffer bytes, checking that every
  ``BinaryConv2D`` became an ``LceBconv2d`` (bitpacked binary convolution).
- :func:`convert_float_tflite`: Keras model -> plain TFLite (float or int8), for comparisons.
- :func:`inspect_tflite`: op counts of a flatbuffer, parsed with the TFLite schema.
- :func:`verify_tflite`: max |Keras - LCE interpreter| on given inputs.
- :func:`save_flatbuffer` and :func:`convert_file`: atomic write, and the file-to-file
  converter behind ``bitat-keras convert``.
"""

import collections
import inspect
import os
import re
import tempfile
import warnings

import numpy as np

from bitat_keras.models import check_model, walk_layers

__all__ = [
    "BCONV_OP",
    "ConversionWarning",
    "UnsafeModelError",
    "binary_conv_layers",
    "convert_file",
    "convert_float_tflite",
    "convert_keras_model",
    "inspect_tflite",
    "save_flatbuffer",
    "verify_tflite",
]

#: Name of LCE's bitpacked binary convolution in a flatbuffer's operator-code table.
BCONV_OP = "LceBconv2d"
#: Relative parity (max |diff| / max |keras output|) that `convert_file` calls a match.
PARITY_TOLERANCE = 1e-3

_NO_BINARY_MESSAGE = "no BinaryConv2D layers; the flatbuffer is float"
_FLOAT_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")


class ConversionWarning(UserWarning):
    """Warning raised when a conversion result is (partly) float instead of binary."""


class UnsafeModelError(ValueError):
    """A ``.keras`` file that can only be loaded with ``safe_mode=False`` (e.g. a lambda)."""


# --------------------------------------------------------------------------- helpers


def binary_conv_layers(model):
    """Names of the ``BinaryConv2D`` layers that LCE should turn into ``LceBconv2d``.

    Those are the ``BinaryConv2D`` layers (nested models included) whose
    ``input_quantizer`` and ``kernel_quantizer`` are both set; a layer with only one side
    binarized stays a float convolution by design.

    Args:
        model: a ``keras.Model``.

    Returns:
        A list of layer names, in the model's layer order.

    Example:
        >>> model = bk.models.reactnet_mobilenet((28, 28, 1), 10, 0.25, binary=True)
        >>> len(binary_conv_layers(model))
        31
    """
    from bitat_keras.layers import BinaryConv2D

    check_model(model, training=False)
    names = []
    for layer in walk_layers(model):
        if (
            isinstance(layer, BinaryConv2D)
            and layer.input_quantizer is not None
            and layer.kernel_quantizer is not None
            and layer.name not in names
        ):
            names.append(layer.name)
    return names


def _any_binary_conv(model):
    from bitat_keras.layers import BinaryConv2D

    return any(isinstance(layer, BinaryConv2D) for layer in walk_layers(model))


def _read_flatbuffer(flatbuffer):
    """Return the bytes of a flatbuffer given as bytes-like or as a path."""
    if isinstance(flatbuffer, bytes | bytearray | memoryview):
        return bytes(flatbuffer)
    if isinstance(flatbuffer, str | os.PathLike):
        path = os.fspath(flatbuffer)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite file not found: {path!r}")
        with open(path, "rb") as f:
            return f.read()
    raise TypeError(
        "`flatbuffer` must be bytes (a serialized TFLite model) or a path to a .tflite file. "
        f"Received: {type(flatbuffer).__name__}"
    )


def _schema():
    """The TFLite flatbuffer schema module (LCE's copy, else TensorFlow's)."""
    try:
        from larq_compute_engine.mlir.python import tflite_schema as schema
    except ImportError:  # pragma: no cover - LCE is a dependency; TF's copy is the fallback
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


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
            warnings.warn(
                f"Keras' exporter route failed ({errors[0]}); converted through a traced "
                "tf.function instead.",
                ConversionWarning,
                stacklevel=3,
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


def _tensor_names(subgraph, indices):
    names = []
    for i in indices:
        if i >= 0:
            name = subgraph.Tensors(i).Name()
            names.append(name.decode("utf-8", "replace") if name else "")
    return names


def _float_conv_tensor_names(data):
    """For each float conv op: (strong names: filter + output, weak names: data input)."""
    schema = _schema()
    model = schema.Model.GetRootAs(data, 0)
    op_names = _builtin_names(schema)
    found = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for j in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(j)
            if _op_name(model.OperatorCodes(op.OpcodeIndex()), schema, op_names) not in (
                _FLOAT_CONV_OPS
            ):
                continue
            inputs = [op.Inputs(k) for k in range(op.InputsLength())]
            outputs = [op.Outputs(k) for k in range(op.OutputsLength())]
            strong = _tensor_names(subgraph, inputs[1:] + outputs)
            weak = _tensor_names(subgraph, inputs[:1])
            found.append((strong, weak))
    return found


def _layer_pattern(name):
    # TF scopes a Keras layer "conv" as ".../conv_1/..." (suffix from name uniquification);
    # converter names fuse several locations with ";".
    return re.compile(r"(?:^|[/;])" + re.escape(name) + r"(?:_\d+)?/")


def _locate_float_layers(data, expected, missing):
    """Best-effort: which of `expected` layer names stayed float convs in `data`."""
    convs = _float_conv_tensor_names(data)
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
        warnings.warn(message, ConversionWarning, stacklevel=3)
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
    warnings.warn(message, ConversionWarning, stacklevel=3)


# --------------------------------------------------------------------------- public API


def convert_keras_model(model, *, strict=True, **lce_kwargs):
    """Convert a Keras 3 model to a larq-compute-engine (LCE) TFLite flatbuffer.

    The model is exported to a temporary SavedModel (``model.export(...,
    format="tf_saved_model")``; a single traced ``tf.function`` if that fails) and converted
    with ``larq_compute_engine.convert_saved_model``. The result is parsed: every
    ``BinaryConv2D`` with both quantizers set must have become an ``LceBconv2d`` op.

    Args:
        model: a built functional or Sequential ``keras.Model``. Needs the TensorFlow
            backend.
        strict: if True (default), raise ``ValueError`` naming the ``BinaryConv2D`` layers
            that stayed float; if False, only warn (``ConversionWarning``).
        **lce_kwargs: passed to ``larq_compute_engine.convert_saved_model``
            (``inference_input_type``, ``inference_output_type``, ``target``,
            ``experimental_default_int8_range``).

    Returns:
        The flatbuffer as ``bytes``. A model without ``BinaryConv2D`` layers converts to a
        float flatbuffer with a ``ConversionWarning``.

    Raises:
        TypeError: ``model`` is not a ``keras.Model`` or an LCE option is unknown.
        ValueError: (strict) some binary convolutions stayed float.
        RuntimeError: the model could not be exported or converted.

    Example:
        >>> model = bk.models.reactnet_mobilenet((28, 28, 1), 10, 0.25, binary=True)
        >>> data = convert_keras_model(model)
        >>> inspect_tflite(data)["ops"]["LceBconv2d"]
        31
    """
    check_model(model, training=False)
    lce_kwargs = _lce_convert_kwargs(lce_kwargs)
    data = _convert_via_saved_model(model, lce_kwargs)
    _check_binary(model, data, strict)
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
        arrays = _as_input_list(model, representative_data, "representative_data")
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


def inspect_tflite(flatbuffer):
    """Count the operators of a TFLite flatbuffer by parsing it with the TFLite schema.

    Operators are counted per subgraph by their operator code: the builtin name (e.g.
    ``"CONV_2D"``) or, for custom ops, the custom code (``"LceBconv2d"``,
    ``"LceQuantize"``, ``"LceDequantize"``).

    Args:
        flatbuffer: the serialized model (bytes) or a path to a ``.tflite`` file.

    Returns:
        A dict with ``"ops"`` ({op name: count} over all subgraphs, most frequent first),
        ``"size_bytes"``, ``"num_operators"``, ``"num_subgraphs"`` and ``"subgraphs"`` (per
        subgraph: name, op counts, input and output shapes).

    Example:
        >>> report = inspect_tflite("model.tflite")
        >>> report["ops"].get("LceBconv2d", 0), report["size_bytes"]
    """
    data = _read_flatbuffer(flatbuffer)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            "Not a TFLite flatbuffer: expected the file identifier b'TFL3' at bytes 4..8. "
            f"Received {len(data)} bytes starting with {data[:8]!r}"
        )
    schema = _schema()
    model = schema.Model.GetRootAs(data, 0)
    names = _builtin_names(schema)
    total = collections.Counter()
    subgraphs = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        counts = collections.Counter()
        for j in range(subgraph.OperatorsLength()):
            opcode = model.OperatorCodes(subgraph.Operators(j).OpcodeIndex())
            counts[_op_name(opcode, schema, names)] += 1
        total.update(counts)
        name = subgraph.Name()
        subgraphs.append(
            {
                "name": name.decode("utf-8", "replace") if name else "",
                "ops": _sorted_counts(counts),
                "num_operators": sum(counts.values()),
                "inputs": _shapes(subgraph, subgraph.InputsAsNumpy()),
                "outputs": _shapes(subgraph, subgraph.OutputsAsNumpy()),
            }
        )
    return {
        "ops": _sorted_counts(total),
        "size_bytes": len(data),
        "num_operators": sum(total.values()),
        "num_subgraphs": len(subgraphs),
        "subgraphs": subgraphs,
    }


def _builtin_names(schema):
    return {
        value: key
        for key, value in vars(schema.BuiltinOperator).items()
        if not key.startswith("_") and isinstance(value, int)
    }


def _op_name(opcode, schema, names):
    # Since TFLite schema v3a the builtin code lives in `builtin_code`; older files only set
    # `deprecated_builtin_code` (capped at 127). The real code is the larger of the two.
    code = max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
    if code == schema.BuiltinOperator.CUSTOM:
        custom = opcode.CustomCode()
        return custom.decode("utf-8", "replace") if custom else "CUSTOM"
    return names.get(code, f"BUILTIN_{code}")


def _sorted_counts(counter):
    return dict(sorted(counter.items(), key=lambda item: (-item[1], item[0])))


def _shapes(subgraph, indices):
    if isinstance(indices, int):  # flatbuffers returns 0 for an absent vector
        return []
    return [subgraph.Tensors(int(i)).ShapeAsNumpy().tolist() for i in indices]


def _as_input_list(model, x, what="x"):
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


def _to_interpreter_dtype(array, dtype, scale, zero_point):
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        q = np.round(array / float(np.ravel(scale)[0])) + int(np.ravel(zero_point)[0])
        return np.clip(q, info.min, info.max).astype(dtype)
    return array.astype(dtype)


def _from_interpreter_dtype(array, scale, zero_point):
    if np.issubdtype(array.dtype, np.integer) and scale:
        return (array.astype(np.float32) - float(np.ravel(zero_point)[0])) * float(
            np.ravel(scale)[0]
        )
    return array.astype(np.float32)


def _lce_outputs(data, arrays, interpreter_kwargs):
    """Run the LCE interpreter on `arrays`, in chunks of its fixed batch size."""
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    interpreter = Interpreter(data, **interpreter_kwargs)
    shapes = interpreter.input_shapes
    if len(shapes) != len(arrays):
        raise ValueError(
            f"The flatbuffer has {len(shapes)} input(s) but {len(arrays)} array(s) were given."
        )
    for shape, a in zip(shapes, arrays, strict=True):
        if tuple(shape[1:]) != tuple(a.shape[1:]):
            raise ValueError(
                f"Input shape mismatch: the flatbuffer expects {tuple(shape)} (batch first), "
                f"received samples of shape {tuple(a.shape[1:])}"
            )
    in_specs = list(
        zip(
            interpreter.input_types,
            interpreter.input_scales,
            interpreter.input_zero_points,
            strict=True,
        )
    )
    out_specs = list(zip(interpreter.output_scales, interpreter.output_zero_points, strict=True))
    batch = int(shapes[0][0]) if shapes[0][0] else 1
    n = len(arrays[0])
    results = []
    for start in range(0, n, batch):
        chunk = [a[start : start + batch] for a in arrays]
        real = len(chunk[0])
        if real < batch:  # pad a short last chunk by repeating its last sample
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch - real, axis=0)]) for c in chunk]
        feed = [
            _to_interpreter_dtype(c, dtype, scale, zp)
            for c, (dtype, scale, zp) in zip(chunk, in_specs, strict=True)
        ]
        outs = interpreter.interpreter.predict(feed)
        results.append(
            [
                _from_interpreter_dtype(np.asarray(o), scale, zp)[:real]
                for o, (scale, zp) in zip(outs, out_specs, strict=True)
            ]
        )
    return [np.concatenate(parts) for parts in zip(*results, strict=True)]


def _parity(model, flatbuffer, x, **interpreter_kwargs):
    """(max |keras - lce|, max |keras|) over all outputs."""
    check_model(model, training=False)
    data = _read_flatbuffer(flatbuffer)
    arrays = [a.astype(np.float32) for a in _as_input_list(model, x)]
    expected = _keras_outputs(model, arrays)
    actual = _lce_outputs(data, arrays, interpreter_kwargs)
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
        diff = max(diff, float(np.max(np.abs(e.astype(np.float64) - a))))
        scale = max(scale, float(np.max(np.abs(e))))
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
    ``larq_compute_engine``'s interpreter (which also runs plain TFLite models), chunked to
    the flatbuffer's fixed batch size (1 for LCE conversions); int8 inputs/outputs are
    (de)quantized with their scales.

    Args:
        model: the ``keras.Model`` the flatbuffer was converted from.
        flatbuffer: serialized model (bytes) or path to a ``.tflite`` file.
        x: numpy array of inputs (batch first), or a list of arrays for multi-input models.
        use_indirect_bgemm: use LCE's indirect-BGEMM binary conv kernel (fastest on x86).
        num_threads: interpreter threads.
        use_reference_bconv: use LCE's reference (slow, simple) binary conv kernel.

    Returns:
        ``max |model(x) - interpreter(x)|`` over all outputs, as a float.

    Example:
        >>> data = convert_keras_model(model)
        >>> verify_tflite(model, data, np.random.normal(size=(4, 28, 28, 1)))
        1.1e-05
    """
    diff, _ = _parity(
        model,
        flatbuffer,
        x,
        use_indirect_bgemm=bool(use_indirect_bgemm),
        num_threads=int(num_threads),
        use_reference_bconv=bool(use_reference_bconv),
    )
    return diff


def _current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_flatbuffer(data, path):
    """Write a flatbuffer atomically: a temporary file in the same directory, then
    ``os.replace``. A failed write leaves no partial file and keeps an existing file.

    Args:
        data: the serialized model (bytes-like).
        path: destination file path; its directory must exist.

    Returns:
        The absolute path written, as a string.

    Example:
        >>> save_flatbuffer(convert_keras_model(model), "model.tflite")
        '/home/me/model.tflite'
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"`data` must be bytes (a serialized flatbuffer). Received: {type(data).__name__}"
        )
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`path` must be a str or path-like. Received: {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Cannot write {path!r}: the output directory {directory!r} does not exist. "
            "Create it first."
        )
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot write {path!r}: it is a directory, expected a file path.")
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _load_keras_file(model_path):
    import keras

    import bitat_keras  # noqa: F401 - registers our layers so safe_mode loading finds them

    try:
        return keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - re-raised with a clearer message
        text = str(error)
        if "safe_mode" in text or "arbitrary code execution" in text:
            reason = text.split(". ")[0].rstrip(".")
            raise UnsafeModelError(
                f"Refusing to load {model_path!r}: it can only be loaded with safe_mode=False "
                f"({reason}), which could run arbitrary code; bitat-keras does not load "
                "untrusted code. Rebuild the model without Python lambdas."
            ) from error
        raise ValueError(
            f"Could not load {model_path!r} as a Keras 3 model: {type(error).__name__}: {text}"
        ) from error


def _random_inputs(model, samples, seed):
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.inputs:
        shape = tuple(tensor.shape[1:])
        if any(d is None for d in shape):
            raise ValueError(
                f"Model {model.name!r} has an input of shape {tuple(tensor.shape)}; the parity "
                "check needs static shapes apart from the batch. Use check=False."
            )
        arrays.append(rng.standard_normal((samples, *shape)).astype(np.float32))
    return arrays


def convert_file(
    model_path,
    output_path,
    *,
    check=True,
    strict=True,
    samples=8,
    seed=0,
    float_output_path=None,
):
    """Convert a ``.keras`` file to an LCE ``.tflite`` file, with a parity check and op report.

    The model is loaded with ``safe_mode=True`` (a model that needs ``safe_mode=False`` is
    refused), converted with :func:`convert_keras_model`, written atomically, and, with
    ``check``, run on ``samples`` standard-normal random inputs (``seed``) in Keras and in
    the LCE interpreter.

    Args:
        model_path: path to a Keras 3 ``.keras`` file.
        output_path: destination ``.tflite`` path (its directory must exist).
        check: run the parity check.
        strict: raise if a ``BinaryConv2D`` stayed float (else warn).
        samples: number of random inputs for the parity check.
        seed: seed of the random inputs.
        float_output_path: if given, also write a plain float TFLite flatbuffer there.

    Returns:
        A report dict: ``model_path``, ``output_path``, ``ops``, ``size_bytes``,
        ``num_operators``, ``bconv`` (number of ``LceBconv2d`` ops), ``binary_layers``
        (number of fully binary ``BinaryConv2D`` layers), ``max_abs_diff``,
        ``relative_diff`` (``max_abs_diff / max |keras output|``), ``output_scale``,
        ``parity_ok`` (relative diff <= 1e-3), ``samples``, ``seed`` (parity entries are
        None without ``check``) and, with ``float_output_path``, ``float_size_bytes``.

    Raises:
        FileNotFoundError: missing model file or output directory.
        UnsafeModelError: (a ValueError) the file needs ``safe_mode=False``.
        ValueError: not a loadable ``.keras`` file, or (strict) binary convs stayed float.

    Example:
        >>> report = convert_file("bnn.keras", "bnn.tflite")
        >>> report["bconv"], report["max_abs_diff"]
    """
    model_path = os.fspath(model_path)
    output_path = os.fspath(output_path)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"Model file not found: {model_path!r}")
    if not model_path.endswith(".keras"):
        raise ValueError(
            f"Expected a Keras 3 `.keras` file. Received: {model_path!r} (save the model with "
            "`model.save('model.keras')`)."
        )
    outputs = [output_path] + ([os.fspath(float_output_path)] if float_output_path else [])
    for path in outputs:
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(
                f"Cannot write {path!r}: the output directory {directory!r} does not exist."
            )
    samples = int(samples)
    if check and samples < 1:
        raise ValueError(f"`samples` must be >= 1 when check=True. Received: {samples}")

    model = _load_keras_file(model_path)
    data = convert_keras_model(model, strict=strict)
    written = save_flatbuffer(data, output_path)
    info = inspect_tflite(data)
    report = {
        "model_path": os.path.abspath(model_path),
        "output_path": written,
        "ops": info["ops"],
        "size_bytes": info["size_bytes"],
        "num_operators": info["num_operators"],
        "bconv": info["ops"].get(BCONV_OP, 0),
        "binary_layers": len(binary_conv_layers(model)),
        "max_abs_diff": None,
        "relative_diff": None,
        "output_scale": None,
        "parity_ok": None,
        "samples": samples if check else 0,
        "seed": seed,
    }
    if check:
        diff, scale = _parity(model, data, _random_inputs(model, samples, seed))
        relative = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
        report.update(
            max_abs_diff=diff,
            relative_diff=relative,
            output_scale=scale,
            parity_ok=bool(relative <= PARITY_TOLERANCE),
        )
    if float_output_path:
        float_data = convert_float_tflite(model)
        report["float_output_path"] = save_flatbuffer(float_data, float_output_path)
        report["float_size_bytes"] = len(float_data)
    return report


def lce_benchmark_commands(model_path, threads=(1, 4), runs=100):
    """The shell commands that time ``model_path`` with LCE's ``lce_benchmark_model`` on a
    64-bit ARM Linux board (Raspberry Pi) and on an Android phone over adb, one pair per
    thread count. Build the binary from larq-compute-engine's repository
    (``bazel build -c opt --config=aarch64
    //larq_compute_engine/tflite/benchmark:lce_benchmark_model``) or take it from LCE's
    GitHub releases.

    Args:
        model_path: the LCE ``.tflite`` flatbuffer on this machine.
        threads: ``--num_threads`` values.
        runs: ``--num_runs`` (after 10 warm-up runs).

    Example:
        >>> print("\n\n".join(lce_benchmark_commands("bitat.tflite", threads=[1])))
    """
    name = os.path.basename(model_path)
    out = []
    for t in threads:
        out.append(
            "# Raspberry Pi 4 / any 64-bit ARM Linux board:\n"
            f"scp {model_path} pi@raspberrypi.local:~/\n"
            f"ssh pi@raspberrypi.local ./lce_benchmark_model --graph=$HOME/{name} "
            f"--num_threads={t} --num_runs={runs} --warmup_runs=10"
        )
        out.append(
            "# Android phone over adb:\n"
            f"adb push lce_benchmark_model {model_path} /data/local/tmp/\n"
            "adb shell chmod +x /data/local/tmp/lce_benchmark_model\n"
            f"adb shell /data/local/tmp/lce_benchmark_model --graph=/data/local/tmp/{name} "
            f"--num_threads={t} --num_runs={runs} --warmup_runs=10"
        )
    return out
