"""The model: parameter count, window masks, val_bpb arithmetic."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from model import head
from model.evaluate import bits_per_byte, bpb_sums
from model.gpt import GPT, CausalSelfAttention, GPTConfig, param_count, token_losses, window_sizes


def n_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "cfg",
    [
        GPTConfig(depth=2, aspect_ratio=64, head_dim=64, seq_len=32, vocab_size=300),
        GPTConfig(depth=3, aspect_ratio=40, head_dim=32, seq_len=16, vocab_size=512, window_pattern="SL"),
        GPTConfig(depth=1, aspect_ratio=64, head_dim=32, width=96, seq_len=8, vocab_size=260),
    ],
)
def test_param_count_matches_formula(cfg):
    model = GPT(cfg, rngs=nnx.Rngs(0))
    assert n_params(model) == param_count(cfg)


def test_gpt50m_is_autoresearch_size():
    cfg = GPTConfig()  # autoresearch's defaults
    assert cfg.model_dim == 512 and cfg.n_head == 4
    assert param_count(cfg) == 50_332_176  # ~50.3 M, as the original reports


def test_width_rounds_up_to_whole_heads():
    assert GPTConfig(depth=3, aspect_ratio=40, head_dim=64).model_dim == 128  # 120 -> 128


def test_window_sizes_follow_pattern_and_last_layer_is_full():
    cfg = GPTConfig(depth=6, seq_len=8, window_pattern="SSSL")
    assert window_sizes(cfg) == [4, 4, 4, 8, 4, 8]
    assert window_sizes(GPTConfig(depth=3, seq_len=8, window_pattern="ssss")) == [4, 4, 8]


@pytest.mark.parametrize("window", [3, 16])
def test_attention_sees_exactly_its_window(window):
    """Output at position i depends on input j iff i - window <= j <= i (causal, sliding)."""
    T = 16
    cfg = GPTConfig(depth=1, aspect_ratio=64, head_dim=32, seq_len=T, vocab_size=300)
    attn = CausalSelfAttention(cfg, layer=1, window=window, dtype=jnp.float32, rngs=nnx.Rngs(0))
    attn.c_proj.kernel[...] = jax.random.normal(jax.random.key(1), attn.c_proj.kernel.shape)
    x = jax.random.normal(jax.random.key(2), (1, T, cfg.model_dim))
    idx = jnp.zeros((1, T), jnp.int32)
    from model.gpt import rotary_tables

    cos, sin = rotary_tables(T, cfg.head_dim)
    jac = jax.jacobian(lambda x: attn(x, idx, cos, sin).sum(-1)[0])(x)  # (T_out, 1, T_in, D)
    depends = np.asarray(jnp.abs(jac[:, 0]).sum(-1) > 0)  # (T_out, T_in)
    i, j = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
    assert (depends == ((j <= i) & (i - j <= window))).all()


def test_logits_are_softcapped_and_loss_starts_near_uniform():
    cfg = GPTConfig(depth=2, aspect_ratio=64, head_dim=64, seq_len=32, vocab_size=512)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(0), (2, 33), 0, 512)
    assert float(jnp.abs(model(tokens[:, :-1])).max()) <= 15.0
    # lm_head starts at std 0.001, so the first prediction is almost uniform
    assert float(token_losses(model, tokens).mean()) == pytest.approx(math.log(512), abs=0.05)


@pytest.mark.parametrize("softcap,tied,block_rows", [(15.0, False, None), (None, False, 3), (15.0, True, 4)])
def test_fused_head_losses_and_gradients_equal_the_cross_entropy_of_the_logits(monkeypatch, softcap, tied, block_rows):
    cfg = GPTConfig(depth=2, aspect_ratio=32, head_dim=32, seq_len=10, vocab_size=96, softcap=softcap,
                    tie_embeddings=tied)  # fmt: skip
    if block_rows is not None:  # blocks that do not divide the 2 × 10 rows: the last one is padded
        monkeypatch.setitem(head.BLOCK_ELEMENTS, jax.default_backend(), block_rows * cfg.vocab_size)
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(1)), nnx.Param)
    # A trained-looking output layer: at init its 0.001 scale leaves every loss at log V and hides mistakes.
    params = jax.tree.map(lambda p: p * 300.0 if p.ndim == 2 and cfg.vocab_size in p.shape else p, params)
    tokens = jax.random.randint(jax.random.key(2), (2, 11), 0, cfg.vocab_size)

    def fused(p):
        return token_losses(nnx.merge(graphdef, p), tokens)

    def reference(p):
        logits = nnx.merge(graphdef, p)(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])

    losses, want = fused(params), reference(params)
    assert losses.shape == (2, 10) and float(jnp.std(want)) > 0.1
    np.testing.assert_allclose(losses, want, rtol=1e-5, atol=1e-5)
    weights = jax.random.uniform(jax.random.key(3), (2, 10))  # an uneven gradient into each row's loss
    got = jax.grad(lambda p: (fused(p) * weights).sum())(params)
    ref = jax.grad(lambda p: (reference(p) * weights).sum())(params)
    # Absolute slack relative to the largest gradient: the mixing scalars' gradients are exactly 0 at
    # initialisation (a weightless RMSNorm ignores scale), so both sides hold only float32 rounding there.
    scale = max(float(jnp.abs(r).max()) for r in jax.tree.leaves(ref))
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * scale)


def test_val_bpb_of_uniform_logits_is_log2_vocab_tokens_over_bytes():
    V = 64
    token_bytes = jnp.array([0] + [1 + i % 5 for i in range(1, V)], jnp.int32)  # id 0 is a special token
    targets = jnp.array([[3, 7, 0, 12], [0, 1, 2, 63]])
    logits = jnp.zeros((2, 4, V))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    nats, nbytes = bpb_sums(losses, targets, token_bytes)
    kept = [3, 7, 12, 1, 2, 63]  # the two special targets are excluded from both sums
    expected_bytes = sum(1 + t % 5 for t in kept)
    assert float(nbytes) == expected_bytes
    assert bits_per_byte(float(nats), float(nbytes)) == pytest.approx(math.log2(V) * len(kept) / expected_bytes)
