"""The package's docstrings name only what exists: every ``bk.x.y`` / ``bitat_keras.x.y``
resolves, and every ``name(...)`` a docstring calls is defined somewhere in the package (a
module, class, method or parameter), in Python's builtins, or in Keras or numpy."""

import builtins
import importlib
import inspect
import pkgutil
import re

import keras
import numpy as np

import bitat_keras as bk

DOTTED = re.compile(r"`+((?:bk|bitat_keras)(?:\.[A-Za-z_]\w*)+)")
CALLED = re.compile(r"``?([A-Za-z_][\w.]*)\(")
# Roots of calls into other libraries, which this package does not define.
FOREIGN = (
    "keras", "np", "numpy", "ops", "tf", "tensorflow", "jax", "torch", "lce", "larq", "sklearn",
)  # fmt: skip
# Names a docstring's own example binds before calling them.
LOCAL = {"forward", "SS"}


def _parameters(obj):
    try:
        return set(inspect.signature(obj).parameters)
    except (TypeError, ValueError):
        return set()


def _package():
    """``(docs, defined)``: (where, docstring) of every module, its classes and functions
    and their members; every name the package defines (parameters included)."""
    docs, defined = [], set()
    for info in pkgutil.walk_packages(bk.__path__, "bitat_keras."):
        module = importlib.import_module(info.name)
        defined.add(info.name.rsplit(".", 1)[-1])
        docs.append((info.name, module.__doc__))
        for name, obj in vars(module).items():
            defined.add(name)
            if getattr(obj, "__module__", None) != info.name:
                continue
            docs.append((f"{info.name}.{name}", inspect.getdoc(obj)))
            defined |= _parameters(obj)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    defined.add(attr)
                    if callable(member) or isinstance(member, property):
                        defined |= _parameters(member) if callable(member) else set()
                        docs.append((f"{info.name}.{name}.{attr}", inspect.getdoc(member)))
    return docs, defined


def _resolves(dotted):
    obj, parts = bk, dotted.split(".")
    for i, part in enumerate(parts[1:], 1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module("bitat_keras." + ".".join(parts[1 : i + 1]))
        except ImportError:
            return False
    return True


OTHERS = (builtins, keras.Model, keras.layers, keras.layers.Layer, keras.ops, np)


def _elsewhere(name):
    return any(hasattr(owner, name) for owner in OTHERS)


def test_every_name_a_docstring_gives_exists():
    docs, defined = _package()
    assert len(docs) > 300  # the walk saw the package
    missing = []
    for where, doc in docs:
        for dotted in DOTTED.findall(doc or ""):
            if not _resolves(dotted.rstrip(".")):
                missing.append((where, dotted))
        for called in CALLED.findall(doc or ""):
            last = called.rsplit(".", 1)[-1]
            if called.split(".")[0] in FOREIGN or last in defined | LOCAL or _elsewhere(last):
                continue
            missing.append((where, called))
    assert not missing, f"docstrings name what does not exist: {missing}"


def test_the_check_catches_a_stale_name():
    """The oracle itself: a method renamed long ago (``start_phase``, now ``phase``) and a
    missing module are caught."""
    _, defined = _package()
    assert "set_distill" in defined and "start_phase" not in defined
    assert _resolves("bk.progressive_fit") and not _resolves("bk.fit.no_such_module")
