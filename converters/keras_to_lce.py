"""Convert a Keras 3 ``.keras`` model to a larq-compute-engine ``.tflite`` flatbuffer.

Usage: python converters/keras_to_lce.py MODEL.keras -o MODEL.tflite [--no-check]
       [--no-strict] [--samples N] [--seed S] [--float-tflite PATH] [--json]

Same as ``bitat-keras convert``; see ``bitat_keras.cli.main``.
"""

from bitat_keras.cli.main import convert

raise SystemExit(convert())
