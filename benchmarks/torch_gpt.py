"""The PyTorch reference for benchmarks/train_throughput.py: jaxhpo's GPT and optimizer, written in PyTorch.

Benchmark-only (`pip install -e '.[bench]'` brings torch); nothing in jaxhpo imports it. Every shape and choice
comes from jaxhpo's own definitions (model.gpt, model.optim, model.muon), so the two compute the same thing at
the same parameter count and FLOPs per token: autoresearch's architecture, with PyTorch's
`scaled_dot_product_attention` and a sliding-window mask where autoresearch calls flash-attention, Muon (Nesterov
momentum, Polar Express, NorMuon) for the block matrices and AdamW for the rest. Only autoresearch's structure
(model.gpt's defaults for the structural menu) is built.

Shapes: B batch, T sequence, D model width, N heads, H head width, V vocabulary. Linear weights are PyTorch's
(out, in).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.gpt import VE_GATE_CHANNELS, GPTConfig, has_value_embedding, mlp_hidden, window_sizes
from model.muon import NORM_MARGIN, NORMUON_BETA2, POLAR_EXPRESS_COEFFS
from model.optim import (
    ADAM_BETAS,
    ADAM_EPS,
    MUON_MOMENTUM_END,
    REFERENCE_WIDTH,
    RESID_SCALAR_LR_FACTOR,
    OptimConfig,
)

EPS = 1e-6  # model.gpt.rms_norm's


def _require_reference_structure(cfg: GPTConfig) -> None:
    fields = ("mlp", "mlp_ratio", "value_embeds", "mix_scalars", "qk_norm", "softcap", "rope_base", "tie_embeddings",
              "norm")  # fmt: skip
    changed = [f for f in fields if getattr(cfg, f) != getattr(GPTConfig(), f)]
    if changed:
        raise ValueError(f"the PyTorch reference builds autoresearch's structure only; this model changes "
                         f"{', '.join(changed)}")  # fmt: skip


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),), eps=EPS)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(B, T, N, H) rotated by position, first and second halves of each head paired (model.gpt.apply_rotary)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)


def _uniform_(w: torch.Tensor, d: int) -> None:
    bound = math.sqrt(3.0) * d**-0.5
    nn.init.uniform_(w, -bound, bound)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int, window: int):
        super().__init__()
        d, self.n_head, self.head_dim = cfg.model_dim, cfg.n_head, cfg.head_dim
        self.c_q, self.c_k, self.c_v, self.c_proj = (nn.Linear(d, d, bias=False) for _ in range(4))
        for lin in (self.c_q, self.c_k, self.c_v):
            _uniform_(lin.weight, d)
        nn.init.zeros_(self.c_proj.weight)
        self.value_embed = self.ve_gate = None
        if has_value_embedding(layer, cfg):
            self.value_embed = nn.Embedding(cfg.vocab_size, d)
            _uniform_(self.value_embed.weight, d)
            self.ve_gate = nn.Linear(VE_GATE_CHANNELS, self.n_head, bias=False)
            nn.init.zeros_(self.ve_gate.weight)
        # Query i sees keys i-window..i, as flash-attention's window_size=(window, 0); a full window is causal.
        T = cfg.seq_len
        if window < T:
            i = torch.arange(T)
            self.register_buffer("mask", (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] <= window), False)
        else:
            self.mask = None

    def forward(self, x, idx, cos, sin):
        B, T, D = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, self.head_dim) for lin in (self.c_q, self.c_k, self.c_v))
        if self.value_embed is not None:
            gate = 2.0 * torch.sigmoid(self.ve_gate(x[..., :VE_GATE_CHANNELS]))  # (B, T, N)
            v = v + gate[..., None] * self.value_embed(idx).view(B, T, self.n_head, self.head_dim)
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, N, T, H)
        if self.mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        d, hidden = cfg.model_dim, mlp_hidden(cfg)
        self.c_fc, self.c_proj = nn.Linear(d, hidden, bias=False), nn.Linear(hidden, d, bias=False)
        _uniform_(self.c_fc.weight, d)
        nn.init.zeros_(self.c_proj.weight)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int, window: int):
        super().__init__()
        self.attn, self.mlp = Attention(cfg, layer, window), MLP(cfg)

    def forward(self, x, idx, cos, sin):
        x = x + self.attn(rms_norm(x), idx, cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    """model.gpt.GPT in PyTorch; `forward(tokens (B, T+1))` returns the mean next-token cross-entropy."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        _require_reference_structure(cfg)
        d, v = cfg.model_dim, cfg.vocab_size
        self.softcap = cfg.softcap
        self.wte = nn.Embedding(v, d)
        nn.init.normal_(self.wte.weight, std=1.0)
        self.blocks = nn.ModuleList(Block(cfg, i, w) for i, w in enumerate(window_sizes(cfg)))
        self.lm_head = nn.Linear(d, v, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        self.resid_lambdas = nn.Parameter(torch.ones(cfg.depth))
        self.x0_lambdas = nn.Parameter(torch.full((cfg.depth,), 0.1))
        inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
        angles = torch.arange(cfg.seq_len, dtype=torch.float32)[:, None] * inv_freq[None, :]  # (T, H/2)
        self.register_buffer("cos", angles.cos()[None, :, None, :], False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        idx, targets = tokens[:, :-1], tokens[:, 1:]
        x = x0 = rms_norm(self.wte(idx))  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0, idx, self.cos, self.sin)
        logits = self.lm_head(rms_norm(x)).float()  # (B, T, V)
        logits = self.softcap * torch.tanh(logits / self.softcap)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def polar_express(g: torch.Tensor) -> torch.Tensor:
    """model.muon.polar_express in PyTorch."""
    x = g / (g.norm() * NORM_MARGIN + 1e-6)
    tall = x.size(0) > x.size(1)
    for a, b, c in POLAR_EXPRESS_COEFFS:
        gram = x.T @ x if tall else x @ x.T
        poly = b * gram + c * (gram @ gram)
        x = a * x + (x @ poly if tall else poly @ x)
    return x


def muon_update(p, grad, momentum, second, lr, wd, beta: float = MUON_MOMENTUM_END):
    """One Muon step on a weight (out, in): Nesterov momentum, Polar Express, NorMuon, cautious weight decay."""
    momentum.lerp_(grad, 1 - beta)
    u = polar_express(grad.lerp(momentum, beta))
    axis = -1 if u.size(0) >= u.size(1) else -2  # one statistic per output row (per input column when wide)
    mean_sq = u.square().mean(axis, keepdim=True)
    second.lerp_(mean_sq, 1 - NORMUON_BETA2)
    scale = second.clamp_min(1e-10).rsqrt()
    n = u.size(axis)
    u = u * scale * ((mean_sq.sum() * n).sqrt() / (mean_sq * n * scale.square()).sum().sqrt().clamp_min(1e-10))
    lr = lr * max(1.0, u.size(0) / u.size(1)) ** 0.5
    p.sub_(lr * (u + wd * p * (u * p >= 0)))


def adam_update(p, grad, m, v, step, lr):
    m.lerp_(grad, 1 - ADAM_BETAS[0])
    v.lerp_(grad.square(), 1 - ADAM_BETAS[1])
    m_hat, v_hat = m / (1 - ADAM_BETAS[0] ** step), v / (1 - ADAM_BETAS[1] ** step)
    p.sub_(lr * m_hat / (v_hat.sqrt() + ADAM_EPS))


class Optimizer:
    """Muon for the blocks' matrices, AdamW for the rest, as model.optim.build_optimizer (constant learning rates:
    the schedule's multiplier is a scalar and costs nothing). Every number is a 0-d tensor, so that torch.compile
    compiles one program per shape, not one per value."""

    def __init__(self, model: GPT, cfg: OptimConfig, compiled: bool):
        width_scale = (model.wte.weight.size(1) / REFERENCE_WIDTH) ** -0.5
        scalar = torch.tensor
        lrs = {"lm_head": cfg.unembedding_lr * width_scale, "resid_lambdas": cfg.scalar_lr * RESID_SCALAR_LR_FACTOR,
               "x0_lambdas": cfg.scalar_lr}  # fmt: skip
        self.muon, self.adam, self.step = [], [], torch.tensor(0.0)
        for name, p in model.named_parameters():
            if name.startswith("blocks") and p.ndim == 2 and "value_embed" not in name:
                axis = -1 if p.size(0) >= p.size(1) else -2
                second = torch.zeros_like(p.mean(axis, keepdim=True))
                self.muon.append((p, torch.zeros_like(p), second, scalar(cfg.matrix_lr), scalar(cfg.weight_decay)))
            else:
                lr = lrs.get(name.split(".")[0], cfg.embedding_lr * width_scale)
                self.adam.append((p, torch.zeros_like(p), torch.zeros_like(p), scalar(lr)))
        self._muon = torch.compile(muon_update, dynamic=False) if compiled else muon_update
        self._adam = torch.compile(adam_update, dynamic=False) if compiled else adam_update

    @torch.no_grad()
    def update(self) -> None:
        self.step += 1.0
        for p, m, second, lr, wd in self.muon:
            self._muon(p, p.grad, m, second, lr, wd)
        for p, m, v, lr in self.adam:
            self._adam(p, p.grad, m, v, self.step, lr)


def make_step(cfg: GPTConfig, optim: OptimConfig, compiled: bool, seed: int = 0):
    """(the model, step(batch (A, B, T+1) int64) -> mean loss as a float): one optimizer step over A micro-batches,
    their gradients accumulated (autoresearch's loop); `compiled` wraps the model and updates in torch.compile."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    forward = torch.compile(model, dynamic=False) if compiled else model
    opt = Optimizer(model, optim, compiled)

    def step(batch: torch.Tensor) -> float:
        total = 0.0
        for tokens in batch:
            loss = forward(tokens) / batch.size(0)
            loss.backward()
            total += loss.item()
        opt.update()
        model.zero_grad(set_to_none=True)
        return total

    return model, step
