"""The autoresearch GPT, ported to Flax NNX.

A faithful port of karpathy/autoresearch's model (itself from nanochat): rotary embeddings, RMSNorm without
weights (also on queries and keys), ReLU² MLP, value embeddings mixed into the attention values of alternating
layers through a learned gate, per-layer scalars mixing the residual stream with the first layer's input,
logits soft-capped at 15, untied embeddings, no biases, and a sliding-window pattern per layer.

Each of those choices is also a GPTConfig option (the structural menu a search may change), autoresearch's
choice the default: `mlp` (relu2, gelu, swiglu) with `mlp_ratio`, `value_embeds` (alternate, all, none),
`mix_scalars`, `qk_norm`, `softcap`, `rope_base`, `tie_embeddings`, `window_pattern` and `norm` (pre, sandwich).

Shapes: B batch, T sequence, D model width, N heads, H head width, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from model.head import head_losses, logits

VE_GATE_CHANNELS = 32  # the value-embedding gate reads only the first 32 channels of the layer input
WINDOW_LETTERS = {"S", "L"}
MLPS = ("relu2", "gelu", "swiglu")
VALUE_EMBEDS = ("alternate", "all", "none")
NORMS = ("pre", "sandwich")  # sandwich also normalizes each block's output before it joins the residual stream


@dataclass
class GPTConfig:
    """Architecture: the shape hyperparameters of autoresearch plus context length and vocabulary."""

    depth: int = 8
    aspect_ratio: int = 64
    head_dim: int = 128
    window_pattern: str = "SSSL"
    seq_len: int = 2048
    vocab_size: int = 8192
    width: Optional[int] = None  # an explicit model width overrides depth × aspect ratio
    # Structure (autoresearch's choices by default).
    mlp: str = "relu2"  # MLPS: the MLP's activation; swiglu adds a gate matrix
    mlp_ratio: float = 4.0  # MLP hidden width / model width (8/3 gives swiglu relu2's parameter count)
    value_embeds: str = "alternate"  # VALUE_EMBEDS: which layers mix a value embedding into attention's values
    mix_scalars: bool = True  # per-layer learned scalars mixing the residual stream with the first layer's input
    qk_norm: bool = True  # RMSNorm on queries and keys
    softcap: Optional[float] = 15.0  # logits = softcap × tanh(logits / softcap); null: raw logits
    rope_base: float = 10000.0  # rotary embeddings' frequency base
    tie_embeddings: bool = False  # the output layer reuses the token embedding
    norm: str = "pre"  # NORMS

    @property
    def model_dim(self) -> int:
        """Width: depth × aspect ratio, rounded up to a whole number of heads (as autoresearch does)."""
        if self.width is not None:
            return self.width
        return math.ceil(self.depth * self.aspect_ratio / self.head_dim) * self.head_dim

    @property
    def n_head(self) -> int:
        return self.model_dim // self.head_dim


def window_sizes(cfg: GPTConfig) -> list[int]:
    """How many past tokens each layer may look back: S = half the context, L = all; the last layer is L."""
    pattern = cfg.window_pattern.upper()
    sizes = [cfg.seq_len // 2 if pattern[i % len(pattern)] == "S" else cfg.seq_len for i in range(cfg.depth)]
    sizes[-1] = cfg.seq_len
    return sizes


def has_value_embedding(layer: int, cfg: GPTConfig) -> bool:
    """Whether a layer has a value embedding: alternating layers ending with the last one (autoresearch), all or
    none."""
    if cfg.value_embeds == "alternate":
        return layer % 2 == (cfg.depth - 1) % 2
    return cfg.value_embeds == "all"


def mlp_hidden(cfg: GPTConfig) -> int:
    """The MLP's hidden width: mlp_ratio × model width, rounded, at least 1."""
    return max(1, round(cfg.mlp_ratio * cfg.model_dim))


def _matmul_params(cfg: GPTConfig) -> int:
    """Weights of the per-token matrix multiplies: the blocks, the value-embedding gates and the output layer."""
    d = cfg.model_dim
    n_ve = sum(has_value_embedding(i, cfg) for i in range(cfg.depth))
    mlp = (3 if cfg.mlp == "swiglu" else 2) * d * mlp_hidden(cfg)
    return cfg.depth * (4 * d * d + mlp) + n_ve * VE_GATE_CHANNELS * cfg.n_head + cfg.vocab_size * d


def param_count(cfg: GPTConfig) -> int:
    """Number of parameters, by formula (the tests hold the module to it)."""
    d, v = cfg.model_dim, cfg.vocab_size
    n_ve = sum(has_value_embedding(i, cfg) for i in range(cfg.depth))
    lookups = v * d * (n_ve + (0 if cfg.tie_embeddings else 1))  # wte unless it is the output layer; value embeds
    scalars = 2 * cfg.depth if cfg.mix_scalars else 0  # resid_lambdas, x0_lambdas
    return _matmul_params(cfg) + lookups + scalars


def flops_per_token(cfg: GPTConfig) -> float:
    """Training FLOPs per token (forward + backward), autoresearch's estimate used for MFU.

    6 per weight of every matrix multiply (embedding lookups are free; a tied output layer is a multiply), plus
    attention scores and values over each layer's window: 12 × width × window per layer.
    """
    return 6.0 * _matmul_params(cfg) + sum(12.0 * cfg.model_dim * min(w, cfg.seq_len) for w in window_sizes(cfg))


def rms_norm(x: jax.Array) -> jax.Array:
    """RMSNorm without a learned scale, computed in float32 for stability under bf16."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)).astype(x.dtype)


def rotary_tables(seq_len: int, head_dim: int, base: float = 10000.0) -> tuple[jax.Array, jax.Array]:
    """cos and sin of the rotary angles, each (T, H/2)."""
    inv_freq = 1.0 / (base ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = jnp.arange(seq_len, dtype=jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate (B, T, N, H) by position, pairing the first and second halves of each head (nanochat style)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[None, :, None, :].astype(x.dtype), sin[None, :, None, :].astype(x.dtype)
    return jnp.concatenate([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], axis=-1)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, window: int) -> jax.Array:
    """Causal attention where query i sees keys i-window..i (flash-attention's window_size=(window, 0)): (B, T, N, H)
    each -> (B, T, N, H).

    On a GPU in 16-bit, cuDNN's fused kernel, never the full scores (at gpt50m one layer's (B, N, T, T) would be
    8.6 GB). Elsewhere the scores are written out, heads first: XLA:CPU runs this about 13 % faster at model=small
    than jax.nn.dot_product_attention's own path, whose softmax transposes every (B, N, T, T) array it touches.
    """
    B, T, N, H = q.shape
    if jax.default_backend() == "gpu" and q.dtype in (jnp.bfloat16, jnp.float16):
        local = (window, 0) if window < T else None
        return jax.nn.dot_product_attention(q, k, v, is_causal=True, local_window_size=local, implementation="cudnn")
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # (B, N, T, H)
    scores = jnp.einsum("bnth,bnsh->bnts", q, k, preferred_element_type=jnp.float32) * H**-0.5  # (B, N, T, T)
    i, j = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    scores = jnp.where((j <= i) & (i - j <= window), scores, jnp.finfo(jnp.float32).min)
    y = jnp.einsum("bnts,bnsh->bnth", jax.nn.softmax(scores, axis=-1).astype(v.dtype), v)
    return y.transpose(0, 2, 1, 3)


def _uniform(scale: float):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -scale, scale)


# Parameters live in float32; `dtype` is the compute dtype (bf16 on GPU), so the optimizer never sees bf16.
def _linear(d_in: int, d_out: int, init, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=jnp.float32, kernel_init=init, rngs=rngs)


def _embed(vocab: int, d: int, init, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(vocab, d, dtype=dtype, param_dtype=jnp.float32, embedding_init=init, rngs=rngs)


class CausalSelfAttention(nnx.Module):
    def __init__(self, cfg: GPTConfig, layer: int, window: int, dtype, rngs: nnx.Rngs):
        d, self.n_head, self.head_dim, self.window = cfg.model_dim, cfg.n_head, cfg.head_dim, window
        init = _uniform(math.sqrt(3.0) * d**-0.5)  # uniform with std d^-0.5
        self.c_q, self.c_k, self.c_v = (_linear(d, d, init, dtype, rngs) for _ in range(3))
        self.c_proj = _linear(d, d, nnx.initializers.zeros, dtype, rngs)  # zero init: blocks start as identity
        self.qk_norm = cfg.qk_norm
        if has_value_embedding(layer, cfg):
            self.value_embed = _embed(cfg.vocab_size, d, init, dtype, rngs)
            self.ve_gate = _linear(VE_GATE_CHANNELS, self.n_head, nnx.initializers.zeros, dtype, rngs)
        else:
            self.value_embed, self.ve_gate = None, None

    def __call__(self, x: jax.Array, idx: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
        B, T, _ = x.shape
        heads = lambda t: t.reshape(B, T, self.n_head, self.head_dim)  # noqa: E731
        q, k, v = heads(self.c_q(x)), heads(self.c_k(x)), heads(self.c_v(x))  # (B, T, N, H)
        if self.value_embed is not None:
            gate = 2.0 * jax.nn.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, N), 1 at init
            v = v + gate[..., None] * heads(self.value_embed(idx))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        y = attention(q, k, v, self.window)  # (B, T, N, H)
        return self.c_proj(y.reshape(B, T, -1))


class MLP(nnx.Module):
    def __init__(self, cfg: GPTConfig, dtype, rngs: nnx.Rngs):
        d, hidden, init = cfg.model_dim, mlp_hidden(cfg), _uniform(math.sqrt(3.0) * cfg.model_dim**-0.5)
        self.activation = cfg.mlp
        self.c_fc = _linear(d, hidden, init, dtype, rngs)
        self.c_gate = _linear(d, hidden, init, dtype, rngs) if cfg.mlp == "swiglu" else None
        self.c_proj = _linear(hidden, d, nnx.initializers.zeros, dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.c_fc(x)  # (B, T, hidden)
        if self.activation == "relu2":
            h = jnp.square(jax.nn.relu(h))
        elif self.activation == "gelu":
            h = jax.nn.gelu(h)
        else:  # swiglu
            h = jax.nn.silu(self.c_gate(x)) * h
        return self.c_proj(h)


class Block(nnx.Module):
    def __init__(self, cfg: GPTConfig, layer: int, window: int, dtype, rngs: nnx.Rngs):
        self.attn = CausalSelfAttention(cfg, layer, window, dtype, rngs)
        self.mlp = MLP(cfg, dtype, rngs)
        self.sandwich = cfg.norm == "sandwich"

    def out_norm(self, y: jax.Array) -> jax.Array:
        # Weightless, so a sandwich costs no parameters: it only rescales a sublayer's output to unit RMS.
        return rms_norm(y) if self.sandwich else y

    def __call__(self, x, idx, cos, sin):
        x = x + self.out_norm(self.attn(rms_norm(x), idx, cos, sin))
        return x + self.out_norm(self.mlp(rms_norm(x)))


class GPT(nnx.Module):
    def __init__(self, cfg: GPTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, dtype
        d, v = cfg.model_dim, cfg.vocab_size
        # The input side is normalized, so any scale works there; tied, the matrix starts as the output layer does
        # (near-uniform predictions) and the optimizer treats it as the output layer (model.optim.param_group).
        self.wte = _embed(v, d, nnx.initializers.normal(0.001 if cfg.tie_embeddings else 1.0), dtype, rngs)
        self.blocks = nnx.List([Block(cfg, i, w, dtype, rngs) for i, w in enumerate(window_sizes(cfg))])
        self.lm_head = None if cfg.tie_embeddings else _linear(d, v, nnx.initializers.normal(0.001), dtype, rngs)
        if cfg.mix_scalars:
            self.resid_lambdas = nnx.Param(jnp.ones((cfg.depth,), jnp.float32))
            self.x0_lambdas = nnx.Param(jnp.full((cfg.depth,), 0.1, jnp.float32))
        else:
            self.resid_lambdas, self.x0_lambdas = None, None

    def hidden(self, idx: jax.Array) -> jax.Array:
        """Token ids (B, T) -> the normalized last hidden state (B, T, D) that the output layer reads."""
        T = idx.shape[1]
        cos, sin = rotary_tables(T, self.cfg.head_dim, self.cfg.rope_base)
        x = x0 = rms_norm(self.wte(idx))  # (B, T, D)
        for i, block in enumerate(self.blocks):
            if self.resid_lambdas is not None:
                x = self.resid_lambdas[i].astype(x.dtype) * x + self.x0_lambdas[i].astype(x.dtype) * x0
            x = block(x, idx, cos, sin)
        return rms_norm(x)

    def head_weight(self) -> jax.Array:
        """The output layer's (D, V) matrix: the token embedding's transpose when tied."""
        return self.wte.embedding[...].T if self.lm_head is None else self.lm_head.kernel[...]

    def __call__(self, idx: jax.Array) -> jax.Array:
        """Token ids (B, T) -> logits (B, T, V) in float32, soft-capped unless cfg.softcap is None."""
        return logits(self.hidden(idx), self.head_weight(), self.cfg.softcap)[0]  # (B, T, V)


def token_losses(model: GPT, tokens: jax.Array) -> jax.Array:
    """Cross-entropy in nats of predicting tokens[:, 1:] from tokens[:, :-1]: (B, T+1) -> (B, T).

    The same as the cross-entropy of `model(tokens[:, :-1])`'s logits, computed by model.head without holding
    them all at once."""
    x = model.hidden(tokens[:, :-1])  # (B, T, D)
    B, T, D = x.shape
    losses = head_losses(x.reshape(B * T, D), model.head_weight(), tokens[:, 1:].reshape(B * T), model.cfg.softcap)
    return losses.reshape(B, T)
