"""The output layer and its cross-entropy, fused and taken a block of rows at a time.

`head_losses(x, w, targets, softcap)` is what `optax.softmax_cross_entropy_with_integer_labels(softcap ×
tanh(x @ w / softcap), targets)` computes, without the (R, V) logits ever existing whole. The logits are by far
the largest activation of the model (at gpt50m 128 × 2048 rows × 8192 float32 = 8.6 GB), and on XLA:CPU their
gradient was transposed whole in memory for the output layer's weight gradient, which took a sixth of the tiny
model's forward and backward. Here a scan takes `rows` rows at a time: the forward keeps only each row's
log-sum-exp, and the backward (a custom VJP) recomputes a block's logits and turns them into the block's gradients
at once, so each block stays in cache and nothing of size (R, V) is kept for the backward.

Shapes: R rows (batch × sequence), D width, V vocabulary.
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import jax
import jax.numpy as jnp

# Logits held at once, in elements: 8 MB of float32 blocks stay in a CPU's cache; an accelerator wants large ones.
BLOCK_ELEMENTS = {"cpu": 2**21}
ACCELERATOR_BLOCK_ELEMENTS = 2**27


def block_rows(rows: int, vocab: int, backend: str | None = None) -> int:
    """Rows per block: as many as BLOCK_ELEMENTS allows for this vocabulary on this backend, at most all."""
    elements = BLOCK_ELEMENTS.get(backend or jax.default_backend(), ACCELERATOR_BLOCK_ELEMENTS)
    return max(1, min(rows, elements // vocab))


def head_losses(x: jax.Array, w: jax.Array, targets: jax.Array, softcap: Optional[float]) -> jax.Array:
    """Cross-entropy in nats of each row's target under the logits x @ w (soft-capped unless softcap is None):
    x (R, D) in the compute dtype, w (D, V), targets (R,) int -> (R,) float32."""
    rows = block_rows(x.shape[0], w.shape[1])
    pad = -x.shape[0] % rows  # padded rows are scored and dropped, so any R works
    xp = jnp.pad(x, ((0, pad), (0, 0)))
    tp = jnp.pad(targets, (0, pad))
    return _blocked_losses(xp, w, tp, softcap, rows)[: x.shape[0]]


def _blocks(a: jax.Array, rows: int) -> jax.Array:
    return a.reshape(a.shape[0] // rows, rows, *a.shape[1:])  # (R, ...) -> (R / rows, rows, ...)


def logits(x: jax.Array, w: jax.Array, softcap: Optional[float]) -> tuple[jax.Array, Optional[jax.Array]]:
    """The logits z = x @ w in float32, soft-capped unless softcap is None (x (..., D), w (D, V) -> (..., V)), and
    tanh(z / softcap) for a backward pass when capped."""
    z = jnp.dot(x, w.astype(x.dtype), preferred_element_type=jnp.float32)  # (..., V)
    if softcap is None:
        return z, None
    t = jnp.tanh(z / softcap)
    return softcap * t, t


@partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _blocked_losses(x, w, targets, softcap, rows):
    return _forward(x, w, targets, softcap, rows)[0]


def _forward(x, w, targets, softcap, rows):
    def block(_, xs):
        xb, tb = xs
        capped, _ = logits(xb, w, softcap)
        lse = jax.nn.logsumexp(capped, axis=-1)  # (rows,)
        return None, (lse - jnp.take_along_axis(capped, tb[:, None], axis=-1)[:, 0], lse)

    _, (losses, lse) = jax.lax.scan(block, None, (_blocks(x, rows), _blocks(targets, rows)))
    return losses.reshape(-1), (x, w, targets, lse.reshape(-1))


def _backward(softcap, rows, residuals, g):
    x, w, targets, lse = residuals

    def block(dw, xs):
        xb, tb, lb, gb = xs
        capped, t = logits(xb, w, softcap)
        # d loss / d logits = softmax - one_hot(target), scaled by the incoming gradient of each row's loss
        dlogits = gb[:, None] * (jnp.exp(capped - lb[:, None]) - jax.nn.one_hot(tb, w.shape[1], dtype=jnp.float32))
        dz = dlogits if t is None else dlogits * (1.0 - t * t)  # through softcap × tanh(z / softcap)
        dz = dz.astype(x.dtype)
        dx = jnp.dot(dz, w.T.astype(x.dtype), preferred_element_type=jnp.float32).astype(x.dtype)  # (rows, D)
        return dw + jnp.dot(xb.T, dz, preferred_element_type=jnp.float32), dx  # (D, V)

    xs = (_blocks(x, rows), _blocks(targets, rows), _blocks(lse, rows), _blocks(g, rows))
    dw, dx = jax.lax.scan(block, jnp.zeros(w.shape, jnp.float32), xs)
    return dx.reshape(x.shape), dw.astype(w.dtype), None


_blocked_losses.defvjp(_forward, _backward)
