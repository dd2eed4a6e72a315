"""The LCE interpreter, under numpy 1 and numpy 2.

larq-compute-engine 0.16.0 (the newest release) builds its Python interpreter with a
pybind11 that predates numpy 2. That pybind11 reads a dtype's item size from where numpy 1
kept it in the ``PyArray_Descr`` struct (a 32-bit ``elsize`` right after ``type_num``).
numpy 2 moved ``elsize`` 8 bytes further and put the 64-bit ``flags`` word in its old
place. Plain numeric dtypes have ``flags == 0``, so under numpy 2 the interpreter sees
every input array as 0 bytes ("Expected 3136 bytes but got 0 for tensor ...") and would
build every output with zero strides.

The workaround here: for the duration of one ``predict`` call, the low 32 bits of the
``flags`` word of each dtype the model reads or writes hold that dtype's item size, which
is what the old layout expects to find there; the word is restored right after, under a
lock. The layout is checked field by field first (``type_num``, ``flags`` and ``elsize``
must read back as numpy reports them); when it does not match, or a dtype's item size
would spell a flag that changes what numpy does with the data (1 = "holds references",
for 1-byte types such as int8 or bool), `LceNumpyError` says so instead of guessing.
The workaround is only used after the interpreter has failed with exactly the
"... bytes but got 0" error, so a future LCE built for numpy 2 runs untouched.
"""

import contextlib
import ctypes
import threading

import numpy as np

__all__ = ["LceInterpreter", "LceNumpyError", "numpy1_itemsize"]

# PyArray_Descr (numpy 2): PyObject_HEAD, typeobj*, kind, type, byteorder, _former_flags
# (4 chars), int type_num, npy_uint64 flags, npy_intp elsize, ...  numpy 1 had a 32-bit
# elsize where numpy 2 has flags.
_TYPE_NUM_OFFSET = object.__basicsize__ + ctypes.sizeof(ctypes.c_void_p) + 4
_FLAGS_OFFSET = _TYPE_NUM_OFFSET + ctypes.sizeof(ctypes.c_int)
_ELSIZE_OFFSET = _FLAGS_OFFSET + 8
# Item sizes whose value, read as numpy 2 flags, does not make numpy treat the items as
# Python objects: 2 = LIST_PICKLE, 4 = ITEM_IS_POINTER, 8 = NEEDS_INIT (1 = ITEM_REFCOUNT
# would). Only the interpreter's input check and output copy run while they are set.
_HARMLESS_ITEMSIZES = (2, 4, 8)
_ZERO_BYTES = "bytes but got 0"
_LOCK = threading.Lock()


class LceNumpyError(RuntimeError):
    """The LCE interpreter cannot run under this numpy (its C extension expects numpy 1)."""


def _numpy_major():
    return int(np.__version__.split(".")[0])


def _descr_fields(dtype):
    base = id(dtype)
    return (
        ctypes.c_int.from_address(base + _TYPE_NUM_OFFSET),
        ctypes.c_uint64.from_address(base + _FLAGS_OFFSET),
        ctypes.c_ssize_t.from_address(base + _ELSIZE_OFFSET),
    )


def _unsupported(reason):
    return LceNumpyError(
        "larq-compute-engine 0.16's interpreter was compiled for numpy 1 and cannot read "
        f"arrays under numpy {np.__version__}: {reason}. Conversion is not affected. To "
        "check parity, run it in an environment with numpy < 2 (for example "
        "`pip install 'numpy<2'` in a separate virtual environment), or pass "
        "`check=False` / `--no-check` to skip it."
    )


def _checked_flags(dtype):
    """The ctypes view of ``dtype``'s flags word, after checking the numpy 2 layout."""
    dtype = np.dtype(dtype)
    if dtype.itemsize not in _HARMLESS_ITEMSIZES:
        raise _unsupported(
            f"dtype {dtype} has item size {dtype.itemsize}; the workaround supports item "
            f"sizes {_HARMLESS_ITEMSIZES} (float32, int16, int32, int64)"
        )
    type_num, flags, elsize = _descr_fields(dtype)
    if (type_num.value, flags.value, elsize.value) != (dtype.num, dtype.flags, dtype.itemsize):
        raise _unsupported(f"the layout of numpy's dtype struct for {dtype} is not the known one")
    if flags.value & 0xFFFFFFFF:
        raise _unsupported(f"dtype {dtype} has flags {dtype.flags:#x}, expected none")
    return flags


@contextlib.contextmanager
def numpy1_itemsize(dtypes):
    """Make ``dtypes`` readable by numpy-1 extensions for the duration of the block.

    Under numpy 2, writes each dtype's item size where numpy 1 kept it (the low half of
    numpy 2's ``flags`` word) and restores the word on exit; under numpy 1, does nothing.
    Nothing else should use these dtypes in between: the block holds a lock, and
    `LceInterpreter` keeps it to one interpreter call.

    Args:
        dtypes: the numpy dtypes to patch (the model's input and output types).

    Raises:
        LceNumpyError: the dtype struct's layout is not the expected one, or an item size
            would spell a flag that changes how numpy handles the data (1-byte types).

    Example:
        >>> with numpy1_itemsize([np.float32]):
        ...     outputs = raw_lce_wrapper.predict([x])
    """
    if _numpy_major() < 2:
        yield
        return
    unique = {np.dtype(d) for d in dtypes}
    with _LOCK:
        patched = [(_checked_flags(d), d.itemsize) for d in unique]
        saved = [flags.value for flags, _ in patched]
        try:
            for (flags, itemsize), value in zip(patched, saved, strict=True):
                flags.value = (value & ~0xFFFFFFFF) | itemsize
            yield
        finally:
            for (flags, _), value in zip(patched, saved, strict=True):
                flags.value = value


def _to_interpreter_dtype(array, dtype, scale, zero_point):
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and scale:
        info = np.iinfo(dtype)
        q = np.round(array / float(np.ravel(scale)[0])) + int(np.ravel(zero_point)[0])
        return np.clip(q, info.min, info.max).astype(dtype)
    return np.ascontiguousarray(array, dtype=dtype)


def _from_interpreter_dtype(array, scale, zero_point):
    if np.issubdtype(array.dtype, np.integer) and scale:
        return (array.astype(np.float32) - float(np.ravel(zero_point)[0])) * float(
            np.ravel(scale)[0]
        )
    return array.astype(np.float32)


class LceInterpreter:
    """larq-compute-engine's interpreter for a flatbuffer, working under numpy 1 and 2.

    Runs LCE flatbuffers (and plain TFLite ones) on this machine, as
    ``larq_compute_engine.tflite.python.interpreter.Interpreter`` does, but usable under
    numpy 2 (see the module docstring), and with batches of any size: inputs are fed in
    chunks of the flatbuffer's fixed batch size (1 for LCE conversions), and int8 inputs
    and outputs are (de)quantized with their scales.

    Args:
        flatbuffer: the model, as bytes.
        num_threads: interpreter threads.
        use_reference_bconv: LCE's reference (slow, simple) binary conv kernel.
        use_indirect_bgemm: LCE's indirect-BGEMM binary conv kernel (fastest on x86).
        use_xnnpack: XNNPACK for the float ops.

    Example:
        >>> interpreter = LceInterpreter(bk.convert_keras_model(model))
        >>> logits = interpreter.predict(x_test[:8])        # float32, batch first
    """

    def __init__(
        self,
        flatbuffer,
        num_threads=1,
        use_reference_bconv=False,
        use_indirect_bgemm=False,
        use_xnnpack=False,
    ):
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        self._lce = Interpreter(
            flatbuffer,
            num_threads=int(num_threads),
            use_reference_bconv=bool(use_reference_bconv),
            use_indirect_bgemm=bool(use_indirect_bgemm),
            use_xnnpack=bool(use_xnnpack),
        )
        self.input_shapes = [tuple(s) for s in self._lce.input_shapes]
        self.output_shapes = [tuple(s) for s in self._lce.output_shapes]
        self._inputs = list(
            zip(
                self._lce.input_types,
                self._lce.input_scales,
                self._lce.input_zero_points,
                strict=True,
            )
        )
        self._outputs = list(
            zip(self._lce.output_scales, self._lce.output_zero_points, strict=True)
        )
        self._dtypes = [np.dtype(t) for t in self._lce.input_types + self._lce.output_types]
        self._patch = False  # set once the interpreter has failed for numpy 2's layout

    def invoke(self, feed):
        """One raw interpreter call: ``feed`` holds one contiguous array per input, in the
        interpreter's own dtypes and shapes (batch included); returns its output arrays."""
        if not self._patch:
            try:
                return self._lce.interpreter.predict(feed)
            except RuntimeError as error:
                if _ZERO_BYTES not in str(error) or _numpy_major() < 2:
                    raise
                self._patch = True
        with numpy1_itemsize(self._dtypes):
            return self._lce.interpreter.predict(feed)

    def predict(self, x):
        """Run the model on ``x`` (an array, batch first, or a list with one per input).

        Returns:
            One float32 array (or a list, for several outputs), batch first.
        """
        arrays = [np.asarray(a) for a in (x if isinstance(x, list | tuple) else [x])]
        if len(arrays) != len(self.input_shapes):
            raise ValueError(
                f"The flatbuffer has {len(self.input_shapes)} input(s); received "
                f"{len(arrays)} array(s)."
            )
        for shape, a in zip(self.input_shapes, arrays, strict=True):
            if a.ndim == 0 or tuple(shape[1:]) != tuple(a.shape[1:]):
                raise ValueError(
                    f"Input shape mismatch: the flatbuffer expects {shape} (batch first), "
                    f"received an array of shape {a.shape}"
                )
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(
                f"All inputs need the same batch size; received shapes {[a.shape for a in arrays]}"
            )
        batch = int(self.input_shapes[0][0]) or 1
        results = []
        for start in range(0, len(arrays[0]), batch):
            chunk = [a[start : start + batch] for a in arrays]
            real = len(chunk[0])
            if real < batch:  # pad a short last chunk by repeating its last sample
                chunk = [np.concatenate([c, np.repeat(c[-1:], batch - real, 0)]) for c in chunk]
            feed = [
                _to_interpreter_dtype(c, dtype, scale, zp)
                for c, (dtype, scale, zp) in zip(chunk, self._inputs, strict=True)
            ]
            outs = self.invoke(feed)
            results.append(
                [
                    _from_interpreter_dtype(np.asarray(o), scale, zp)[:real]
                    for o, (scale, zp) in zip(outs, self._outputs, strict=True)
                ]
            )
        outputs = [np.concatenate(parts) for parts in zip(*results, strict=True)]
        return outputs[0] if len(outputs) == 1 else outputs
