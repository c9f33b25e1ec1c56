"""Tool execution: a registry of JSON-schema'd tools, each with a timeout and size limits, served on
the NATS work queue ``mt.tool.call`` and over the ``Tools`` gRPC service.

Built-in tools: ``calculator`` (AST-walking, bounded), ``clock`` (time zones), ``timer`` (durable,
fires as a background update), ``knowledge_search`` (packaged sentence embeddings over local docs)
and ``ui_card``. See docs/BACKGROUND_AND_TOOLS.md for their limits.
"""

from microturn.tools.catalog import build_registry, knowledge_index
from microturn.tools.client import ToolClient, call_id_for
from microturn.tools.executor import ToolExecutor
from microturn.tools.registry import Tool, ToolContext, ToolFailed, ToolRegistry

__all__ = [
    "Tool",
    "ToolClient",
    "ToolContext",
    "ToolExecutor",
    "ToolFailed",
    "ToolRegistry",
    "build_registry",
    "call_id_for",
    "knowledge_index",
]
