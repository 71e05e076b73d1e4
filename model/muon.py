"""autoresearch's Muon as optax transforms: Polar-Express orthogonalization and NorMuon's per-row normalization.

autoresearch's Muon step, for a weight matrix W (PyTorch's (out, in)) and its gradient G:

    Nesterov momentum           M <- lerp(M, G, 1 - m);  G <- lerp(G, M, m)           (optax.trace, nesterov)
    Polar Express               X <- G / (1.02 ||G||_F + 1e-6); five steps X <- aX + (bA + cA²)X, A = XXᵀ,
                                each step with its own (a, b, c)                      (`scale_by_polar_express`)
    NorMuon                     per output row (per input column for a wide W) the mean square of X, kept as an
                                EMA (β₂ 0.95); X is divided by its root, then rescaled to its old Frobenius norm
                                                                                      (`scale_by_normuon`)
    update                      W <- W - lr·√max(1, out/in)·(X + wd·W·[X·W >= 0])     (model.optim)

Flax kernels are (in, out), the transpose of PyTorch's; orthogonalization commutes with transposition, and the
NorMuon statistics are taken along the axis that is PyTorch's last. autoresearch orthogonalizes in bfloat16 on its
GPU; here it is the update's own dtype (float32).

Every piece works on a matrix (in, out) or on a stack of them (k, in, out), each matrix on its own:
`stacked_by_shape` runs a chain on the matrices of one shape stacked, as autoresearch's Muon does, so that each
step of Polar Express is one batched product per shape instead of one per matrix.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

# autoresearch's (a, b, c) for the five iterations, from the Polar Express paper (Amsel et al., 2025)
POLAR_EXPRESS_COEFFS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
NORM_MARGIN = 1.02  # the first iteration expects a spectral norm below 1: divide by a bit more than ||X||_F
NORMUON_BETA2 = 0.95


def polar_express(x: jax.Array, steps: int = len(POLAR_EXPRESS_COEFFS)) -> jax.Array:
    """The orthogonal polar factor of a matrix (..., m, n), approximated by Polar Express's iterations."""
    x = x / (jnp.linalg.norm(x, axis=(-2, -1), keepdims=True) * NORM_MARGIN + 1e-6)
    tall = x.shape[-2] > x.shape[-1]  # multiply by the smaller Gram matrix
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        gram = x.mT @ x if tall else x @ x.mT
        poly = b * gram + c * (gram @ gram)
        x = a * x + (x @ poly if tall else poly @ x)
    return x


def scale_by_polar_express(steps: int = len(POLAR_EXPRESS_COEFFS)) -> optax.GradientTransformation:
    """Replace every (2-D) update by its Polar-Express orthogonalization."""
    return optax.stateless(lambda updates, params: jax.tree.map(lambda u: polar_express(u, steps), updates))


def _row_axis(x: jax.Array) -> int:
    # PyTorch's reduction axis -1 (over inputs, one statistic per output) when out >= in, else -2; in flax's
    # (in, out) layout those are axes -2 and -1.
    return -2 if x.shape[-1] >= x.shape[-2] else -1


class NorMuonState(NamedTuple):
    """The EMA of each matrix's per-row mean square (shape (1, out) or (in, 1))."""

    second_moment: optax.Updates


def scale_by_normuon(beta2: float = NORMUON_BETA2) -> optax.GradientTransformation:
    """NorMuon: divide each row of an (orthogonalized) update by the root of its running mean square, then
    rescale the whole update to the Frobenius norm it had."""

    def init_fn(params):
        return NorMuonState(jax.tree.map(lambda p: jnp.zeros_like(jnp.mean(p, _row_axis(p), keepdims=True)), params))

    def update_fn(updates, state, params=None):
        del params
        mean_sq = jax.tree.map(lambda u: jnp.mean(jnp.square(u), _row_axis(u), keepdims=True), updates)
        second = jax.tree.map(lambda v, m: v + (1.0 - beta2) * (m - v), state.second_moment, mean_sq)

        def normalize(u, m, v):
            n = u.shape[_row_axis(u)]
            scale = jax.lax.rsqrt(jnp.maximum(v, 1e-10))
            total = lambda t: jnp.sum(t, axis=(-2, -1), keepdims=True)  # noqa: E731 -- per matrix of a stack
            norm, new_norm = jnp.sqrt(total(m) * n), jnp.sqrt(total(m * n * jnp.square(scale)))
            return u * scale * (norm / jnp.maximum(new_norm, 1e-10))

        return jax.tree.map(normalize, updates, mean_sq, second), NorMuonState(second)

    return optax.GradientTransformation(init_fn, update_fn)


def _by_shape(tree) -> tuple[dict, Callable]:
    """The leaves of `tree` stacked by shape and dtype, {"in x out dtype": (k, in, out)}, and the function that
    puts a tree of such stacks back in `tree`'s structure."""
    leaves, treedef = jax.tree.flatten(tree)
    slots: dict[str, list[int]] = {}
    for i, leaf in enumerate(leaves):
        slots.setdefault("x".join(map(str, leaf.shape)) + f" {leaf.dtype}", []).append(i)
    stacks = {name: jnp.stack([leaves[i] for i in idx]) for name, idx in slots.items()}

    def unstack(stacked: dict):
        out = [None] * len(leaves)
        for name, idx in slots.items():
            for j, i in enumerate(idx):
                out[i] = stacked[name][j]
        return treedef.unflatten(out)

    return stacks, unstack


def stacked_by_shape(inner: optax.GradientTransformationExtraArgs) -> optax.GradientTransformationExtraArgs:
    """`inner` applied to the matrices stacked by shape (its state holds the stacks): one batched operation per
    shape instead of one per matrix. XLA:CPU builds a kernel for every fused operation of a program, and a warm
    trial spends its time loading them: at model=tiny this takes the train step from 742 kernels to 420."""

    def init_fn(params):
        return inner.init(_by_shape(params)[0])

    def update_fn(updates, state, params=None, **extra_args):
        stacked, unstack = _by_shape(updates)
        new, state = inner.update(stacked, state, None if params is None else _by_shape(params)[0], **extra_args)
        return unstack(new), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
