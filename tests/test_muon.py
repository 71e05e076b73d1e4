"""autoresearch's Muon pieces (model.muon) against NumPy references written from autoresearch's train.py, in its
PyTorch layout ((out, in) matrices; flax kernels are the transpose)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from model.muon import polar_express, scale_by_normuon, scale_by_polar_express, stacked_by_shape

# autoresearch's polar_express_coeffs, as its train.py lists them
COEFFS = [
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
]
SHAPES = [(64, 16), (16, 64), (32, 32)]  # flax (in, out): more inputs, more outputs, square


def ref_polar_express(g: np.ndarray) -> np.ndarray:
    """train.py's orthogonalization of a PyTorch-layout matrix, in float64."""
    x = g / (np.linalg.norm(g) * 1.02 + 1e-6)
    for a, b, c in COEFFS:
        if g.shape[0] > g.shape[1]:
            A = x.T @ x
            x = a * x + x @ (b * A + c * A @ A)
        else:
            A = x @ x.T
            x = a * x + (b * A + c * A @ A) @ x
    return x


def ref_normuon(g: np.ndarray, buf: np.ndarray | None, beta2: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """train.py's NorMuon variance reduction of a PyTorch-layout update; (update, second-moment buffer)."""
    red = -1 if g.shape[-2] >= g.shape[-1] else -2
    v_mean = np.mean(g**2, axis=red, keepdims=True)
    n = g.shape[red]
    v_norm = np.sqrt(v_mean.sum() * n)
    buf = np.zeros_like(v_mean) if buf is None else buf
    buf = buf + (1 - beta2) * (v_mean - buf)  # lerp_(v_mean, 1 - beta2)
    step = 1 / np.sqrt(np.maximum(buf, 1e-10))
    v_norm_new = np.sqrt((v_mean * n * step**2).sum())
    return g * step * (v_norm / max(v_norm_new, 1e-10)), buf


@pytest.mark.parametrize("shape", SHAPES)
def test_polar_express_is_autoresearchs(shape):
    x = np.random.default_rng(0).normal(size=shape)
    ours = np.asarray(polar_express(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(ours, ref_polar_express(x.T).T, rtol=1e-4, atol=2e-5)
    # it is an approximate polar factor: every singular value pulled from its spread towards 1
    s = np.linalg.svd(ours, compute_uv=False)
    assert 0.5 < s.min() and s.max() < 1.5, s


@pytest.mark.parametrize("shape", SHAPES)
def test_normuon_is_autoresearchs_over_several_steps(shape):
    rng = np.random.default_rng(1)
    tx = scale_by_normuon()
    state = tx.init({"w": jnp.zeros(shape)})
    buf = None
    for _ in range(3):
        # rows of very different scales: what NorMuon evens out
        u = rng.normal(size=shape) * rng.uniform(0.1, 3.0, size=(1, shape[1]))
        ours, state = tx.update({"w": jnp.asarray(u, jnp.float32)}, state)
        ref, buf = ref_normuon(u.T, buf)
        np.testing.assert_allclose(np.asarray(ours["w"]), ref.T, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(np.asarray(state.second_moment["w"]), buf.T, rtol=1e-4, atol=1e-8)
        # the Frobenius norm is kept; the row statistics are not
        assert np.linalg.norm(ours["w"]) == pytest.approx(np.linalg.norm(u), rel=1e-4)


def test_muon_on_stacked_matrices_is_muon_on_each():
    # Three matrices of one shape and two of others, through the Muon chain for three steps, stacked by shape and
    # one by one: the same updates and states, and the stacked step builds fewer kernels.
    rng = np.random.default_rng(2)
    shapes = {"a": (32, 16), "b": (32, 16), "c": (16, 64), "d": (32, 16), "e": (8, 8)}
    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    chain = optax.chain(optax.trace(0.9, nesterov=True), scale_by_polar_express(), scale_by_normuon())
    alone, stacked = chain, stacked_by_shape(chain)
    states = [alone.init(params), stacked.init(params)]
    for _ in range(3):
        grads = {k: jnp.asarray(rng.normal(size=s) * rng.uniform(0.1, 3.0, size=(1, s[1])), jnp.float32)
                 for k, s in shapes.items()}  # fmt: skip
        (u1, states[0]), (u2, states[1]) = alone.update(grads, states[0], params), stacked.update(grads, states[1], params)
        assert set(u2) == set(shapes)
        for k in shapes:
            assert u2[k].shape == shapes[k]
            np.testing.assert_allclose(np.asarray(u2[k]), np.asarray(u1[k]), rtol=1e-4, atol=1e-6, err_msg=k)
    # the momentum of the three (32, 16) matrices lives in one (3, 32, 16) stack
    momentum = states[1][0].trace
    assert sorted(leaf.shape for leaf in jax.tree.leaves(momentum)) == [(1, 8, 8), (1, 16, 64), (3, 32, 16)]

    def kernels(tx):
        step = jax.jit(lambda g, s: tx.update(g, s, params)[0]).lower(grads, tx.init(params)).compile()
        return step.as_text().count(" fusion(")

    assert kernels(stacked) < kernels(alone)
