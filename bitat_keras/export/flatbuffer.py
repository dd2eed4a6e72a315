"""Reading TFLite flatbuffers: op counts, op order and tensor names, parsed with the TFLite
schema that ships with TensorFlow (imported lazily)."""

import collections
import os

__all__ = [
    "BCONV_OP",
    "LCE_CUSTOM_OPS",
    "custom_op_names",
    "float_conv_tensor_names",
    "inspect_tflite",
    "read_flatbuffer",
    "tflite_schema",
]

#: Name of LCE's bitpacked binary convolution in a flatbuffer's operator-code table.
BCONV_OP = "LceBconv2d"
#: The custom ops LCE's interpreter and runtime register besides TFLite's builtins.
LCE_CUSTOM_OPS = frozenset({BCONV_OP, "LceQuantize", "LceDequantize", "LceBMaxPool2d"})


_FLOAT_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV")


def read_flatbuffer(flatbuffer):
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


def tflite_schema():
    """The TFLite flatbuffer schema module (LCE's copy, else TensorFlow's)."""
    try:
        from larq_compute_engine.mlir.python import tflite_schema as schema
    except ImportError:  # pragma: no cover - LCE is a dependency; TF's copy is the fallback
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


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
        subgraph: name, op counts, the op names in execution order (``"operators"``), input
        and output shapes).

    Example:
        >>> report = inspect_tflite("model.tflite")
        >>> report["ops"].get("LceBconv2d", 0), report["size_bytes"]
    """
    data = read_flatbuffer(flatbuffer)
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise ValueError(
            "Not a TFLite flatbuffer: expected the file identifier b'TFL3' at bytes 4..8. "
            f"Received {len(data)} bytes starting with {data[:8]!r}"
        )
    schema = tflite_schema()
    model = schema.Model.GetRootAs(data, 0)
    names = builtin_names(schema)
    total = collections.Counter()
    subgraphs = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        operators = [
            op_name(model.OperatorCodes(subgraph.Operators(j).OpcodeIndex()), schema, names)
            for j in range(subgraph.OperatorsLength())
        ]
        counts = collections.Counter(operators)
        total.update(counts)
        name = subgraph.Name()
        subgraphs.append(
            {
                "name": name.decode("utf-8", "replace") if name else "",
                "ops": _sorted_counts(counts),
                "operators": operators,
                "num_operators": len(operators),
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


def custom_op_names(flatbuffer):
    """The custom codes in a flatbuffer's operator-code table (``{"LceBconv2d", ...}``):
    ops a runtime must register itself, as TFLite's builtins do not include them.

    Example:
        >>> custom_op_names(convert_keras_model(bnn)) <= LCE_CUSTOM_OPS
        True
    """
    data = read_flatbuffer(flatbuffer)
    schema = tflite_schema()
    model = schema.Model.GetRootAs(data, 0)
    out = set()
    for i in range(model.OperatorCodesLength()):
        opcode = model.OperatorCodes(i)
        if (
            max(opcode.BuiltinCode(), opcode.DeprecatedBuiltinCode())
            == schema.BuiltinOperator.CUSTOM
        ):
            code = opcode.CustomCode()
            out.add(code.decode("utf-8", "replace") if code else "CUSTOM")
    return out


def builtin_names(schema):
    return {
        value: key
        for key, value in vars(schema.BuiltinOperator).items()
        if not key.startswith("_") and isinstance(value, int)
    }


def op_name(opcode, schema, names):
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


def _tensor_names(subgraph, indices):
    names = []
    for i in indices:
        if i >= 0:
            name = subgraph.Tensors(i).Name()
            names.append(name.decode("utf-8", "replace") if name else "")
    return names


def float_conv_tensor_names(data):
    """For each float conv op: (strong names: filter + output, weak names: data input)."""
    schema = tflite_schema()
    model = schema.Model.GetRootAs(data, 0)
    op_names = builtin_names(schema)
    found = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for j in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(j)
            if op_name(model.OperatorCodes(op.OpcodeIndex()), schema, op_names) not in (
                _FLOAT_CONV_OPS
            ):
                continue
            inputs = [op.Inputs(k) for k in range(op.InputsLength())]
            outputs = [op.Outputs(k) for k in range(op.OutputsLength())]
            strong = _tensor_names(subgraph, inputs[1:] + outputs)
            weak = _tensor_names(subgraph, inputs[:1])
            found.append((strong, weak))
    return found
