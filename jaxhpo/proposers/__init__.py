"""Proposers by method name, and `make_proposer` to build one from a method config (hydra_configs/method/)."""

from __future__ import annotations

import inspect
from typing import Any

from jaxhpo.proposers.base import Proposal, Proposer, penalized_values
from jaxhpo.proposers.cmaes import CMAESProposer
from jaxhpo.proposers.random import RandomProposer
from jaxhpo.proposers.tpe import TPEProposer
from jaxhpo.space import Space

PROPOSERS: dict[str, type[Proposer]] = {"random": RandomProposer, "tpe": TPEProposer, "cmaes": CMAESProposer}


def proposer_options(name: str) -> dict[str, Any]:
    """The options a method takes, with their defaults (what hydra_configs/method/<name>.yaml lists)."""
    cls = _lookup(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # after self, space, seed
    return {p.name: p.default for p in params}


def make_proposer(name: str, space: Space, seed: int, **options: Any) -> Proposer:
    """A fresh proposer for method `name`; ValueError (one line) for an unknown method or option."""
    cls = _lookup(name)
    known = proposer_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = f"valid options: {', '.join(known)}" if known else "it takes no options"
        raise ValueError(f"unknown option {unknown[0]!r} for method {name!r}; {valid}")
    return cls(space, seed, **options)


def _lookup(name: str) -> type[Proposer]:
    if name not in PROPOSERS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(PROPOSERS)}")
    return PROPOSERS[name]


__all__ = [
    "PROPOSERS", "Proposal", "Proposer", "CMAESProposer", "RandomProposer", "TPEProposer", "make_proposer",
    "penalized_values", "proposer_options",
]  # fmt: skip
