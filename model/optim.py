"""autoresearch's optimizer, composed from optax pieces.

Muon (orthogonalized Nesterov momentum, momentum ramped 0.85 -> 0.95 over the first 300 steps) for the 2-D
matrices of the blocks, its learning rate times sqrt(max(1, fan_out / fan_in)), with cautious weight decay at that
same learning rate that decays linearly to 0 over the run; `muon="autoresearch"` (the default) orthogonalizes
with Polar Express and normalizes rows with NorMuon as autoresearch does (model.muon), `muon="optax"` with optax's
Newton-Schulz Muon (`optax.contrib.scale_by_muon`, one fixed set of coefficients, no row normalization). AdamW
(betas 0.8, 0.95) for the embeddings, unembedding, value embeddings and per-layer scalars, their learning
rates scaled by (model_dim / 768) ** -0.5. One learning-rate multiplier, a function of the fraction of the
*time* budget used, scales every group: warmup, flat, warmdown to FINAL_LR_FRAC.

Every tunable number (learning rates, weight decay, schedule ratios) lives in the optimizer *state* as an
array, not in the traced program, so trials that differ only in these values share one compiled train step.
The time progress in [0, 1] reaches the optimizer as an extra argument: `tx.update(g, s, p, progress=p01)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from model.muon import scale_by_normuon, scale_by_polar_express, stacked_by_shape

ADAM_BETAS = (0.8, 0.95)
X0_ADAM_BETAS = (0.96, 0.95)  # autoresearch gives the x0 mixing scalars a slower first moment
ADAM_EPS = 1e-10
RESID_SCALAR_LR_FACTOR = 0.01  # resid_lambdas learn at 1 % of SCALAR_LR in autoresearch
MUON_MOMENTUM_START, MUON_MOMENTUM_END, MUON_MOMENTUM_STEPS = 0.85, 0.95, 300
REFERENCE_WIDTH = 768  # AdamW learning rates were tuned at this width
MUON_VARIANTS = ("autoresearch", "optax")
EMBEDDING_DTYPES = ("float32", "bfloat16")
# The tunable numbers of OptimConfig. Each lives in the optimizer state as an array, so a program that makes the
# state (model.train's initialization) takes them as inputs, and no program holds them as constants.
NUMBERS = ("embedding_lr", "unembedding_lr", "matrix_lr", "scalar_lr", "weight_decay", "warmup_ratio",
           "warmdown_ratio", "final_lr_frac")  # fmt: skip


@dataclass
class OptimConfig:
    """The optimizer's eight hyperparameters (autoresearch's defaults), and which Muon runs."""

    embedding_lr: float = 0.6
    unembedding_lr: float = 0.004
    matrix_lr: float = 0.04
    scalar_lr: float = 0.5
    weight_decay: float = 0.2
    warmup_ratio: float = 0.0
    warmdown_ratio: float = 0.5
    final_lr_frac: float = 0.0
    muon: str = "autoresearch"  # autoresearch: Polar Express + NorMuon; optax: optax's Newton-Schulz Muon
    # Storage of the token and value embeddings: float32 (jaxhpo's), or rounded to bfloat16 after every step as
    # autoresearch casts them on its GPU (whose Adam moments are then bfloat16 too; here they stay float32).
    embedding_dtype: str = "float32"


class ScheduleState(NamedTuple):
    """A group's peak learning rate, weight decay and the shared schedule, as float32 scalars."""

    peak_lr: jax.Array
    weight_decay: jax.Array
    warmup_ratio: jax.Array
    warmdown_ratio: jax.Array
    final_lr_frac: jax.Array


def lr_multiplier(progress, warmup_ratio, warmdown_ratio, final_lr_frac):
    """autoresearch's schedule: linear warmup, flat, linear warmdown to final_lr_frac; progress in [0, 1]."""
    warm = progress / jnp.maximum(warmup_ratio, 1e-12)
    cooldown = (1.0 - progress) / jnp.maximum(warmdown_ratio, 1e-12)
    down = cooldown + (1.0 - cooldown) * final_lr_frac
    return jnp.where(progress < warmup_ratio, warm, jnp.where(progress < 1.0 - warmdown_ratio, 1.0, down))


def scale_by_time_schedule(
    peak_lr: float, cfg: OptimConfig, weight_decay: float = 0.0, lr_scale: Callable[[jax.Array], float] | None = None
) -> optax.GradientTransformationExtraArgs:
    """Apply -lr(progress) × lr_scale(param) × (update + cautious decoupled weight decay(progress)).

    The weight decay decays linearly to 0 over the run and is "cautious": it only acts on coordinates where
    the update and the parameter agree in sign, as in autoresearch's Muon. `lr_scale` (a function of the
    parameter's shape) scales the update and the decay alike, as autoresearch folds it into the learning rate.
    """

    def init_fn(params):
        del params
        f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
        return ScheduleState(
            f(peak_lr), f(weight_decay), f(cfg.warmup_ratio), f(cfg.warmdown_ratio), f(cfg.final_lr_frac)
        )

    def update_fn(updates, state, params=None, *, progress, **extra_args):
        del extra_args
        lr = state.peak_lr * lr_multiplier(progress, state.warmup_ratio, state.warmdown_ratio, state.final_lr_frac)
        wd = state.weight_decay * (1.0 - progress)

        def step(u, p):
            decay = wd * p * (u * p >= 0)
            scale = lr_scale(p) if lr_scale is not None else 1.0
            return (-lr * scale * (u + decay)).astype(u.dtype)

        return jax.tree.map(step, updates, params), state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def stored_as(dtype) -> optax.GradientTransformation:
    """Updates that leave each parameter at what `dtype` storage would hold: round(p + u) - p. The parameters stay
    float32 arrays, so the rest of the step is unchanged; what differs is exactly the rounding of storage."""

    def update_fn(updates, state, params=None):
        new = jax.tree.map(lambda u, p: (p + u).astype(dtype).astype(p.dtype) - p, updates, params)
        return new, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def muon_momentum(count):
    """Muon's momentum, ramped linearly over the first optimizer steps."""
    frac = jnp.minimum(count / MUON_MOMENTUM_STEPS, 1.0)
    return (1.0 - frac) * MUON_MOMENTUM_START + frac * MUON_MOMENTUM_END


def aspect_scale(p: jax.Array) -> float:
    """Muon's learning-rate factor: its orthogonalized update has unit spectral norm, and matrices with more
    outputs than inputs get sqrt(fan_out / fan_in) more (flax kernels are (fan_in, fan_out), alone or stacked)."""
    return max(1.0, p.shape[-1] / p.shape[-2]) ** 0.5


def _kernel_dims(updates):
    # Flax kernels are (fan_in, fan_out): reduce over axis 0, output along axis 1.
    return jax.tree.map(lambda _: optax.contrib.MuonDimensionNumbers(0, 1), updates)


def _names(path: tuple) -> set:
    return {getattr(k, "key", getattr(k, "name", k)) for k in path}


def param_group(path: tuple, leaf: jax.Array, tied: bool = False) -> str:
    """Which optimizer group owns a parameter, from its path in the model; `tied`: the token embedding is also the
    output layer, and learns as one (a step of embedding_lr there would swamp the logits)."""
    names = _names(path)
    if "wte" in names and tied:
        return "unembedding"
    if "value_embed" in names or "wte" in names:
        return "embedding"
    if "lm_head" in names:
        return "unembedding"
    if "resid_lambdas" in names:
        return "resid_scalar"
    if "x0_lambdas" in names:
        return "x0_scalar"
    if "blocks" in names and leaf.ndim == 2:
        return "matrix"
    raise ValueError(f"no optimizer group for parameter {jax.tree_util.keystr(path)} with shape {leaf.shape}")


def param_groups(params):
    """The pytree of group labels for `params`."""
    tied = not any("lm_head" in _names(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0])
    return jax.tree_util.tree_map_with_path(lambda path, leaf: param_group(path, leaf, tied), params)


def build_optimizer(cfg: OptimConfig, model_dim: int) -> optax.GradientTransformationExtraArgs:
    """The full optimizer: Muon for block matrices, AdamW for the rest; call update(..., progress=p)."""
    width_scale = (model_dim / REFERENCE_WIDTH) ** -0.5

    def adam(lr, betas=ADAM_BETAS):
        return optax.chain(optax.scale_by_adam(*betas, eps=ADAM_EPS), scale_by_time_schedule(lr, cfg))

    if cfg.embedding_dtype not in EMBEDDING_DTYPES:
        raise ValueError(f"unknown optim.embedding_dtype={cfg.embedding_dtype!r}; choose one of: "
                         f"{', '.join(EMBEDDING_DTYPES)}")  # fmt: skip
    embedding = adam(cfg.embedding_lr * width_scale)
    if cfg.embedding_dtype == "bfloat16":
        embedding = optax.chain(embedding, stored_as(jnp.bfloat16))

    if cfg.muon == "autoresearch":
        direction = optax.chain(
            optax.inject_hyperparams(optax.trace, static_args=("nesterov",))(decay=muon_momentum, nesterov=True),
            scale_by_polar_express(),
            scale_by_normuon(),
        )
    elif cfg.muon == "optax":
        direction = optax.inject_hyperparams(optax.contrib.scale_by_muon, static_args=("weight_dimension_numbers",))(
            beta=muon_momentum, weight_dimension_numbers=_kernel_dims
        )
    else:
        raise ValueError(f"unknown optim.muon={cfg.muon!r}; choose one of: {', '.join(MUON_VARIANTS)}")
    muon = optax.chain(
        direction, scale_by_time_schedule(cfg.matrix_lr, cfg, weight_decay=cfg.weight_decay, lr_scale=aspect_scale)
    )
    if cfg.muon == "autoresearch":
        muon = stacked_by_shape(muon)
    groups = {
        "matrix": muon,
        "embedding": embedding,
        "unembedding": adam(cfg.unembedding_lr * width_scale),
        "resid_scalar": adam(cfg.scalar_lr * RESID_SCALAR_LR_FACTOR),
        "x0_scalar": adam(cfg.scalar_lr, X0_ADAM_BETAS),
    }
    return optax.partition(groups, param_groups)
