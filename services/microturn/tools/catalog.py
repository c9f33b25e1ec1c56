"""The built-in tools, configured from settings. Building the catalog is cheap (the embedding model
loads on first use), so the background service uses it too, for tool descriptions and schemas."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from microturn.config import ToolsSettings
from microturn.tools.calculator import Limits, calculator_tool
from microturn.tools.clock import clock_tool
from microturn.tools.knowledge import CorpusLimits, KnowledgeIndex, knowledge_tool
from microturn.tools.registry import ToolRegistry
from microturn.tools.timers import timer_tool
from microturn.tools.ui_card import ui_card_tool


def knowledge_index(settings: ToolsSettings) -> KnowledgeIndex:
    dirs: list[Path] = [d for d in (settings.project_docs_dir, settings.knowledge_dir) if d is not None]
    limits = CorpusLimits(
        settings.knowledge_max_files, settings.knowledge_max_file_bytes, settings.knowledge_chunk_chars
    )
    return KnowledgeIndex(dirs, limits)


def build_registry(settings: ToolsSettings, index: KnowledgeIndex | None = None) -> ToolRegistry:
    limits = Limits(
        max_chars=settings.calculator_max_chars,
        max_int_bits=settings.calculator_max_int_bits,
        max_exponent=settings.calculator_max_exponent,
    )
    tools = [
        calculator_tool(limits),
        clock_tool(),
        timer_tool(settings.max_timer_s),
        knowledge_tool(index or knowledge_index(settings)),
        ui_card_tool(),
    ]
    unknown = set(settings.timeout_ms) - {t.name for t in tools}
    if unknown:
        raise ValueError(f"tools.timeout_ms names unknown tools: {', '.join(sorted(unknown))}")
    return ToolRegistry(
        dataclasses.replace(t, timeout_ms=settings.timeout_ms[t.name]) if t.name in settings.timeout_ms else t
        for t in tools
    )
