"""The converter's input checks, made before any conversion work: the ``.keras`` file (a zip
archive that holds a Keras 3 model) and the model (binary convolutions LCE converts
exactly, finite weights, binary layers that look never trained).

Every error names the file or the layer, what was received and what was expected.
"""

import json
import os
import zipfile
import zlib

import keras
import numpy as np

from bitat_keras import caller
from bitat_keras.graph.structure import check_model, walk_layers
from bitat_keras.nn.layers import BinaryConv2D, is_binary_conv

__all__ = [
    "ConversionWarning",
    "ModelFileError",
    "UntrainedModelWarning",
    "check_convertible",
    "check_keras_file",
    "is_binary_conv",
]

# LCE bitpacks a grouped binary conv only with this many input channels per group (or a
# multiple), and only its indirect-BGEMM kernel runs it.
_GROUP_CHANNELS = 32
_SAVE_HINT = "the zip archive `model.save('model.keras')` writes"
_CHANNELS_FIRST = (
    "LCE's binary convolution is NHWC only, so it cannot convert it. Rebuild the model with "
    "channels_last layers (keras.config.set_image_data_format('channels_last')) and "
    "(height, width, channels) inputs; conv kernels have the same layout in both formats, "
    "so the weights copy over with set_weights()."
)


class ConversionWarning(UserWarning):
    """Warning raised when a conversion result is (partly) float instead of binary."""


class UntrainedModelWarning(UserWarning):
    """The model converts exactly but looks never trained (its flatbuffer would compute
    what an untrained network computes)."""


class ModelFileError(ValueError):
    """A file that is not a loadable Keras 3 ``.keras`` model (damaged, truncated, or
    something else)."""


# --------------------------------------------------------------------------- the file


def _not_a_zip(path, size, head):
    if size == 0:
        return f"Cannot load {path!r}: the file is empty (0 bytes). Expected {_SAVE_HINT}."
    if head.startswith(b"PK\x03\x04"):
        return (
            f"Cannot load {path!r}: it is a truncated or damaged zip archive ({size:,} bytes, "
            "and the zip directory that ends a complete archive is missing), so it was "
            f"probably cut short by an interrupted save, copy or download. Expected {_SAVE_HINT}, "
            "complete: save or copy the model again."
        )
    kind = "not a zip archive"
    if head.startswith(b"\x89HDF"):
        kind = "an HDF5 file (Keras 2's .h5 format), not a zip archive"
    return (
        f"Cannot load {path!r}: it is {kind} (it starts with {head[:8]!r}). Expected "
        f"{_SAVE_HINT}. Load the model with the library that wrote it and save it with "
        "`model.save('model.keras')`."
    )


def _binary_conv_classes():
    """Names under which ``BinaryConv2D`` and its subclasses are serialized."""
    names, todo = set(), [BinaryConv2D]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        names.add(keras.saving.get_registered_name(cls))
        todo.extend(cls.__subclasses__())
    return names


def _layer_configs(config):
    """Every serialized layer (a dict with ``class_name`` and ``config``) inside ``config``."""
    if isinstance(config, dict):
        if "class_name" in config and isinstance(config.get("config"), dict):
            yield config
        for value in config.values():
            yield from _layer_configs(value)
    elif isinstance(config, list):
        for value in config:
            yield from _layer_configs(value)


def check_keras_file(path):
    """Check, without loading it, that ``path`` is a readable Keras 3 ``.keras`` file.

    Checks that the file exists, is a complete zip archive whose members read back with
    their checksums, holds a ``config.json`` that parses, and that no ``BinaryConv2D`` in it
    is ``channels_first`` (LCE is NHWC; such a layer could not even be rebuilt).

    Args:
        path: path to the ``.keras`` file.

    Returns:
        The model's config (the parsed ``config.json``).

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: ``path`` is a directory.
        ModelFileError: (a ``ValueError``) not a ``.keras`` name, not a zip archive,
            truncated or damaged, no or unreadable ``config.json``, or a
            ``channels_first`` ``BinaryConv2D``.

    Example:
        >>> config = check_keras_file("bnn.keras")
        >>> config["class_name"]
        'Functional'
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        hint = ""
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            hint = (
                " It holds a TensorFlow SavedModel: load the Keras model it was exported "
                "from and save it with `model.save('model.keras')`."
            )
        raise IsADirectoryError(
            f"Cannot load {path!r}: it is a directory; expected a Keras 3 `.keras` file.{hint}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Model file not found: {path!r}. Expected an existing Keras 3 `.keras` file."
        )
    if not path.endswith(".keras"):
        raise ModelFileError(
            f"Expected a Keras 3 `.keras` file. Received: {path!r} (save the model with "
            "`model.save('model.keras')`)."
        )
    with open(path, "rb") as f:
        head = f.read(8)
    if not zipfile.is_zipfile(path):
        raise ModelFileError(_not_a_zip(path, os.path.getsize(path), head))
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every member, checks its CRC
            members = archive.namelist()
            text = archive.read("config.json") if "config.json" in members else None
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise ModelFileError(
            f"Cannot load {path!r}: the zip archive is damaged ({error}). Expected {_SAVE_HINT}: "
            "save or copy the model again."
        ) from error
    if damaged is not None:
        raise ModelFileError(
            f"Cannot load {path!r}: member {damaged!r} of the zip archive fails its checksum "
            f"(the file is damaged). Expected {_SAVE_HINT}: save or copy the model again."
        )
    if text is None:
        raise ModelFileError(
            f"Cannot load {path!r}: the zip archive holds no config.json (it holds "
            f"{sorted(members)[:5]}), so it is not a Keras 3 model. Expected {_SAVE_HINT} "
            "(config.json, metadata.json, model.weights.h5)."
        )
    try:
        config = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(
            f"Cannot load {path!r}: its config.json is not valid JSON ({error}). Expected "
            f"{_SAVE_HINT}."
        ) from error
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFileError(
            f"Cannot load {path!r}: its config.json holds no serialized Keras object (no "
            f"'class_name'). Received: {str(config)[:80]!r}. Expected {_SAVE_HINT}."
        )
    binary = _binary_conv_classes()
    for layer in _layer_configs(config):
        if layer.get("registered_name") not in binary and layer["class_name"] not in binary:
            continue
        data_format = layer["config"].get("data_format") or "channels_last"
        if data_format != "channels_last":
            raise ModelFileError(
                f"Cannot convert {path!r}: its {layer['class_name']} "
                f"{layer['config'].get('name')!r} has data_format={data_format!r}; expected "
                f"'channels_last'. {_CHANNELS_FIRST}"
            )
    return config


# --------------------------------------------------------------------------- the model


def _grouped_problem(layer, model_name):
    per_group = int(layer.kernel.shape[2])
    where = (
        f"BinaryConv2D {layer.name!r} in model {model_name!r} has groups={layer.groups} "
        f"({per_group} input channels per group); expected groups=1, what bk.binarize makes."
    )
    if per_group % _GROUP_CHANNELS:
        why = (
            " LCE bitpacks a grouped binary convolution only with a multiple of "
            f"{_GROUP_CHANNELS} input channels per group, so this one would stay a float "
            "convolution."
        )
    else:
        why = (
            " LCE converts it to a grouped LceBconv2d that only its indirect-BGEMM kernel "
            "runs: the default kernel refuses it ('Grouped binary convolutions are not "
            "supported with this kernel')."
        )
    return where + why


def _non_finite(model):
    problems = []
    for variable in model.weights:
        values = np.asarray(keras.ops.convert_to_numpy(variable))
        if not np.issubdtype(values.dtype, np.floating) or np.isfinite(values).all():
            continue
        nan = int(np.isnan(values).sum())
        problems.append(
            f"weight {variable.path!r} holds {nan} NaN and {int(np.isinf(values).sum())} "
            f"infinite value(s) out of {values.size}"
        )
    return problems


def _batch_norm_untouched(layer):
    """Whether a BatchNormalization layer still holds exactly its initial values."""
    initial = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0}
    for variable in layer.weights:
        name = variable.path.rsplit("/", 1)[-1]
        value = initial.get(name)
        if value is not None and not np.all(keras.ops.convert_to_numpy(variable) == value):
            return False
    return True


def _untrained(model, binary):
    findings = []
    zero = [layer.name for layer in binary if not np.any(keras.ops.convert_to_numpy(layer.kernel))]
    if zero:
        findings.append(f"the kernels of {zero} are all zeros (never initialised nor trained)")
    unset = [
        layer.name
        for layer in binary
        if layer.threshold is not None and not np.any(keras.ops.convert_to_numpy(layer.threshold))
    ]
    if unset:
        findings.append(
            f"the input thresholds of {unset} are all 0, their initial value (never set by "
            "bk.binarize or bk.thresholds.set_thresholds, nor trained)"
        )
    norms = [
        layer for layer in walk_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if norms and all(_batch_norm_untouched(layer) for layer in norms):
        findings.append(
            f"its {len(norms)} BatchNormalization layer(s) still hold their initial values "
            "(gamma 1, beta 0, moving mean 0, moving variance 1)"
        )
    return findings


def check_convertible(model, *, strict=True):
    """Check, before any conversion work, that LCE can convert ``model`` exactly.

    Errors (``ValueError``, naming the layers): a ``BinaryConv2D`` with
    ``data_format="channels_first"`` (LCE is NHWC); in strict mode, a binary
    ``BinaryConv2D`` with ``groups != 1`` (LCE keeps it float below 32 input channels per
    group, and otherwise makes a grouped ``LceBconv2d`` that only its indirect-BGEMM kernel
    runs; without ``strict`` the first is warned about after conversion, the second here);
    a NaN or infinite weight (the flatbuffer would compute NaN).

    Warning (``UntrainedModelWarning``; the conversion is exact): the binary layers look
    never trained: an all-zero binary kernel, input thresholds all at their initial 0, or
    every ``BatchNormalization`` layer at its initial values. Dilated binary convolutions
    are fine: LCE converts them to exact ``LceBconv2d`` ops.

    Args:
        model: a built ``keras.Model``.
        strict: as in ``convert_keras_model``: grouped binary convolutions are errors.

    Returns:
        The warning messages given (an empty list when there were none).

    Raises:
        TypeError: ``model`` is not a ``keras.Model``.
        ValueError: the model is not built, or LCE cannot convert it exactly.

    Example:
        >>> check_convertible(model)
        []
    """
    if isinstance(model, str | os.PathLike):
        raise TypeError(
            "`model` must be a keras.Model (functional or Sequential). Received the path "
            f"{os.fspath(model)!r}: convert a file with bitat_keras.export.convert_file("
            "model_path, output_path), or load it with keras.saving.load_model() first."
        )
    check_model(model, training=False)
    layers = [layer for layer in walk_layers(model) if isinstance(layer, BinaryConv2D)]
    layers = list({id(layer): layer for layer in layers}.values())
    binary = [layer for layer in layers if is_binary_conv(layer)]
    errors, warned = [], []
    for layer in layers:
        if layer.data_format != "channels_last":
            errors.append(
                f"BinaryConv2D {layer.name!r} in model {model.name!r} has "
                f"data_format={layer.data_format!r}; expected 'channels_last'. " + _CHANNELS_FIRST
            )
    for layer in binary:
        if layer.groups == 1 or layer.data_format != "channels_last":
            continue
        problem = _grouped_problem(layer, model.name)
        if strict:
            errors.append(
                problem + " Use groups=1, or pass strict=False (--no-strict) to convert it "
                "anyway."
            )
        elif int(layer.kernel.shape[2]) % _GROUP_CHANNELS == 0:
            warned.append(
                problem + " Run the flatbuffer with LCE's indirect-BGEMM kernel "
                "(LceInterpreter(..., use_indirect_bgemm=True))."
            )
    bad = _non_finite(model)
    if bad:
        errors.append(
            f"Model {model.name!r} has non-finite weights: {'; '.join(bad)}. Expected finite "
            "values: the flatbuffer would compute NaN. Training probably diverged: load "
            "weights from before it did, or train again with a lower learning rate."
        )
    if errors:
        raise ValueError(" ".join(errors))
    for message in warned:
        caller.warn(message, ConversionWarning)
    findings = _untrained(model, binary) if binary else []
    if findings:
        message = (
            f"Model {model.name!r} looks never trained: {'; '.join(findings)}. It converts "
            "exactly, but the flatbuffer computes what the untrained network computes. "
            "Train it (bk.progressive_fit) or load its trained weights before converting."
        )
        caller.warn(message, UntrainedModelWarning)
        warned.append(message)
    return warned
