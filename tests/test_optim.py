"""The optimizer: who owns which parameter, the time schedule, hyperparameters kept out of the program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from model.gpt import GPT, GPTConfig, token_losses
from model.optim import OptimConfig, build_optimizer, lr_multiplier, muon_momentum, param_groups

CFG = GPTConfig(depth=2, aspect_ratio=64, head_dim=64, seq_len=32, vocab_size=300)


def labelled():
    _, params = nnx.split(GPT(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    flat = jax.tree_util.tree_flatten_with_path(param_groups(params))[0]
    return {jax.tree_util.keystr(path): label for path, label in flat}


def test_each_parameter_has_the_optimizer_autoresearch_gives_it():
    groups = labelled()
    by_label = {}
    for path, label in groups.items():
        by_label.setdefault(label, []).append(path)
    assert all("blocks" in p and "value_embed" not in p for p in by_label["matrix"])
    # every block matrix (q, k, v, proj, fc, mlp proj, the value-embedding gate) is Muon's
    assert len(by_label["matrix"]) == 2 * 6 + 1  # layer 1 alone has a value embedding (and gate)
    assert sorted(by_label["embedding"]) == sorted(p for p in groups if "wte" in p or "value_embed" in p)
    assert by_label["unembedding"] == [p for p in groups if "lm_head" in p]
    assert by_label["resid_scalar"] == [p for p in groups if "resid_lambdas" in p]
    assert by_label["x0_scalar"] == [p for p in groups if "x0_lambdas" in p]


@pytest.mark.parametrize(
    "progress, expected",
    [(0.0, 0.0), (0.05, 0.5), (0.1, 1.0), (0.4, 1.0), (0.5, 1.0), (0.75, 0.55), (1.0, 0.1)],
)
def test_lr_schedule_warmup_flat_warmdown(progress, expected):
    # warmup 10 %, warmdown the last 50 % down to 10 % of peak
    assert float(lr_multiplier(progress, 0.1, 0.5, 0.1)) == pytest.approx(expected)


def test_no_warmup_starts_at_peak_and_momentum_ramps():
    assert float(lr_multiplier(0.0, 0.0, 0.5, 0.0)) == 1.0
    assert float(muon_momentum(0)) == pytest.approx(0.85)
    assert float(muon_momentum(150)) == pytest.approx(0.90)
    assert float(muon_momentum(1000)) == pytest.approx(0.95)


def _one_update(cfg: OptimConfig, progress: float):
    graphdef, params = nnx.split(GPT(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    tokens = jax.random.randint(jax.random.key(0), (2, 33), 0, 300)
    grads = jax.grad(lambda p: token_losses(nnx.merge(graphdef, p), tokens).mean())(params)
    tx = build_optimizer(cfg, CFG.model_dim)
    updates, _ = tx.update(grads, tx.init(params), params, progress=jnp.float32(progress))
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(updates)[0]}


def test_learning_rates_scale_their_own_groups_only():
    base = _one_update(OptimConfig(), 0.1)
    doubled = _one_update(OptimConfig(unembedding_lr=0.008), 0.1)
    for path in base:
        ratio = 2.0 if "lm_head" in path else 1.0
        np.testing.assert_allclose(doubled[path], ratio * base[path], rtol=1e-5, atol=1e-12)


def test_updates_vanish_at_end_of_warmdown_to_zero():
    end = _one_update(OptimConfig(final_lr_frac=0.0), 1.0)
    assert all(float(jnp.abs(u).max()) == 0.0 for u in end.values())


def test_hyperparameter_values_do_not_change_the_compiled_program():
    """Trials that differ only in learning rates, weight decay or schedule share one compiled step."""
    graphdef, params = nnx.split(GPT(CFG, rngs=nnx.Rngs(0)), nnx.Param)

    def hlo(cfg):
        tx = build_optimizer(cfg, CFG.model_dim)
        step = lambda p, s, g: tx.update(g, s, p, progress=jnp.float32(0.3))  # noqa: E731
        return jax.jit(step).lower(params, tx.init(params), params).as_text()

    other = OptimConfig(embedding_lr=1.1, matrix_lr=0.01, weight_decay=0.0, warmup_ratio=0.2, final_lr_frac=0.1)
    assert hlo(OptimConfig()) == hlo(other)
