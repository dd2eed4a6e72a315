"""The trainable s and V of one block and the Eq. 13 terms over its binarized layers.

A block's layers join one at a time (Eq. 11): every layer owns a fixed slot of s and V from
the start (its size is known before training: k groups, or d input dimensions without
aggregation), and ``join`` fills the slot with the layer's PCA initialisation and switches
it on. Shapes never change while the block trains.
"""

import keras
import numpy as np
from keras import ops

from bitat_keras.method import transform
from bitat_keras.nn import quantizers
from bitat_keras.nn.regularizers import BinaryL1, DependencyPenalty, TransformRegularizer

__all__ = ["BlockTransform", "PENALTY_NORMALIZATIONS"]

PENALTY_NORMALIZATIONS = ("output", "none")


class BlockTransform(keras.layers.Layer):
    """Owns the trainable importance ``s`` and dependency ``V`` of one block (Eq. 11-13).

    Args:
        s: initial importance vector (K,) over the members' slots.
        v: initial dependency matrix (K, K).
        sigma: Reg's target for sum(log s) over the active slots.
        members: list of ``(layer_name, group_ids or None, k)`` in block order: ``k`` is the
            member's slot size, ``group_ids`` (length d) map its input dimensions to groups
            (None: P = I, d = k).
        lam, gamma, reg_weight: weights of the penalty, the l1 term and Reg.
        use_transform: False for the "none" ablation (only the l1 term remains).
        penalty_gradient: "latent" or "sign": which side of W - Q(W) the penalty's
            gradient flows through (see ``residuals``).
        kernel_quantizer: the kernel quantizer (with a per-channel scale, as a default
            ``BinaryConv2D`` applies it) that gives Q(W) for kernels passed without their
            quantized form (see ``residuals``); its straight-through gradient is the one
            "sign" uses.
        active: how many members are switched on (default: all).
        name: the layer's name.

    Example:
        >>> bt = BlockTransform(s, v, sigma, [("conv", None, 8)], lam=1.0, gamma=0.0,
        ...                     reg_weight=1.0)  # doctest: +SKIP
        >>> penalty, reg, l1 = bt.terms([conv.kernel])  # doctest: +SKIP
    """

    def __init__(
        self,
        s,
        v,
        sigma,
        members,
        lam,
        gamma,
        reg_weight,
        use_transform=True,
        penalty_gradient="latent",
        kernel_quantizer="ste_sign",
        active=None,
        name="block_transform",
    ):
        super().__init__(name=name)
        self.penalty_gradient = penalty_gradient
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self.names = [name for name, _, _ in members]
        self.slots = [int(k) for _, _, k in members]
        self.offsets = np.concatenate([[0], np.cumsum(self.slots)]).astype(int)
        self.use_transform = use_transform
        self.penalty_term = DependencyPenalty(lam)
        self.reg_term = TransformRegularizer(reg_weight)
        self.l1_term = BinaryL1(gamma)
        n = len(members)
        active = n if active is None else int(active)
        self.member_on = self.add_weight(
            shape=(n,),
            initializer=keras.initializers.Constant([1.0] * active + [0.0] * (n - active)),
            trainable=False,
            name="member_on",
        )
        # 1 / (output energy) of Eq. 13's penalty (see ``output_energy``); 1: the plain sum.
        self.inv_energy = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="inv_energy"
        )
        self.sigma = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(float(sigma)), trainable=False
        )
        # 1 for the slots in use: a joined member's first k entries (k: its group count).
        mask = np.zeros(self.offsets[-1], dtype="float32")
        mask[: self.offsets[active]] = 1.0
        self.active = self.add_weight(
            shape=mask.shape,
            initializer=keras.initializers.Constant(mask),
            trainable=False,
            name="active",
        )
        self.ids, self.counts = [], []
        for j, (_, ids, k) in enumerate(members):
            if ids is None:
                self.ids.append(None)
                self.counts.append(None)
                continue
            ids = np.asarray(ids, dtype="int32")
            self.ids.append(
                self.add_weight(
                    shape=ids.shape,
                    initializer=keras.initializers.Constant(ids),
                    dtype="int32",
                    trainable=False,
                    name=f"ids{j}",
                )
            )
            counts = transform.group_sizes(ids, k)
            self.counts.append(
                self.add_weight(
                    shape=(k,),
                    initializer=keras.initializers.Constant(counts),
                    trainable=False,
                    name=f"counts{j}",
                )
            )
        self.s = self.v = None
        if use_transform:
            self.s = self.add_weight(
                shape=np.shape(s), initializer=keras.initializers.Constant(s), name="s"
            )
            self.v = self.add_weight(
                shape=np.shape(v), initializer=keras.initializers.Constant(v), name="v"
            )

    @classmethod
    def sized_for(cls, dims, config, name="block_transform"):
        """An empty block (no member joined yet) for layers with input dimensions ``dims``
        (``{layer name: d}``, bottom to top): each layer's slot is ``config.groups`` wide
        where ``config.transform`` aggregates and d exceeds it, else d. The other settings
        (lam, gamma, reg_weight, penalty_gradient, kernel_quantizer) come from ``config``.
        """
        members = []
        aggregated = config.transform in ("aggregated", "filter")
        for layer, d in dims.items():
            k = transform.slot_size(d, config.groups, aggregated)
            members.append((layer, np.zeros(d, "int32") if k < d else None, k))
        size = sum(k for _, _, k in members)
        return cls(
            np.zeros(size),
            np.zeros((size, size)),
            0.0,
            members,
            config.lam,
            config.gamma,
            config.reg_weight,
            use_transform=config.transform != "none",
            penalty_gradient=config.penalty_gradient,
            kernel_quantizer=config.kernel_quantizer,
            active=0,
            name=name,
        )

    # -- Eq. 11: a member joins the block ----------------------------------------------------
    def join(self, j, s_new, v_new, ids=None):
        """Switch member ``j`` on: its slot of s and the diagonal block of V get the PCA
        initialisation (a smaller k than the slot leaves the rest of the slot inactive),
        its off-diagonal blocks start at zero, and sigma becomes sum(log s) over the active
        slots."""
        if ids is not None:
            ids = np.asarray(ids, dtype="int32")
            self.ids[j].assign(ids)
            self.counts[j].assign(transform.group_sizes(ids, self.slots[j]))
        on = ops.convert_to_numpy(self.member_on).copy()
        on[j] = 1.0
        self.member_on.assign(on)
        if not self.use_transform:
            return
        lo, k = self.offsets[j], len(s_new)
        mask = ops.convert_to_numpy(self.active).copy()
        mask[lo : lo + self.slots[j]] = 0.0
        mask[lo : lo + k] = 1.0
        self.active.assign(mask)
        s, v = transform.expand_block(*self.numpy_sv(), lo, self.slots[j], s_new, v_new)
        self.s.assign(s.astype("float32"))
        self.v.assign(v.astype("float32"))
        active = self.active_index()
        self.sigma.assign(float(np.sum(np.log(np.maximum(np.abs(s[active]), 1e-12)))))

    def numpy_sv(self):
        """s and V as float64 numpy arrays."""
        s, v = (ops.convert_to_numpy(w).astype(float) for w in (self.s, self.v))
        return s, v

    def active_index(self):
        """Indices of the slots in use (numpy)."""
        return np.flatnonzero(ops.convert_to_numpy(self.active) > 0.5)

    # -- Eq. 12-13 ---------------------------------------------------------------------------
    def _reduce(self, matrix, j):
        matrix = ops.reshape(matrix, (-1, matrix.shape[-1]))
        return transform.group_means(matrix, self.ids[j], self.slots[j], self.counts[j])

    def residuals(self, kernels, quantized=None):
        """P_j (W_j - Q(W_j)) for each member, Q(W) = alpha[o] * sgn(W), zero for members
        that have not joined yet.

        ``quantized``: per member, Q(W_j) split as ``(signs, scale)``, what the member
        layer's ``BinaryConv2D.kernel_and_scale()`` gives (its own quantizer and scale);
        None: ``quantizers.kernel_and_scale`` of each kernel with the block's
        ``kernel_quantizer`` and a per-channel scale (a default ``BinaryConv2D``'s).

        ``penalty_gradient="latent"``: Q(W) is a fixed target and the gradient moves the
        latent W towards it. ``"sign"``: W is the fixed target and the gradient flows
        through sgn's straight-through estimator, so the binary weights move towards the
        outputs of the latent (initially pre-trained) ones in the important directions.
        """
        if quantized is None:
            quantized = [quantizers.kernel_and_scale(k, self.kernel_quantizer) for k in kernels]
        out = []
        for j, (kernel, (signs, scale)) in enumerate(zip(kernels, quantized, strict=True)):
            q = signs if scale is None else signs * scale
            if self.penalty_gradient == "sign":
                residual = ops.stop_gradient(kernel) - q
            else:
                residual = kernel - ops.stop_gradient(q)
            out.append(self._reduce(residual, j) * self.member_on[j])
        return out

    def _masked_sv(self):
        mask = self.active
        return self.s * mask, self.v * ops.expand_dims(mask, 1) * ops.expand_dims(mask, 0)

    def output_energy(self, kernels):
        """||diag(s) V^T P W||_F^2 over the joined members' kernels: with s, V the PCA of
        the inputs' second moment C, this is E||W^T P o||^2, the energy of the block's
        outputs, which normalises the penalty into a relative output error."""
        s, v = self._masked_sv()
        matrices = [self._reduce(k, j) * self.member_on[j] for j, k in enumerate(kernels)]
        return transform.dependency_penalty(s, v, matrices)

    def terms(self, kernels, quantized=None):
        """(penalty, reg, l1) of Eq. 13 for the members' current kernels (``quantized``:
        their Q(W) as in ``residuals``)."""
        l1 = sum(self.l1_term(k) * self.member_on[j] for j, k in enumerate(kernels))
        if not self.use_transform:
            zero = ops.zeros(())
            return zero, zero, l1
        s, v = self._masked_sv()
        penalty = self.penalty_term(s, v, self.residuals(kernels, quantized)) * self.inv_energy
        reg = self.reg_term(self.s, self.v, self.sigma, self.active)
        return penalty, reg, l1
