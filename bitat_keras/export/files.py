"""Files: atomic flatbuffer writes, the ``.keras`` -> ``.tflite`` converter behind
``bitat-keras convert``, and the commands that time a flatbuffer on a device."""

import os
import tempfile

import numpy as np

from bitat_keras.export.checks import ModelFileError, check_keras_file, is_binary_conv
from bitat_keras.export.convert import (
    binary_conv_layers,
    convert_float_tflite,
    convert_keras_model,
)
from bitat_keras.export.flatbuffer import BCONV_OP, inspect_tflite
from bitat_keras.export.interpreter import LceNumpyError
from bitat_keras.export.parity import parity
from bitat_keras.graph.structure import walk_layers

__all__ = [
    "PARITY_TOLERANCE",
    "UnsafeModelError",
    "convert_file",
    "lce_benchmark_commands",
    "save_flatbuffer",
]

#: Relative parity (max |diff| / max |keras output|) that `convert_file` calls a match.
PARITY_TOLERANCE = 1e-3


class UnsafeModelError(ValueError):
    """A ``.keras`` file that can only be loaded with ``safe_mode=False`` (e.g. a lambda)."""


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
    """The model in ``model_path``, a file `check_keras_file` accepted."""
    import keras

    import bitat_keras  # noqa: F401 - registers our layers so safe_mode loading finds them

    try:
        model = keras.saving.load_model(model_path, compile=False, safe_mode=True)
    except Exception as error:  # noqa: BLE001 - re-raised with a clearer message
        text = str(error)
        if "safe_mode" in text or "arbitrary code execution" in text:
            reason = text.split(". ")[0].rstrip(".")
            raise UnsafeModelError(
                f"Refusing to load {model_path!r}: it can only be loaded with safe_mode=False "
                f"({reason}), which could run arbitrary code; bitat-keras does not load "
                "untrusted code. Rebuild the model without Python lambdas."
            ) from error
        raise ModelFileError(
            f"Could not load {model_path!r} as a Keras 3 model: {type(error).__name__}: {text}"
        ) from error
    if not isinstance(model, keras.Model):
        raise ModelFileError(
            f"{model_path!r} holds a {type(model).__name__}, not a model. Expected a "
            "functional or Sequential keras.Model saved with `model.save('model.keras')`."
        )
    return model


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


def _check_outputs(model_path, paths):
    """Raise, before any work, unless every path in ``paths`` can be written."""
    model = os.path.realpath(model_path)
    seen = set()
    for path in paths:
        full = os.path.abspath(path)
        directory = os.path.dirname(full)
        if not os.path.isdir(directory):
            raise FileNotFoundError(
                f"Cannot write {path!r}: the output directory {directory!r} does not exist."
            )
        if os.path.isdir(full):
            raise IsADirectoryError(
                f"Cannot write {path!r}: it is a directory; expected a file path."
            )
        if os.path.realpath(full) == model:
            raise ValueError(
                f"Cannot write {path!r}: it is the model file being converted; expected "
                "another path (e.g. with a .tflite suffix)."
            )
        if os.path.realpath(full) in seen:
            raise ValueError(f"Cannot write {path!r} twice: expected distinct output paths.")
        seen.add(os.path.realpath(full))


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

    Everything that can fail happens before anything is written: the paths and the file
    (:func:`~bitat_keras.export.checks.check_keras_file`) are checked, the model is loaded
    with ``safe_mode=True`` (a model that needs ``safe_mode=False`` is refused), checked and
    converted with :func:`convert_keras_model`, and, with ``check``, run on ``samples``
    standard-normal random inputs (``seed``) in Keras and in the LCE interpreter. Only then
    are the flatbuffers written, atomically. On an error nothing is written, and a file
    already at ``output_path`` is left as it was.

    Args:
        model_path: path to a Keras 3 ``.keras`` file.
        output_path: destination ``.tflite`` path (its directory must exist).
        check: run the parity check.
        strict: raise if a ``BinaryConv2D`` stays float or is grouped (else warn).
        samples: number of random inputs for the parity check.
        seed: seed of the random inputs.
        float_output_path: if given, also write a plain float TFLite flatbuffer there.

    Returns:
        A report dict: ``model_path``, ``output_path``, ``written`` (False only when the
        parity check did not match: then neither file is written), ``ops``, ``size_bytes``,
        ``num_operators``, ``bconv`` (number of ``LceBconv2d`` ops), ``binary_layers``
        (number of fully binary ``BinaryConv2D`` layers), ``max_abs_diff``,
        ``relative_diff`` (``max_abs_diff / max |keras output|``), ``output_scale``,
        ``parity_ok`` (relative diff <= 1e-3), ``samples``, ``seed`` (parity entries are
        None without ``check``), ``parity_error`` (why the interpreter could not run, if
        it could not: see `LceNumpyError`; the flatbuffer is still written) and, with
        ``float_output_path``, ``float_output_path`` and ``float_size_bytes``.

    Raises:
        FileNotFoundError: missing model file or output directory.
        IsADirectoryError: the model path or an output path is a directory.
        UnsafeModelError: (a ValueError) the file needs ``safe_mode=False``.
        ModelFileError: (a ValueError) not a loadable ``.keras`` model file (not a zip
            archive, truncated, damaged, or holding something other than a model).
        ValueError: a layer LCE cannot convert exactly, non-finite weights, or (strict)
            binary convs that stay float.
        RuntimeError: the conversion or the interpreter failed.

    Example:
        >>> report = convert_file("bnn.keras", "bnn.tflite")
        >>> report["bconv"], report["max_abs_diff"]
    """
    model_path = os.fspath(model_path)
    output_path = os.fspath(output_path)
    check_keras_file(model_path)
    outputs = [output_path] + ([os.fspath(float_output_path)] if float_output_path else [])
    _check_outputs(model_path, outputs)
    samples = int(samples)
    if check and samples < 1:
        raise ValueError(f"`samples` must be >= 1 when check=True. Received: {samples}")

    model = _load_keras_file(model_path)
    x = _random_inputs(model, samples, seed) if check else None
    try:
        data = convert_keras_model(model, strict=strict)
    except ValueError as error:  # name the file too: the message names the layers
        raise ValueError(f"Cannot convert {model_path!r}: {error}") from error
    info = inspect_tflite(data)
    report = {
        "model_path": os.path.abspath(model_path),
        "output_path": os.path.abspath(output_path),
        "written": False,
        "ops": info["ops"],
        "size_bytes": info["size_bytes"],
        "num_operators": info["num_operators"],
        "bconv": info["ops"].get(BCONV_OP, 0),
        "binary_layers": len(binary_conv_layers(model)),
        "max_abs_diff": None,
        "relative_diff": None,
        "output_scale": None,
        "parity_ok": None,
        "parity_error": None,
        "samples": samples if check else 0,
        "seed": seed,
    }
    if check:
        # LCE's default kernel refuses grouped binary convs; its indirect BGEMM runs them.
        grouped = any(is_binary_conv(lay) and lay.groups != 1 for lay in walk_layers(model))
        try:
            diff, scale = parity(model, data, x, use_indirect_bgemm=grouped)
        except LceNumpyError as error:  # the flatbuffer is written and fine; only the check
            report["parity_error"] = str(error)
        else:
            relative = diff / scale if scale > 0 else (0.0 if diff == 0 else float("inf"))
            report.update(
                max_abs_diff=diff,
                relative_diff=relative,
                output_scale=scale,
                parity_ok=bool(relative <= PARITY_TOLERANCE),
            )
    if report["parity_ok"] is False:
        return report  # a mismatch is a failure: nothing written
    float_data = convert_float_tflite(model) if float_output_path else None
    report["output_path"] = save_flatbuffer(data, output_path)
    if float_data is not None:
        report["float_output_path"] = save_flatbuffer(float_data, float_output_path)
        report["float_size_bytes"] = len(float_data)
    report["written"] = True
    return report


def lce_benchmark_commands(model_path, threads=(1, 4), runs=100):
    """The shell commands that time ``model_path`` with LCE's ``lce_benchmark_model`` on a
    64-bit ARM Linux board (Raspberry Pi) and on an Android phone over adb, one pair per
    thread count; each copies the binary (``lce_benchmark_model`` in the current directory,
    built for the board) and the model. Build the binary from larq-compute-engine's repository
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
            f"scp lce_benchmark_model {model_path} pi@raspberrypi.local:~/\n"
            "ssh pi@raspberrypi.local chmod +x lce_benchmark_model\n"
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
