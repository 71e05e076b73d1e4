"""A small training run for trainer=script and trainer=python: a two-layer MLP fitting a noisy sine with NumPy, in
about a second.

As a script, its hyperparameters are the UPPER_CASE constants below (as autoresearch's train.py has them: jaxhpo sets
them per trial in a copy of this file) and it prints its result in autoresearch's `name: value` format. As a
function, `fit(config, budget)` takes the same names in `config` and returns the metrics.

    python examples/toy/train.py        # one run with the values below
    python -m jaxhpo +method=tpe trainer=script trainer.path=examples/toy/train.py study.metric=val_loss \\
        --config-dir examples/toy space=toy
    python -m jaxhpo +method=tpe trainer=python trainer.target=examples.toy.train:fit study.metric=val_loss \\
        --config-dir examples/toy space=toy_python
"""

import time

import numpy as np

LEARNING_RATE = 0.01
HIDDEN = 16
STEPS = 300
WEIGHT_DECAY = 0.0
ACTIVATION = "tanh"
SEED = 0


def fit(config: dict, budget: dict | None = None) -> dict:
    """Train with `config` (the constants' names; missing ones at the values above); the metrics."""
    c = {**DEFAULTS, **config}
    t0 = time.time()
    rng = np.random.default_rng(c["SEED"])
    x = rng.uniform(-3, 3, (512, 1))
    y = np.sin(x) + 0.1 * rng.standard_normal(x.shape)
    x_val = np.linspace(-3, 3, 256)[:, None]
    w1, b1 = rng.standard_normal((1, c["HIDDEN"])), np.zeros(c["HIDDEN"])
    w2, b2 = rng.standard_normal((c["HIDDEN"], 1)) / np.sqrt(c["HIDDEN"]), np.zeros(1)
    act, dact = {"tanh": (np.tanh, lambda h: 1 - np.tanh(h) ** 2),
                 "relu": (lambda h: np.maximum(h, 0), lambda h: (h > 0).astype(float))}[c["ACTIVATION"]]
    with np.errstate(all="ignore"):  # a learning rate that diverges ends as NaN, which jaxhpo calls diverged
        for _ in range(c["STEPS"]):
            h = x @ w1 + b1
            g = 2 * (act(h) @ w2 + b2 - y) / len(x)  # d loss / d output
            gh = (g @ w2.T) * dact(h)
            for p, gp in ((w1, x.T @ gh), (b1, gh.sum(0)), (w2, act(h).T @ g), (b2, g.sum(0))):
                p -= c["LEARNING_RATE"] * (gp + c["WEIGHT_DECAY"] * p)
        val_loss = float(np.mean((act(x_val @ w1 + b1) @ w2 + b2 - np.sin(x_val)) ** 2))
    return {"training_seconds": round(time.time() - t0, 3), "val_loss": val_loss}


DEFAULTS = {"LEARNING_RATE": LEARNING_RATE, "HIDDEN": HIDDEN, "STEPS": STEPS, "WEIGHT_DECAY": WEIGHT_DECAY,
            "ACTIVATION": ACTIVATION, "SEED": SEED}

if __name__ == "__main__":
    for key, value in fit({}).items():
        print(f"{key}: {value}")
