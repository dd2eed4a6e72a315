"""``bk.models``: the public functions that take or build a whole model, each defined in its
floor (the ReActNet-A network in ``applications``, ``binarize`` and the structure checks in
``graph``, ``summary`` in ``inspect``)."""

from bitat_keras.applications.reactnet import BN_MOMENTUM, MOBILENET_V1_BLOCKS, reactnet_mobilenet
from bitat_keras.graph.binarize import binarize, copy_weights
from bitat_keras.graph.structure import check_model, eligible_layers, walk_layers
from bitat_keras.inspect.summary import summary

__all__ = [
    "BN_MOMENTUM",
    "MOBILENET_V1_BLOCKS",
    "binarize",
    "check_model",
    "copy_weights",
    "eligible_layers",
    "reactnet_mobilenet",
    "summary",
    "walk_layers",
]
