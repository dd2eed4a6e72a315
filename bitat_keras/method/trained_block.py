"""A block of layers and its trained transform, as Algorithm 1 leaves it.

``progressive_fit`` splits the eligible layers into blocks (``partition``); each block owns
one ``BlockTransform`` while its layers are binarized, one layer at a time (Eq. 11 grows its
s and V in ``BlockTransform.join``). When its last layer is done the block is closed into a
``TrainedBlock``: its layers, their group ids (Sec. 4.2's P), their sizes, and the trained
s and V over the slots in use. ``BiTATResult.transforms`` lists them; the checkpoint stores
them as arrays (``checkpoint_arrays`` / ``from_checkpoint``).
"""

import collections.abc
import dataclasses

import numpy as np

__all__ = ["TrainedBlock", "partition", "v_parameters"]


def partition(kernel_sizes, spec):
    """Split layers (bottom to top) into blocks.

    Args:
        kernel_sizes: ``{layer name: kernel size (kh, kw)}`` in order, bottom to top.
        spec: ``"auto"`` (a block starts at every conv larger than 1x1, so a 3x3 conv and
            the 1x1 convs above it share a block), an int (blocks of that many layers) or an
            explicit list of lists of names that covers every layer once, in order.

    Returns:
        A list of lists of layer names.

    Example:
        >>> partition({"a": (3, 3), "b": (1, 1), "c": (3, 3)}, "auto")
        [['a', 'b'], ['c']]
    """
    names = list(kernel_sizes)
    if spec == "auto":
        blocks = []
        for name in names:
            if not blocks or max(kernel_sizes[name]) > 1:
                blocks.append([])
            blocks[-1].append(name)
        return blocks
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [names[i : i + spec] for i in range(0, len(names), spec)]
    blocks = [list(b) for b in spec]
    if [n for b in blocks for n in b] != names:
        raise ValueError(
            "`blocks` must list every eligible layer once, in order, bottom to top. "
            f"Expected the order {names}. Received: {blocks}"
        )
    return blocks


@dataclasses.dataclass(eq=False)
class TrainedBlock(collections.abc.Mapping):
    """A closed block: its layers and their trained transform.

    Reads as a dataclass (``block.s``) or, as earlier releases returned it, as a mapping
    (``block["s"]``) with the keys layers, ids, ks, dims, s, v.

    Args:
        layers: the block's layer names, bottom to top.
        ids: per layer, the group id of each of its d input dimensions (P of Sec. 4.2), or
            None where P = I (no aggregation).
        ks: per layer, its number of groups k (d where P = I).
        dims: per layer, its input dimension d = kh * kw * cin.
        s: the trained importance over the block's sum(ks) slots, or None (no transform).
        v: the trained dependency matrix (sum(ks), sum(ks)), or None.

    Example:
        >>> block = result.transforms[0]  # doctest: +SKIP
        >>> block.layers, block.s.shape, block.v_parameters()  # doctest: +SKIP
    """

    layers: list
    ids: list
    ks: list
    dims: list
    s: np.ndarray | None = None
    v: np.ndarray | None = None

    @classmethod
    def unfilled(cls, layers, grouping, dims):
        """The block's layers and sizes without s and V: ``grouping[name] = (ids or None,
        k)``, ``dims[name] = d``."""
        return cls(
            layers=list(layers),
            ids=[grouping[n][0] for n in layers],
            ks=[int(grouping[n][1]) for n in layers],
            dims=[int(dims[n]) for n in layers],
        )

    @classmethod
    def close(cls, transform, layers, grouping, dims):
        """The ``TrainedBlock`` of a ``BlockTransform`` whose layers have all joined:
        ``grouping[name] = (ids or None, k)``, ``dims[name] = d``."""
        block = cls.unfilled(layers, grouping, dims)
        if transform.s is not None:
            s, v = transform.numpy_sv()
            active = transform.active_index()
            block.s, block.v = s[active], v[np.ix_(active, active)]
        return block

    def v_parameters(self):
        """``(used, full)``: entries of V as trained (0 without a transform) and of the
        full V over every input dimension of the block (no aggregation)."""
        full = sum(self.dims) ** 2
        return (0 if self.v is None else sum(self.ks) ** 2), full

    # -- checkpoint ---------------------------------------------------------------------------
    def checkpoint_arrays(self, index):
        """The block's arrays under checkpoint keys (``s<index>``, ``v<index>``)."""
        if self.s is None:
            return {}
        return {f"s{index}": self.s, f"v{index}": self.v}

    @classmethod
    def from_checkpoint(cls, layers, grouping, dims, arrays, index):
        """Rebuild block ``index`` from ``checkpoint_arrays``' output and the grouping."""
        block = cls.unfilled(layers, grouping, dims)
        block.s, block.v = arrays.get(f"s{index}"), arrays.get(f"v{index}")
        return block

    # -- mapping view -------------------------------------------------------------------------
    def __getitem__(self, key):
        if key not in _FIELDS:
            raise KeyError(f"{key!r}. Expected one of {list(_FIELDS)}.")
        return getattr(self, key)

    def __iter__(self):
        return iter(_FIELDS)

    def __len__(self):
        return len(_FIELDS)


_FIELDS = tuple(f.name for f in dataclasses.fields(TrainedBlock))


def v_parameters(blocks):
    """``{"full", "used", "ratio"}`` of V entries over ``blocks`` (``TrainedBlock``)."""
    used = sum(b.v_parameters()[0] for b in blocks)
    full = sum(b.v_parameters()[1] for b in blocks)
    return {"full": int(full), "used": int(used), "ratio": used / full if full else 0.0}
