"""Chat LLMs for the study: an OpenAI-compatible client and the embedded SmolLM2 server.

    from jaxhpo.llm import LLMConfig, extract_object, llm_session

    with llm_session(LLMConfig()) as llm:              # starts SmolLM2 on a free loopback port, stops it after
        reply = llm.chat([{"role": "user", "content": "..."}], schema=SCHEMA)
        config, repairs = extract_object(reply.text)   # then clamp numbers to the space: grammars do not
"""

from jaxhpo.llm.client import TEXT, Completion, LLMClient, LLMConfig, LLMError, as_llm_config
from jaxhpo.llm.prompt import extract_object
from jaxhpo.llm.server import LocalServer, free_port, llm_session, smollm2_path

__all__ = [
    "TEXT",
    "Completion",
    "LLMClient",
    "LLMConfig",
    "LLMError",
    "LocalServer",
    "as_llm_config",
    "extract_object",
    "free_port",
    "llm_session",
    "smollm2_path",
]
