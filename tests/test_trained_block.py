"""Blocks of layers (partition) and the closed block type that progressive_fit returns."""

import numpy as np
import pytest

from bitat_keras.method.trained_block import TrainedBlock, partition, v_parameters

SIZES = {"a": (3, 3), "b": (1, 1), "c": (1, 1), "d": (3, 3), "e": (1, 1)}


def test_auto_partition_starts_a_block_at_every_conv_larger_than_1x1():
    assert partition(SIZES, "auto") == [["a", "b", "c"], ["d", "e"]]
    assert partition({"x": (1, 1), "y": (1, 1)}, "auto") == [["x", "y"]]


def test_partition_by_count_and_by_explicit_lists():
    assert partition(SIZES, 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert partition(SIZES, [["a"], ["b", "c", "d"], ["e"]]) == [["a"], ["b", "c", "d"], ["e"]]
    with pytest.raises(ValueError, match="every eligible layer once, in order"):
        partition(SIZES, [["b", "a"], ["c", "d", "e"]])
    with pytest.raises(ValueError, match="Received"):
        partition(SIZES, [["a", "b"]])


def block(with_transform=True):
    ids = np.array([0, 1, 1, 0, 2, 2])
    s = np.array([3.0, 2.0, 1.0, 0.5]) if with_transform else None
    v = np.eye(4) if with_transform else None
    return TrainedBlock(layers=["a", "b"], ids=[ids, None], ks=[3, 1], dims=[6, 1], s=s, v=v)


def test_v_parameters_count_the_trained_v_against_the_full_one():
    assert block().v_parameters() == (16, 49)  # (3 + 1)^2 against (6 + 1)^2
    assert block(False).v_parameters() == (0, 49)  # transform "none" trains no V
    total = v_parameters([block(), block(False)])
    assert total == {"full": 98, "used": 16, "ratio": 16 / 98}
    assert v_parameters([]) == {"full": 0, "used": 0, "ratio": 0.0}


def test_reads_as_a_mapping_with_the_documented_keys():
    b = block()
    assert sorted(b) == ["dims", "ids", "ks", "layers", "s", "v"]
    assert b["ks"] == [3, 1] and b["s"] is b.s
    assert {**b}["layers"] == ["a", "b"]
    with pytest.raises(KeyError, match="Expected one of"):
        b["groups"]


def test_checkpoint_arrays_round_trip():
    b = block()
    arrays = b.checkpoint_arrays(3)
    assert sorted(arrays) == ["s3", "v3"]
    grouping = {"a": (b.ids[0], 3), "b": (None, 1)}
    back = TrainedBlock.from_checkpoint(["a", "b"], grouping, {"a": 6, "b": 1}, arrays, 3)
    np.testing.assert_array_equal(back.s, b.s)
    np.testing.assert_array_equal(back.v, b.v)
    assert back.ks == b.ks and back.dims == b.dims and back.ids[1] is None
    assert block(False).checkpoint_arrays(0) == {}
