"""The s/V terms of Eq. 13 as small serializable, regularizer-style callables."""

from keras import ops

from bitat_keras.method import transform
from bitat_keras.nn.registry import register


class _Term:
    def get_config(self):
        return dict(vars(self))

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@register
class DependencyPenalty(_Term):
    """lam * ||diag(s) V^T P (W - Q(W))||_F^2 over a block (Eq. 13, second term).

    ``BlockTransform`` divides it by the block's output energy ||diag(s) V^T P W||_F^2
    unless the configuration asks for the paper's plain sum (``penalty_normalization``).

    Args:
        lam: the weight lambda (paper: 100).

    Example:
        >>> term = DependencyPenalty(lam=100.0)
        >>> value = term(s, v, [reduced_residual_1, reduced_residual_2])  # doctest: +SKIP
    """

    def __init__(self, lam=100.0):
        if not lam >= 0:
            raise ValueError(f"`lam` must be >= 0. Received: lam={lam!r}")
        self.lam = float(lam)

    def __call__(self, s, v, residuals):
        return self.lam * transform.dependency_penalty(s, v, residuals)


@register
class TransformRegularizer(_Term):
    """Reg(s, V) = ||V V^T - I||^2 + (sigma - sum_i log s_i)^2 (Eq. 9 and 13, last term).

    Keeps V orthonormal and the total log-importance at its initial value sigma.

    Args:
        weight: multiplier of Reg (the paper uses 1).

    Example:
        >>> reg = TransformRegularizer()
        >>> value = reg(s, v, sigma)  # doctest: +SKIP
    """

    def __init__(self, weight=1.0):
        if not weight >= 0:
            raise ValueError(f"`weight` must be >= 0. Received: weight={weight!r}")
        self.weight = float(weight)

    def __call__(self, s, v, sigma, mask=None):
        return self.weight * transform.orthogonality_and_scale(s, v, sigma, mask)


@register
class BinaryL1(_Term):
    """gamma * ||Q(W)||_1 (Eq. 13, third term).

    With Q(W) = alpha[o] * sign(W) and alpha[o] = mean_i |W[i, o]|, ||Q(W)||_1 equals
    ||W||_1 exactly, which is what is computed (it also gives the term a useful gradient).

    Args:
        gamma: the weight gamma (paper: 1e-5).

    Example:
        >>> l1 = BinaryL1(gamma=1e-5)
        >>> value = l1(kernel)  # doctest: +SKIP
    """

    def __init__(self, gamma=1e-5):
        if not gamma >= 0:
            raise ValueError(f"`gamma` must be >= 0. Received: gamma={gamma!r}")
        self.gamma = float(gamma)

    def __call__(self, kernel):
        return self.gamma * ops.sum(ops.abs(kernel))
