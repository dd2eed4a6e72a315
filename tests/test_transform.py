"""The BiTAT transform pieces against independent numpy formulas (Eq. 10-13)."""

import keras
import numpy as np
import pytest
from keras import ops

import bitat_keras as bk
from bitat_keras.method import transform
from bitat_keras.method.block import BlockTransform
from bitat_keras.method.kmeans import kmeans
from bitat_keras.method.statistics import patch_rows


def loop_im2col(x, k, stride, pad_value):
    """Independent oracle: explicit loops over output positions, TF-SAME split."""
    n, h, w, c = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    th = max((oh - 1) * stride + k - h, 0)
    tw = max((ow - 1) * stride + k - w, 0)
    xp = np.full((n, h + th, w + tw, c), pad_value, dtype=np.float64)
    xp[:, th // 2 : th // 2 + h, tw // 2 : tw // 2 + w] = x
    rows = []
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                rows.append(
                    xp[b, i * stride : i * stride + k, j * stride : j * stride + k, :].ravel()
                )
    return np.array(rows)


@pytest.mark.parametrize("stride", [1, 2])
def test_im2col_matches_loops_and_reproduces_the_convolution(stride):
    x = np.random.default_rng(0).normal(size=(2, 7, 7, 3))
    rows = transform.im2col(x, (3, 3), (stride, stride), pad_value=1.0)
    np.testing.assert_allclose(rows, loop_im2col(x, 3, stride, 1.0))


@pytest.mark.parametrize("stride", [1, 2])
def test_im2col_sample_is_the_seeded_choice_of_the_loop_rows(stride):
    x = np.random.default_rng(0).normal(size=(3, 7, 7, 2))
    every = loop_im2col(x, 3, stride, 0.0)
    keep = np.sort(np.random.default_rng(5).choice(len(every), size=11, replace=False))
    rows = transform.im2col(x, (3, 3), (stride, stride), max_rows=11, seed=5)
    np.testing.assert_allclose(rows, every[keep])
    # max_rows at or above the count: every row, in order
    np.testing.assert_allclose(transform.im2col(x, (3, 3), (stride, stride), max_rows=10**6), every)


def test_pca_init_equals_numpy_eigh_of_patch_covariance_on_a_conv_layer():
    model = bk.binarize(
        bk.models.reactnet_mobilenet(
            (8, 8, 1), num_classes=3, width_multiplier=0.25, blocks=[(64, 1)]
        ),
    )
    layer = model.get_layer("block1_conv3x3")
    images = np.random.default_rng(1).normal(size=(6, 8, 8, 1)).astype("float32")
    rows = patch_rows(model, layer, images, binarized=True, max_rows=10_000)
    # Oracle: the layer's input via an explicit sub-model, signed, patched with loops.
    sub = keras.Model(model.inputs, layer.input)
    signed = np.where(ops.convert_to_numpy(sub(images)) >= 0, 1.0, -1.0)
    patches = loop_im2col(signed, 3, 1, 1.0)
    np.testing.assert_array_equal(rows, patches)
    cov = patches.T @ patches / len(patches)  # Eq. 10
    evals, evecs = np.linalg.eigh(cov)
    s, v = transform.pca_init(transform.second_moment(rows), eps=0.0)
    np.testing.assert_allclose(np.sort(s**2), np.sort(np.maximum(evals, 0)), atol=1e-8)
    # Up to sign and order: each PCA vector matches the eigh vector of the same eigenvalue.
    order = np.argsort(evals)[::-1]
    top = s**2 > 1e-6
    overlaps = np.abs(np.sum(v[:, top] * evecs[:, order][:, top], axis=0))
    distinct = np.r_[True, np.abs(np.diff(evals[order][top])) > 1e-6]
    distinct &= np.r_[np.abs(np.diff(evals[order][top])) > 1e-6, True]
    np.testing.assert_allclose(overlaps[distinct], 1.0, atol=1e-6)
    assert distinct.sum() > 5


def test_training_mode_statistics_use_each_batchs_own_batchnorm_statistics():
    """``patch_rows(training=True)``: the layer's input as a training step computes it (the
    BatchNorm below normalises with each batch's mean and variance, a numpy oracle here),
    with the moving statistics left as they were."""
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem")(inputs)
    x = keras.layers.BatchNormalization(name="bn", momentum=0.5)(x)
    out = keras.layers.Conv2D(4, 3, padding="same", name="top")(x)
    model = keras.Model(inputs, out)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(4, 3.0, dtype="float32"))  # far from any batch mean
    images = np.random.default_rng(2).normal(size=(10, 6, 6, 2)).astype("float32")
    layer = model.get_layer("top")
    rows = patch_rows(model, layer, images, binarized=True, batch_size=4, training=True)
    stem = ops.convert_to_numpy(keras.Model(inputs, model.get_layer("stem").output)(images))
    gamma, beta = (ops.convert_to_numpy(w) for w in (bn.gamma, bn.beta))
    batches = []
    for i in range(0, 10, 4):  # batches of 4, 4, 2: each with its own statistics
        z = stem[i : i + 4]
        mean, var = z.mean(axis=(0, 1, 2)), z.var(axis=(0, 1, 2))
        batches.append(gamma * (z - mean) / np.sqrt(var + bn.epsilon) + beta)
    signed = np.where(np.concatenate(batches) >= 0, 1.0, -1.0)
    np.testing.assert_array_equal(rows, loop_im2col(signed, 3, 1, 0.0))
    np.testing.assert_array_equal(ops.convert_to_numpy(bn.moving_mean), np.full(4, 3.0))
    assert bn.momentum == 0.5
    inference = patch_rows(model, layer, images, binarized=True, batch_size=4)
    assert not np.array_equal(inference, rows)  # the moving mean of 3 shifts every sign


def dense_p(ids, k):
    """The oracle for P (Sec. 4.2): dense k x d, P[i, j] = 1/|group i| for j in group i."""
    p = np.zeros((k, len(ids)))
    p[np.asarray(ids), np.arange(len(ids))] = 1.0
    return p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["kmeans", "filter"])
def test_group_means_is_p_times_x_and_each_dimension_is_in_one_group(method):
    rows = np.random.default_rng(2).normal(size=(200, 3 * 3 * 16))
    ids, k = transform.group_ids(rows, 10, method, kernel_shape=(3, 3, 16), seed=0)
    assert ids.shape == (144,) and k <= 10
    assert set(ids.tolist()) == set(range(k))  # every group has members
    x = np.random.default_rng(3).normal(size=(144, 7))
    got = transform.group_means(x, ids, k)  # numpy in, numpy out, float64 kept
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, dense_p(ids, k) @ x, rtol=1e-10, atol=1e-12)
    tensor = ops.convert_to_tensor(x.astype("float32"))  # the penalty's side: keras.ops
    got = ops.convert_to_numpy(transform.group_means(tensor, ids, k))
    np.testing.assert_allclose(got, dense_p(ids, k) @ x, rtol=1e-5, atol=1e-6)


def test_filter_grouping_keeps_each_channel_filter_together():
    ids, k = transform.group_ids(np.zeros((4, 3 * 3 * 8)), 8, "filter", kernel_shape=(3, 3, 8))
    assert k == 8
    assert np.all(ids.reshape(9, 8) == np.arange(8))  # row (i*kw + j)*cin + c -> group c


def test_kmeans_groups_identical_dimensions_together():
    base = np.random.default_rng(3).normal(size=(100, 4))
    rows = np.repeat(base, 5, axis=1)  # 20 dims, 4 distinct activation vectors
    ids, k = transform.group_ids(rows, 4, "kmeans", seed=0)
    assert k == 4
    assert all(len(set(ids[i * 5 : (i + 1) * 5])) == 1 for i in range(4))


def sign_rows(d, seed):
    """im2col-like rows: 1024 signs of d dimensions that share 16 latent factors."""
    rng = np.random.default_rng(seed)
    z, w = rng.normal(size=(1024, 16)), rng.normal(size=(16, d))
    return np.sign(z @ w + 0.5 * rng.normal(size=(1024, d))).astype(np.float32)


def within_cluster_sum(points, ids):
    """k-means' objective: squared distances of the points to their groups' means."""
    return sum(((points[ids == j] - points[ids == j].mean(0)) ** 2).sum() for j in np.unique(ids))


@pytest.mark.parametrize("d", [96, 300])
def test_kmeans_is_a_lloyd_fixed_point_as_tight_as_scikit_learns(d):
    from sklearn.cluster import KMeans

    points = sign_rows(d, d).T
    ids = kmeans(points, 12, seed=0)
    used = np.unique(ids)
    centres = np.stack([points[ids == j].mean(0) for j in used])
    # the oracle's distances: an explicit difference per point and centre, float64
    dist = ((points[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(used[np.argmin(dist, 1)], ids)  # converged: nearest centre
    # as tight as scikit-learn's KMeans (one seeding each), on average over four seeds
    seeds = range(4)
    mine = [within_cluster_sum(points, kmeans(points, 12, seed=s)) for s in seeds]
    oracle = [KMeans(n_clusters=12, n_init=1, random_state=s).fit(points).inertia_ for s in seeds]
    assert np.mean(mine) <= 1.01 * np.mean(oracle)
    np.testing.assert_array_equal(kmeans(points, 12, seed=0), ids)  # seeded: the same groups


def test_kmeans_rejects_more_centres_than_points():
    with pytest.raises(ValueError, match="1 <= k <= 5 points. Received k=6"):
        kmeans(np.zeros((5, 3)), 6)
    assert kmeans(np.zeros((5, 3)), 5).shape == (5,)  # identical points: any labels, no error


def test_small_layers_use_identity_and_bad_groups_are_rejected():
    ids, k = transform.group_ids(np.zeros((5, 6)), 256)
    np.testing.assert_array_equal(ids, np.arange(6))
    assert k == 6
    with pytest.raises(ValueError, match="groups.*>= 1.*0"):
        transform.group_ids(np.zeros((5, 6)), 0)
    with pytest.raises(ValueError, match="Unknown transform 'pca'"):
        bk.BiTATConfig(transform="pca")
    with pytest.raises(ValueError, match="groups"):
        bk.BiTATConfig(groups=0)


def test_block_expansion_keeps_old_blocks_and_zero_off_diagonals():
    """Eq. 11: s <- [s; s_new], V <- [[V, 0], [0, V_new]], in the joining member's slot."""
    rng = np.random.default_rng(4)
    s1, v1 = rng.random(5), rng.normal(size=(5, 5))
    s2, v2 = rng.random(3), rng.normal(size=(3, 3))
    s0, v0 = np.zeros(9), np.zeros((9, 9))
    s, v = transform.expand_block(s0, v0, 0, 5, s1, v1)
    s, v = transform.expand_block(s, v, 5, 4, s2, v2)  # k = 3 in a slot of 4
    np.testing.assert_array_equal(s, np.r_[s1, s2, 0.0])
    np.testing.assert_array_equal(v[:5, :5], v1)
    np.testing.assert_array_equal(v[5:8, 5:8], v2)
    assert not v[:5, 5:].any() and not v[5:, :5].any() and not v[8].any() and not v[:, 8].any()
    # a member that joins again (a resumed run) replaces its own slot only
    again, v_again = transform.expand_block(s, v + 1.0, 5, 4, s2, v2)
    np.testing.assert_array_equal(v_again[:5, :5], v1 + 1.0)
    assert not v_again[:5, 5:].any() and not v_again[5:, :5].any()
    np.testing.assert_array_equal(again[:5], s1)


def numpy_eq13(s, v, ps, ws, sigma, lam, gamma):
    """Eq. 13's extra terms in numpy: dense P, PadCol stacking, Q(W) = alpha * sign(W)."""
    width = max(w.shape[-1] for w in ws)
    stacked = []
    for p, w in zip(ps, ws, strict=True):
        m = w.reshape(-1, w.shape[-1])
        q = np.where(m >= 0, 1.0, -1.0) * np.abs(m).mean(axis=0)
        r = p @ (m - q)
        stacked.append(np.pad(r, [(0, 0), (0, width - r.shape[1])]))
    r = np.concatenate(stacked)
    penalty = lam * np.sum((np.diag(s) @ v.T @ r) ** 2)
    reg = np.sum((v @ v.T - np.eye(len(s))) ** 2) + (sigma - np.sum(np.log(s))) ** 2
    l1 = gamma * sum(
        np.abs(np.where(w >= 0, 1.0, -1.0) * np.abs(w).mean(axis=(0, 1, 2))).sum() for w in ws
    )
    return penalty, reg, l1


def test_penalty_equals_numpy_eq13_on_random_tensors():
    rng = np.random.default_rng(5)
    w1 = rng.normal(size=(3, 3, 4, 6)).astype("float32") * 0.1  # d=36 -> 7 groups
    w2 = rng.normal(size=(1, 1, 6, 10)).astype("float32") * 0.1  # d=6 -> identity
    ids1, k1 = transform.group_ids(rng.normal(size=(50, 36)), 7, seed=0)
    k = k1 + 6
    s = rng.random(k) + 0.5
    v = rng.normal(size=(k, k))
    members = [("a", ids1, k1), ("b", None, 6)]
    bt = BlockTransform(s, v, 1.5, members, lam=100.0, gamma=1e-3, reg_weight=1.0)
    penalty, reg, l1 = (
        float(t) for t in bt.terms([ops.convert_to_tensor(w1), ops.convert_to_tensor(w2)])
    )
    ps = [dense_p(ids1, k1), np.eye(6)]
    expected = numpy_eq13(s, v, ps, [w1.astype(float), w2.astype(float)], 1.5, 100.0, 1e-3)
    np.testing.assert_allclose([penalty, reg, l1], expected, rtol=2e-5)


@pytest.mark.parametrize("mode", ["latent", "sign"])
def test_penalty_gradient_flows_into_the_chosen_side(mode):
    """d/dW of lam*||diag(s) V^T (W - Q(W))||^2 with M = V diag(s^2) V^T and R = W - Q:
    "latent" (Q fixed): 2 lam M R; "sign" (W fixed, STE through sgn, alpha fixed):
    -2 lam alpha[o] 1{|W| <= 1} M R."""
    import tensorflow as tf

    rng = np.random.default_rng(7)
    w = (rng.normal(size=(1, 1, 5, 3)) * 0.4).astype("float32")
    w[0, 0, 0, 0] = 1.5  # outside the STE's clip range: no gradient through sgn there
    s = rng.random(5) + 0.5
    v = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    bt = BlockTransform(
        s, v, 0.0, [("a", None, 5)], lam=3.0, gamma=0.0, reg_weight=0.0, penalty_gradient=mode
    )
    kernel = tf.Variable(w)
    with tf.GradientTape() as tape:
        penalty, _, _ = bt.terms([kernel])
    grad = tape.gradient(penalty, kernel).numpy().reshape(5, 3)
    m = w.reshape(5, 3).astype(float)
    alpha = np.abs(m).mean(axis=0)
    r = m - np.where(m >= 0, 1.0, -1.0) * alpha
    big_m = v @ np.diag(s**2) @ v.T
    expected = 2 * 3.0 * big_m @ r
    if mode == "sign":
        expected = -expected * alpha * (np.abs(m) <= 1.0)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-6)
    assert float(penalty) == pytest.approx(3.0 * np.sum((np.diag(s) @ v.T @ r) ** 2), rel=1e-5)


def test_regularizer_classes_serialize():
    for term in (
        bk.regularizers.DependencyPenalty(3.0),
        bk.regularizers.TransformRegularizer(),
        bk.regularizers.BinaryL1(1e-4),
    ):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(term))
        assert restored.get_config() == term.get_config()
    with pytest.raises(ValueError, match="lam"):
        bk.regularizers.DependencyPenalty(-1)


def test_q_orig_and_q_ours_match_numpy():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(3, 3, 2, 4))
    wq = np.where(w >= 0, 1.0, -1.0) * np.abs(w).mean(axis=(0, 1, 2))
    s, v = rng.random(18), np.linalg.qr(rng.normal(size=(18, 18)))[0]
    e = (w - wq).reshape(18, 4)
    assert bk.analysis.q_orig(w, wq) == pytest.approx(np.sum(e**2))
    assert bk.analysis.q_ours(w, wq, s, v) == pytest.approx(np.sum((np.diag(s) @ v.T @ e) ** 2))
    # With V = I and s = 1, Q_ours reduces to Q_orig.
    assert bk.analysis.q_ours(w, wq, np.ones(18), np.eye(18)) == pytest.approx(np.sum(e**2))


def test_best_scale_errors_match_per_channel_least_squares():
    rng = np.random.default_rng(7)
    w = rng.normal(size=(3, 3, 2, 4))
    latent = w + rng.normal(scale=0.8, size=w.shape)  # some signs flip
    wq = np.where(latent >= 0, 1.0, -1.0) * 5.0  # a scale far from the teacher's
    s, v = rng.random(18), np.linalg.qr(rng.normal(size=(18, 18)))[0]
    m = np.diag(s) @ v.T
    b, e = np.sign(latent).reshape(18, 4), w.reshape(18, 4)
    fit_orig = fit_ours = 0.0
    for o in range(4):  # each channel's scale from numpy's least squares
        a = np.linalg.lstsq(b[:, o : o + 1], e[:, o], rcond=None)[0]
        fit_orig += np.sum((e[:, o] - a * b[:, o]) ** 2)
        a = np.linalg.lstsq(m @ b[:, o : o + 1], m @ e[:, o], rcond=None)[0]
        fit_ours += np.sum((m @ (e[:, o] - a * b[:, o])) ** 2)
    assert bk.analysis.q_orig(w, wq, fit_scale=True) == pytest.approx(fit_orig)
    assert bk.analysis.q_ours(w, wq, s, v, fit_scale=True) == pytest.approx(fit_ours)
    # The fitted error does not depend on w_q's scale, and is at most the unfitted one.
    assert bk.analysis.q_orig(w, wq / 50, fit_scale=True) == pytest.approx(fit_orig)
    assert fit_orig < bk.analysis.q_orig(w, wq) and fit_ours < bk.analysis.q_ours(w, wq, s, v)
    # Signs equal to the teacher's: the fitted Q_orig is the per-channel l1 identity.
    exact = np.where(w >= 0, 1.0, -1.0)
    expected = np.sum(e**2) - np.sum(np.abs(e).sum(axis=0) ** 2 / 18)
    assert bk.analysis.q_orig(w, exact, fit_scale=True) == pytest.approx(expected)
    assert bk.analysis.signs_kept(w, exact) == 1.0
    assert bk.analysis.signs_kept(w, -exact) == 0.0
    assert bk.analysis.signs_kept(w, wq) == pytest.approx(np.mean(np.sign(w) == np.sign(latent)))


def test_v_parameter_count_of_mobilenet_is_aggregated_to_about_one_percent():
    counts = bk.analysis.v_parameter_count(bk.models.reactnet_mobilenet())
    assert counts["aggregated"] < 0.02 * counts["full"]
