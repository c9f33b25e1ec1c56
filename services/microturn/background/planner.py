"""The offline, deterministic planner: the embedded default background backend.

It recognises a handful of request shapes with plain rules, calls the matching tool, and streams
a short answer. In order: timers/reminders, time and date, UI cards, arithmetic, knowledge
questions (via knowledge search). Anything else gets a plain "I can't help with that".
"""

from __future__ import annotations

import re
from datetime import datetime

from microturn.background.backend import DelegationContext, DelegationFailed, ToolCallFailed, card_from_json
from microturn.background.updates import ErrorCode
from microturn.tools.calculator import CONSTANTS, FUNCTIONS
from microturn.tools.clock import city_in

CAPABILITIES = (
    "I can do arithmetic, tell the time and date anywhere, set timers and reminders, "
    "look things up in the knowledge base and show cards"
)

_NUMBER_WORDS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "fifteen": 15, "twenty": 20, "thirty": 30, "forty-five": 45,
    "half an": 0.5, "half a": 0.5,
}  # fmt: skip
_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
}
_DURATION = re.compile(
    r"(\d+(?:\.\d+)?|half an?|an?|one|two|three|four|five|six|seven|eight|nine|ten|fifteen|twenty|thirty"
    r"|forty-five)\s*(seconds?|secs?|minutes?|mins?|hours?|hrs?|[smh])\b",
    re.IGNORECASE,
)
_TIMER = re.compile(r"\b(timer|remind|reminder|alarm|countdown)\b", re.IGNORECASE)
_TIME = re.compile(
    r"\b(what time|the time|time is it|time in|what day|which day|the date|today's date|day of the week|"
    r"what's the date|what is the date|date today|day is it)\b",
    re.IGNORECASE,
)
# "show ... card": a verb, then a card or the screen later on the same line. Two scans, not one
# pattern with ``.*`` between them, which backtracks quadratically over a long request.
_CARD_VERB = re.compile(r"\b(show|display|put up|pin)\b", re.IGNORECASE)
_CARD_NOUN = re.compile(r"\b(card|on (the )?screen)\b", re.IGNORECASE)
_QUESTION = re.compile(
    r"^(what|what's|who|whom|how|why|where|when|which|explain|tell me|describe|define|look up|search)\b",
    re.IGNORECASE,
)
_WORD_OPS = [
    (r"\bsquare root of\b", "sqrt"),
    (r"\bto the power of\b", "**"),
    (r"\bmultiplied by\b", "*"),
    (r"\bdivided by\b", "/"),
    (r"\btimes\b", "*"),
    (r"\bplus\b", "+"),
    (r"\bminus\b", "-"),
    (r"\bover\b", "/"),
    (r"\bmodulo\b|\bmod\b", "%"),
    (r"\bsquared\b", "**2"),
    (r"\bcubed\b", "**3"),
    (r"(?<=\d)\s*x\s*(?=\d)", "*"),
]
_MATH_LEAD = re.compile(
    r"^(please\s+)?(what\s+is|what's|whats|how\s+much\s+is|calculate|compute|evaluate|work\s+out|solve)\s+",
    re.IGNORECASE,
)
_MATH_CHARS = re.compile(r"^[\d\s.+\-*/%^()×÷−,a-z]+$")
_OPERATOR = re.compile(r"[+\-*/%^×÷−]|\b(" + "|".join(FUNCTIONS) + r")\b")


MAX_SECONDS = 10**12  # far past any timer limit: the timer tool refuses it and says its maximum


def wants_card(text: str) -> bool:
    for line in text.split("\n"):
        verb = _CARD_VERB.search(line)
        if verb and _CARD_NOUN.search(line, verb.end()):
            return True
    return False


def parse_seconds(text: str) -> int | None:
    total = 0.0
    for amount, unit in _DURATION.findall(text):
        n = _NUMBER_WORDS.get(amount.lower())
        value = float(amount) if n is None else n
        key = unit.lower().rstrip("s") or "s"
        total += value * _UNITS.get(key, _UNITS.get(key[:3], 1))
    if not total < MAX_SECONDS:  # "999…9 hours" overflows a float to inf
        return MAX_SECONDS
    return round(total) or None


def timer_label(text: str) -> str:
    m = re.search(r"\bremind me (?:in [^,]+? )?to (.+)$", text, re.IGNORECASE) or re.search(
        r"\b(?:called|named|labelled|labeled|for(?! \d)(?! an? )(?! one)(?! half))\s+(.+)$",
        text,
        re.IGNORECASE,
    )
    if not m:
        return ""
    label = _DURATION.sub("", m.group(1))
    label = re.sub(r"\b(in|for|after)\s*$", "", label.strip(" .?!"), flags=re.IGNORECASE)
    return label.strip(" .?!,")[:200]


def arithmetic_expression(text: str) -> str | None:
    expr = _MATH_LEAD.sub("", text.strip().rstrip("?.! ")).strip()
    if not expr:
        return None
    expr = re.sub(r"\bsquare root of\s+(\d+(?:\.\d+)?)", r"sqrt(\1)", expr, flags=re.IGNORECASE)
    for pattern, repl in _WORD_OPS:
        expr = re.sub(pattern, repl, expr, flags=re.IGNORECASE)
    expr = re.sub(r"(?<=\d),(?=\d{3}\b)", "", expr)  # 1,000 → 1000
    expr = re.sub(r"^(the|a|an)\s+", "", expr, flags=re.IGNORECASE)
    if not re.search(r"\d", expr) or not _OPERATOR.search(expr) or not _MATH_CHARS.match(expr.lower()):
        return None
    if any(word not in FUNCTIONS and word not in CONSTANTS for word in re.findall(r"[a-z]+", expr.lower())):
        return None
    return expr.strip()


def card_topic(text: str) -> str:
    m = re.search(r"\b(?:about|for|with|of|on)\s+(.+)$", text, re.IGNORECASE)
    topic = m.group(1) if m else text
    topic = re.sub(r"\b(on (the )?screen|please)\b", "", topic, flags=re.IGNORECASE)
    return topic.strip(" .?!,") or text


def plain(text: str) -> str:
    """Markdown passage → something a voice can say: no code ticks, emphasis, table pipes or bullets."""
    text = re.sub(r"`+|\*\*|__", "", text)
    text = re.sub(r"\|?(\s*:?-{3,}:?\s*\|)+", " ", text)  # table separator rows
    text = re.sub(r"(\s*\|\s*)+", "; ", text).strip("; ")
    text = re.sub(r"(^|\s)[-*] ", r"\1", text)
    return " ".join(text.split())


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", text)
    return [p + " " for p in parts[:-1]] + [parts[-1]] if parts else []


class PlannerBackend:
    name = "planner"

    async def close(self) -> None:
        pass

    async def run(self, ctx: DelegationContext) -> None:
        text = ctx.text
        if not text:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_UNSUPPORTED, "There was no request to work on."
            )
        try:
            if _TIMER.search(text):
                await self.timer(ctx, text)
            elif _TIME.search(text):
                await self.clock(ctx, text)
            elif wants_card(text):
                await self.card(ctx, text)
            elif (expr := arithmetic_expression(text)) is not None:
                await self.arithmetic(ctx, expr)
            elif _QUESTION.search(text) or text.endswith("?"):
                await self.knowledge(ctx, text)
            else:
                raise DelegationFailed(
                    ErrorCode.DELEGATION_ERROR_CODE_UNSUPPORTED,
                    f"Sorry, I can't help with that. {CAPABILITIES}.",
                )
        except ToolCallFailed as exc:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_TOOL_FAILED,
                f"The {exc.tool} tool could not do that: {exc.error.message}",
            ) from None

    async def arithmetic(self, ctx: DelegationContext, expr: str) -> None:
        await ctx.updates.partial(f"Calculating {expr}… ")
        out = await ctx.tools.call("calculator", {"expression": expr})
        await ctx.updates.final(f"{expr} = {out['text']}")

    async def clock(self, ctx: DelegationContext, text: str) -> None:
        place = city_in(text)
        await ctx.updates.partial("Checking the clock… ")
        now = await ctx.tools.call("clock", {"timezone": place or ctx.timezone})
        day = datetime.fromisoformat(now["iso"]).strftime("%A, %-d %B %Y")
        where = f" in {place.title()}" if place else ""
        if re.search(r"\b(date|day)\b", text, re.IGNORECASE) and not re.search(
            r"\btime\b", text, re.IGNORECASE
        ):
            await ctx.updates.final(f"Today{where} is {day}.")
        else:
            await ctx.updates.final(f"It's {now['time']}{where} on {day} ({now['timezone']}).")

    async def timer(self, ctx: DelegationContext, text: str) -> None:
        seconds = parse_seconds(text)
        if seconds is None:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_UNSUPPORTED,
                "I can set a timer, but I need to know for how long (for example: a timer for 5 minutes).",
            )
        label = timer_label(text)
        args = {"seconds": seconds, "label": label} if label else {"seconds": seconds}
        out = await ctx.tools.call("timer", args)
        what = f" for {label}" if label else ""
        fields = {"Duration": out["duration"], "Due": out["fires_at"]}
        card = await ctx.tools.call("ui_card", {"title": f"Timer{what}", "body": "Running", "fields": fields})
        await ctx.updates.card(card_from_json(card))
        await ctx.updates.final(f"Timer set{what}: {out['duration']}. I'll tell you when it's done.")

    async def _search(self, ctx: DelegationContext, query: str, top_k: int = 3) -> list[dict]:
        out = await ctx.tools.call("knowledge_search", {"query": query[:500], "top_k": top_k})
        return [r for r in out["results"] if r["score"] >= ctx.settings.search_min_score]

    async def knowledge(self, ctx: DelegationContext, text: str) -> None:
        await ctx.updates.partial("Looking that up… ")
        hits = await self._search(ctx, text)
        if not hits:
            raise DelegationFailed(
                ErrorCode.DELEGATION_ERROR_CODE_UNSUPPORTED,
                "I couldn't find anything about that in my knowledge base, so I can't answer it.",
            )
        best = hits[0]
        answer = plain(best["text"])[: ctx.settings.max_answer_chars]
        for sentence in _sentences(answer):
            await ctx.updates.partial(sentence)
        await ctx.updates.final(f"{answer} (source: {best['source']}, {best['title']})")

    async def card(self, ctx: DelegationContext, text: str) -> None:
        topic = card_topic(text)
        hits = await self._search(ctx, topic, top_k=1)
        body = plain(hits[0]["text"])[:600] if hits else "Nothing in the knowledge base about this yet."
        fields = {"Source": hits[0]["source"]} if hits else {}
        card = await ctx.tools.call("ui_card", {"title": topic[:120], "body": body, "fields": fields})
        await ctx.updates.card(card_from_json(card))
        await ctx.updates.final(f"I've put a card about {topic} on the screen.")
