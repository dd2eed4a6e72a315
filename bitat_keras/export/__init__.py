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
- :class:`LceInterpreter`: LCE's interpreter for batches, under numpy 1 and 2.
- :func:`save_flatbuffer` and :func:`convert_file`: atomic write, and the file-to-file
  converter behind ``bitat-keras convert``.
- :func:`check_keras_file` and :func:`check_convertible`: the converter's input checks,
  made before any conversion work.

One module per concern: ``checks`` (the input checks), ``convert`` (the two converters and
the strict check), ``flatbuffer`` (reading a flatbuffer), ``interpreter`` (LCE's interpreter
under numpy 1 and 2), ``parity`` (Keras against the interpreter), ``files`` (file to file).
"""

from bitat_keras.export.checks import (
    ConversionWarning,
    ModelFileError,
    UntrainedModelWarning,
    check_convertible,
    check_keras_file,
    is_binary_conv,
)
from bitat_keras.export.convert import (
    binary_conv_layers,
    check_runtime_ops,
    convert_float_tflite,
    convert_keras_model,
)
from bitat_keras.export.files import (
    PARITY_TOLERANCE,
    UnsafeModelError,
    convert_file,
    lce_benchmark_commands,
    save_flatbuffer,
)
from bitat_keras.export.flatbuffer import (
    BCONV_OP,
    LCE_CUSTOM_OPS,
    custom_op_names,
    inspect_tflite,
)
from bitat_keras.export.interpreter import LceInterpreter, LceNumpyError
from bitat_keras.export.parity import verify_tflite

__all__ = [
    "BCONV_OP",
    "LCE_CUSTOM_OPS",
    "PARITY_TOLERANCE",
    "ConversionWarning",
    "LceInterpreter",
    "LceNumpyError",
    "ModelFileError",
    "UnsafeModelError",
    "UntrainedModelWarning",
    "binary_conv_layers",
    "check_runtime_ops",
    "custom_op_names",
    "check_convertible",
    "check_keras_file",
    "convert_file",
    "convert_float_tflite",
    "convert_keras_model",
    "inspect_tflite",
    "is_binary_conv",
    "lce_benchmark_commands",
    "save_flatbuffer",
    "verify_tflite",
]
