"""The optimizer: who owns which parameter, the time schedule, hyperparameters kept out of the program."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
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


@pytest.mark.parametrize("muon", ["autoresearch", "optax"])
def test_one_step_is_autoresearchs_formula_for_every_group(muon):
    # Hand-computed from autoresearch's setup_optimizer and its fused AdamW / Muon steps, at a point of the run
    # where warmdown and weight decay are both partway (progress 0.7 of a 0.5 warmdown to 10 %).
    from optax.contrib import scale_by_muon

    from model.optim import muon_momentum
    from tests.test_muon import ref_normuon, ref_polar_express

    cfg = OptimConfig(weight_decay=0.3, final_lr_frac=0.1, muon=muon)
    progress = 0.7
    lrm = (1 - progress) / 0.5 * 1 + (1 - (1 - progress) / 0.5) * 0.1
    wd = cfg.weight_decay * (1 - progress)
    _, params = nnx.split(GPT(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    rng = np.random.default_rng(0)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    tx = build_optimizer(cfg, CFG.model_dim)
    updates, _ = tx.update(grads, tx.init(params), params, progress=jnp.float32(progress))
    got = dict(zip([jax.tree_util.keystr(k) for k, _ in leaves], jax.tree.leaves(updates)))
    labels = labelled()
    width_scale = (CFG.model_dim / 768) ** -0.5
    adam_lr = {"embedding": cfg.embedding_lr * width_scale, "unembedding": cfg.unembedding_lr * width_scale,
               "resid_scalar": cfg.scalar_lr * 0.01, "x0_scalar": cfg.scalar_lr}  # fmt: skip
    for (path, p), g in zip(leaves, jax.tree.leaves(grads)):
        key, p, g = jax.tree_util.keystr(path), np.asarray(p, np.float64), np.asarray(g, np.float64)
        if labels[key] == "matrix":
            if muon == "autoresearch":  # momentum direction ∝ g at step 1, then Polar Express and NorMuon
                direction = ref_normuon(ref_polar_express(g.T), None)[0].T
            else:  # optax's Muon, the library's own output
                muon_tx = scale_by_muon(beta=float(muon_momentum(0)),
                                        weight_dimension_numbers=optax.contrib.MuonDimensionNumbers(0, 1))  # fmt: skip
                direction = np.asarray(muon_tx.update(g.astype(np.float32), muon_tx.init(g))[0], np.float64)
            lr = cfg.matrix_lr * lrm * max(1.0, p.shape[1] / p.shape[0]) ** 0.5  # (in, out): out/in = rows/cols
            expected = -(lr * direction + lr * wd * p * (direction * p >= 0))  # the decay at the same lr
        else:  # AdamW's first step: bias-corrected moments are g and g², no weight decay
            expected = -adam_lr[labels[key]] * lrm * g / (np.abs(g) + 1e-10)
        np.testing.assert_allclose(np.asarray(got[key]), expected, rtol=2e-4, atol=1e-7, err_msg=key)


def test_bfloat16_embedding_storage_rounds_the_embeddings_only():
    _, params = nnx.split(GPT(CFG, rngs=nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(1)
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    new = {}
    for dtype in ("float32", "bfloat16"):
        tx = build_optimizer(OptimConfig(embedding_dtype=dtype), CFG.model_dim)
        updates, _ = tx.update(grads, tx.init(params), params, progress=jnp.float32(0.2))
        new[dtype] = optax.apply_updates(params, updates)
    labels = labelled()
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(new["float32"])[0], jax.tree.leaves(new["bfloat16"])):
        a, b = np.asarray(a), np.asarray(b)
        if labels[jax.tree_util.keystr(path)] == "embedding":
            # the float32 step rounded to bfloat16 (up to float32's rounding of p + (q - p))
            np.testing.assert_allclose(b, a.astype(jnp.bfloat16).astype(np.float32), rtol=1e-6, atol=0)
            assert np.abs(a - b).max() > 1e-4
        else:
            assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="optim.embedding_dtype"):
        build_optimizer(OptimConfig(embedding_dtype="fp8"), CFG.model_dim)
