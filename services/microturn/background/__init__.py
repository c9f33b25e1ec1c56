"""The background model service: delegations in, streamed updates out.

Backends: ``planner`` (offline, deterministic, the default) and ``openai`` (any OpenAI-compatible
chat-completions endpoint with streaming and tool calling). See docs/BACKGROUND_AND_TOOLS.md.
"""

from microturn.background.backend import Backend, DelegationContext, DelegationFailed
from microturn.background.openai_backend import OpenAIBackend
from microturn.background.planner import PlannerBackend
from microturn.background.service import BackgroundService, make_backend

__all__ = [
    "Backend",
    "BackgroundService",
    "DelegationContext",
    "DelegationFailed",
    "OpenAIBackend",
    "PlannerBackend",
    "make_backend",
]
