"""Warnings that name the user's line: the first frame outside this package, however
deep inside it the warning was raised (a fixed ``stacklevel`` breaks whenever a call path
gains or loses a frame)."""

import os
import sys
import warnings

__all__ = ["warn"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message, category=UserWarning):
    """``warnings.warn(message, category)`` attributed to the first caller outside
    ``bitat_keras``.

    Args:
        message: the warning's text.
        category: a ``Warning`` subclass.

    Example:
        >>> warn("Layer 'conv2' gets 8 optimizer steps; expected >= 100.")  # doctest: +SKIP
    """
    frame, level = sys._getframe(1), 2  # stacklevel 2 names warn()'s caller
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
