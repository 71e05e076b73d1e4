"""A small training script for trainer=script: a two-layer MLP fitting a noisy sine with NumPy, in about a second.

Its hyperparameters are the UPPER_CASE constants below, as autoresearch's train.py has them; jaxhpo sets them per
trial in a copy of this file. It prints its result in autoresearch's `name: value` format.

    python examples/toy/train.py        # one run with the values below
    python -m jaxhpo +method=tpe trainer=script trainer.path=examples/toy/train.py trainer.metric=val_loss \
        --config-dir examples/toy space=toy
"""

import time

import numpy as np

LEARNING_RATE = 0.01
HIDDEN = 16
STEPS = 300
WEIGHT_DECAY = 0.0
ACTIVATION = "tanh"
SEED = 0

t0 = time.time()
rng = np.random.default_rng(SEED)
x = rng.uniform(-3, 3, (512, 1))
y = np.sin(x) + 0.1 * rng.standard_normal(x.shape)
x_val = np.linspace(-3, 3, 256)[:, None]
y_val = np.sin(x_val)
w1, b1 = rng.standard_normal((1, HIDDEN)), np.zeros(HIDDEN)
w2, b2 = rng.standard_normal((HIDDEN, 1)) / np.sqrt(HIDDEN), np.zeros(1)
act, dact = {"tanh": (np.tanh, lambda h: 1 - np.tanh(h) ** 2),
             "relu": (lambda h: np.maximum(h, 0), lambda h: (h > 0).astype(float))}[ACTIVATION]
for step in range(STEPS):
    h = x @ w1 + b1
    out = act(h) @ w2 + b2
    g = 2 * (out - y) / len(x)  # d loss / d out
    gw2, gb2 = act(h).T @ g, g.sum(0)
    gh = (g @ w2.T) * dact(h)
    gw1, gb1 = x.T @ gh, gh.sum(0)
    for p, gp in ((w1, gw1), (b1, gb1), (w2, gw2), (b2, gb2)):
        p -= LEARNING_RATE * (gp + WEIGHT_DECAY * p)
val_loss = float(np.mean((act(x_val @ w1 + b1) @ w2 + b2 - y_val) ** 2))
print(f"training_seconds: {time.time() - t0:.3f}")
print(f"val_loss: {val_loss:.6f}")
