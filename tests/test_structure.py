"""The structural menu of the GPT: every option counts its parameters by formula, learns, and trains through the
real trainer with the memory pre-flight; autoresearch's choices stay the defaults."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from model.config import ConfigError, validate
from model.data import DataConfig, load_corpus
from model.gpt import GPT, GPTConfig, flops_per_token, param_count, token_losses
from model.optim import OptimConfig, build_optimizer
from model.train import train
from tests.test_train import tiny_config

SMALL = GPTConfig(depth=3, aspect_ratio=32, head_dim=32, seq_len=32, vocab_size=300)

# One non-default value of every menu option (several for the options with several alternatives).
OPTIONS = {
    "gelu": {"mlp": "gelu"},
    "swiglu": {"mlp": "swiglu", "mlp_ratio": 8 / 3},
    "mlp_ratio": {"mlp_ratio": 2.0},
    "value_embeds_all": {"value_embeds": "all"},
    "value_embeds_none": {"value_embeds": "none"},
    "no_mix_scalars": {"mix_scalars": False},
    "no_qk_norm": {"qk_norm": False},
    "no_softcap": {"softcap": None},
    "softcap_30": {"softcap": 30.0},
    "rope_base": {"rope_base": 500.0},
    "tied": {"tie_embeddings": True},
    "window_L": {"window_pattern": "L"},
    "sandwich": {"norm": "sandwich"},
}


def n_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("name", OPTIONS)
def test_param_count_matches_formula(name):
    cfg = dataclasses.replace(SMALL, **OPTIONS[name])
    assert n_params(GPT(cfg, rngs=nnx.Rngs(0))) == param_count(cfg)


def test_defaults_are_autoresearch_and_options_change_what_they_should():
    d, v = SMALL.model_dim, SMALL.vocab_size
    base = param_count(SMALL)
    count = lambda **kw: param_count(dataclasses.replace(SMALL, **kw))  # noqa: E731
    assert count(tie_embeddings=True) == base - v * d  # no lm_head
    assert count(mix_scalars=False) == base - 2 * SMALL.depth
    assert count(value_embeds="none") < base < count(value_embeds="all")
    assert count(mlp="swiglu", mlp_ratio=8 / 3) == pytest.approx(base, rel=0.01)  # 3 matrices of 8/3: relu2's 2 of 4
    # options without parameters: the count and the FLOPs stay
    for kw in ({"qk_norm": False}, {"softcap": None}, {"rope_base": 500.0}, {"norm": "sandwich"}, {"mlp": "gelu"}):
        assert count(**kw) == base and flops_per_token(dataclasses.replace(SMALL, **kw)) == flops_per_token(SMALL)
    # a tied output layer is still a matrix multiply per token
    assert flops_per_token(dataclasses.replace(SMALL, tie_embeddings=True)) == flops_per_token(SMALL)


def test_softcap_bounds_the_logits_only_when_set():
    tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 300)

    def largest_logit(cap):
        model = GPT(dataclasses.replace(SMALL, softcap=cap), rngs=nnx.Rngs(0))
        model.lm_head.kernel[...] = jax.random.normal(jax.random.key(1), model.lm_head.kernel.shape)  # logits ~ 10
        return float(jnp.abs(model(tokens)).max())

    assert largest_logit(None) > 5.0
    assert largest_logit(2.0) <= 2.0 and largest_logit(15.0) <= 15.0


@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_learns_a_batch(name):
    """Every parameter has an optimizer group, gradients reach them, and 25 steps fit a fixed batch."""
    cfg = dataclasses.replace(SMALL, **OPTIONS[name])
    graphdef, params = nnx.split(GPT(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    tx = build_optimizer(OptimConfig(), cfg.model_dim)
    tokens = jax.random.randint(jax.random.key(1), (4, cfg.seq_len + 1), 0, cfg.vocab_size)

    @jax.jit
    def step(params, opt_state, progress):
        loss, grads = jax.value_and_grad(lambda p: token_losses(nnx.merge(graphdef, p), tokens).mean())(params)
        updates, opt_state = tx.update(grads, opt_state, params, progress=progress)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for i in range(25):
        params, opt_state, loss = step(params, opt_state, jnp.float32(i / 25))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[0] == pytest.approx(math.log(cfg.vocab_size), abs=0.5)  # starts near uniform
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    "structure",
    [
        {"mlp": "swiglu", "mlp_ratio": 8 / 3, "value_embeds": "all", "mix_scalars": False, "tie_embeddings": True,
         "norm": "sandwich"},
        {"mlp": "gelu", "value_embeds": "none", "qk_norm": False, "softcap": None, "rope_base": 1000.0,
         "window_pattern": "L"},
    ],
    ids=["swiglu-all-untied-sandwich", "gelu-none-noqk-nocap"],
)
def test_structures_train_through_the_real_trainer_with_the_preflight(structure, tmp_path, data_cache):
    cfg = tiny_config(data_cache, model=structure, max_steps=30, time_budget_s=600.0)
    result = train(cfg, tmp_path)
    assert result["status"] == "ok", result
    assert result["preflight"]["train_peak"] > 0 and result["preflight"]["fits"] is True
    assert result["num_params"] == param_count(cfg.model)
    corpus = load_corpus(DataConfig(cache_dir=data_cache), cfg.model.vocab_size)
    val = np.asarray(corpus.val_tokens[: cfg.model.eval_tokens])
    uniform_bpb = math.log2(cfg.model.vocab_size) * (corpus.token_bytes[val] > 0).sum() / corpus.token_bytes[val].sum()
    assert result["val_bpb"] < 0.7 * uniform_bpb, (result["val_bpb"], uniform_bpb)


@pytest.mark.parametrize(
    "override, key",
    [({"mlp": "tanh"}, "model.mlp"), ({"value_embeds": "some"}, "model.value_embeds"),
     ({"norm": "post"}, "model.norm"), ({"softcap": 0.0}, "model.softcap"), ({"rope_base": 1.0}, "model.rope_base"),
     ({"mlp_ratio": 0.0}, "model.mlp_ratio")],  # fmt: skip
)
def test_an_unknown_menu_option_is_refused_in_one_line(override, key, data_cache):
    with pytest.raises(ConfigError) as err:
        validate(tiny_config(data_cache, model=override))
    assert key in str(err.value) and "\n" not in str(err.value)


def test_structure_ids_name_architectures():
    from jaxhpo import structure

    assert structure.structure_id({}) == structure.structure_id(structure.DEFAULT)
    assert structure.structure_id({"softcap": 15}) == structure.structure_id({})  # 15 is the menu's 15.0
    ids = {structure.structure_id(s) for s in structure.one_change_neighbours({})}
    assert len(ids) == sum(len(o.values) - 1 for o in structure.MENU.values())  # all distinct
    assert structure.structure_id({}) not in ids
    assert structure.changes({}, {"mlp": "swiglu", "softcap": None}) == {"mlp": "swiglu", "softcap": None}


@pytest.mark.parametrize(
    "choices, says",
    [({"activation": "gelu"}, "unknown structure option 'activation'"), ({"mlp": "tanh"}, "mlp=\"tanh\""),
     ({"qk_norm": 1}, "qk_norm=1"), ({"softcap": 7.0}, "softcap=7.0")],  # fmt: skip
)
def test_a_structure_off_the_menu_is_refused_in_one_line(choices, says):
    from jaxhpo import structure

    with pytest.raises(structure.StructureError) as err:
        structure.structure_id(choices)
    assert says in str(err.value) and "\n" not in str(err.value)


def test_every_menu_value_is_a_valid_trainer_config(data_cache):
    from jaxhpo import structure

    for choices in [structure.DEFAULT, *structure.one_change_neighbours({})]:
        model = {key.removeprefix("model."): value for key, value in structure.overrides(choices).items()}
        validate(tiny_config(data_cache, model=model))


def test_a_tied_embedding_learns_as_the_output_layer():
    from model.optim import param_groups

    _, params = nnx.split(GPT(dataclasses.replace(SMALL, tie_embeddings=True), rngs=nnx.Rngs(0)), nnx.Param)
    flat = jax.tree_util.tree_flatten_with_path(param_groups(params))[0]
    labels = {jax.tree_util.keystr(path): label for path, label in flat}
    assert [label for path, label in labels.items() if "wte" in path] == ["unembedding"]
    assert all(label == "embedding" for path, label in labels.items() if "value_embed" in path)
