"""Proposers by method name, and `make_proposer` to build one from a method config (hydra_configs/method/)."""

from __future__ import annotations

import inspect
from typing import Any

from jaxhpo.proposers.agent_code import AgentCodeProposer
from jaxhpo.proposers.base import Proposal, Proposer, penalized_values
from jaxhpo.proposers.centaur import CentaurProposer
from jaxhpo.proposers.cmaes import CMAESProposer
from jaxhpo.proposers.hybrid import HybridProposer
from jaxhpo.proposers.llambo import LLAMBOProposer
from jaxhpo.proposers.llm import LLMProposer
from jaxhpo.proposers.optuna_samplers import OptunaCMAESMethod, OptunaCMAESProposer, OptunaTPEProposer
from jaxhpo.proposers.random import RandomProposer
from jaxhpo.proposers.smac3 import SMACProposer
from jaxhpo.proposers.sobol import SobolProposer
from jaxhpo.proposers.tpe import TPEProposer
from jaxhpo.proposers.warmstart import WarmStart, warmstart_option
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space

PROPOSERS: dict[str, type[Proposer]] = {
    "random": RandomProposer, "tpe": TPEProposer, "cmaes": CMAESProposer, "llm": LLMProposer,
    "centaur": CentaurProposer, "sobol": SobolProposer, "optuna_tpe": OptunaTPEProposer,
    "optuna_cmaes": OptunaCMAESMethod, "smac": SMACProposer, "llambo": LLAMBOProposer,
    "agent_code": AgentCodeProposer, "hybrid": HybridProposer,
}  # fmt: skip

# Constructor arguments that are not user options: the LLM client of proposers with `uses_llm`, and the protocol.
_NOT_OPTIONS = ("llm", "protocol")


def proposer_options(name: str, protocol: ProtocolConfig | None = None) -> dict[str, Any]:
    """The options a method takes, with their defaults (what hydra_configs/method/<name>.yaml lists)."""
    cls = _lookup(name, protocol)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # after self, space, seed
    options = {p.name: p.default for p in params if p.name not in _NOT_OPTIONS}
    return {**options, "warmstart": 0} if cls.supports_warmstart else options


def options_added(name: str, protocol: ProtocolConfig | None = None) -> dict[str, Any]:
    """The options method `name` gained since journals record method options, each with the value a journal
    without it ran with (`Proposer.options_added`; warmstart: 0)."""
    cls = _lookup(name, protocol)
    return {**cls.options_added, "warmstart": 0} if cls.supports_warmstart else dict(cls.options_added)


def resolved_options(name: str, options: dict[str, Any], protocol: ProtocolConfig) -> dict[str, Any]:
    """`options` with each null that the protocol decides (`Proposer.protocol_defaults`) replaced by the protocol's
    value: what the proposer runs with, so that a resume under the same protocol compares like with like."""
    defaults = _lookup(name, protocol).protocol_defaults
    return {k: getattr(protocol, defaults[k]) if v is None and k in defaults else v for k, v in options.items()}


def study_space(name: str, params: dict, protocol: ProtocolConfig | None = None) -> dict[str, dict]:
    """The space definition a study of method `name` searches, given its space file's (`Proposer.study_space`)."""
    return _lookup(name, protocol).study_space(params)


def make_proposer(name: str, space: Space, seed: int, llm: Any = None, protocol: ProtocolConfig | None = None,
                  **options: Any) -> Proposer:  # fmt: skip
    """A fresh proposer for method `name` under `protocol` (None: jaxhpo's); ValueError (one line) for an unknown
    method or option.

    `llm` (an LLMClient, or None) goes to proposers whose class has `uses_llm`, and to the warm start
    (jaxhpo.proposers.warmstart) of those with `supports_warmstart` when their `warmstart` option is above 0."""
    cls = _lookup(name, protocol)
    known = proposer_options(name, protocol)
    unknown = sorted(set(options) - set(known))
    if unknown:
        valid = f"valid options: {', '.join(known)}" if known else "it takes no options"
        raise ValueError(f"unknown option {unknown[0]!r} for method {name!r}; {valid}")
    warmstart = warmstart_option(name, options.pop("warmstart", 0))
    if cls.uses_llm:
        options["llm"] = llm
    proposer = cls(space, seed, protocol=protocol, **options)
    return WarmStart(proposer, warmstart, llm) if warmstart else proposer


def _lookup(name: str, protocol: ProtocolConfig | None) -> type[Proposer]:
    if name not in PROPOSERS:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(PROPOSERS)}")
    if name == "cmaes" and protocol is not None and protocol.cmaes == "optuna":
        return OptunaCMAESProposer
    return PROPOSERS[name]


__all__ = [
    "PROPOSERS", "AgentCodeProposer", "CentaurProposer", "CMAESProposer", "HybridProposer", "LLAMBOProposer",
    "LLMProposer",
    "OptunaCMAESMethod", "OptunaCMAESProposer", "OptunaTPEProposer", "Proposal", "Proposer", "RandomProposer",
    "SMACProposer", "SobolProposer", "TPEProposer", "WarmStart", "make_proposer", "options_added", "penalized_values",
    "proposer_options", "resolved_options", "study_space",
]  # fmt: skip
