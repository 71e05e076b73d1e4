"""Chat LLMs for the study: an OpenAI-compatible client and the embedded SmolLM2 server.

    from jaxhpo.llm import LLMConfig, llm_session, parse_json

    with llm_session(LLMConfig()) as llm:              # starts SmolLM2 on a free loopback port, stops it after
        reply = llm.chat([{"role": "user", "content": "..."}], schema=SCHEMA)
        config = parse_json(reply.text)                # then clamp numbers to the space: grammars do not
"""

from jaxhpo.llm.client import Completion, LLMClient, LLMConfig, LLMError, as_llm_config, parse_json
from jaxhpo.llm.server import LocalServer, free_port, llm_session, smollm2_path

__all__ = [
    "Completion",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "LocalServer",
    "as_llm_config",
    "free_port",
    "llm_session",
    "parse_json",
    "smollm2_path",
]
