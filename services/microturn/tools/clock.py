"""Current date and time in a time zone, given as an IANA name or a city ("Tokyo", "new york")."""

from __future__ import annotations

import functools
import time
import zoneinfo
from datetime import datetime
from typing import Any

from microturn.tools.registry import Tool, ToolContext, ToolFailed

# Cities people ask for whose zone is not named after them.
_ALIASES = {
    "utc": "UTC",
    "gmt": "UTC",
    "san francisco": "America/Los_Angeles",
    "seattle": "America/Los_Angeles",
    "boston": "America/New_York",
    "washington": "America/New_York",
    "miami": "America/New_York",
    "beijing": "Asia/Shanghai",
    "delhi": "Asia/Kolkata",
    "new delhi": "Asia/Kolkata",
    "mumbai": "Asia/Kolkata",
    "munich": "Europe/Berlin",
    "barcelona": "Europe/Madrid",
    "milan": "Europe/Rome",
    "geneva": "Europe/Zurich",
    "kyoto": "Asia/Tokyo",
    "osaka": "Asia/Tokyo",
    "montreal": "America/Toronto",
    "rio de janeiro": "America/Sao_Paulo",
}


@functools.cache
def _by_city() -> dict[str, str]:
    """City name → IANA zone (reads the zone database once; services call it at start)."""
    out: dict[str, str] = {}
    for name in sorted(zoneinfo.available_timezones()):
        if "/" in name and not name.startswith(("Etc/", "SystemV/", "posix/", "right/")):
            out.setdefault(name.rsplit("/", 1)[1].replace("_", " ").lower(), name)
    out.update(_ALIASES)
    return out


def warm_up() -> None:
    _by_city()


def resolve_timezone(name: str) -> zoneinfo.ZoneInfo:
    """An IANA zone for an IANA name or a known city, or ToolFailed."""
    name = name.strip()
    key = _by_city().get(name.lower(), name)
    try:
        return zoneinfo.ZoneInfo(key)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ToolFailed(f"unknown time zone or city {name[:64]!r}") from None


def city_in(text: str) -> str | None:
    """The longest known city or IANA zone mentioned in ``text`` (for the planner)."""
    lowered = " " + " ".join(text.lower().replace("?", " ").replace(",", " ").split()) + " "
    best = None
    for city in _by_city():
        if len(city) > 2 and f" {city} " in lowered and (best is None or len(city) > len(best)):
            best = city
    return best


def now_in(tz: zoneinfo.ZoneInfo, unix_s: float | None = None) -> dict[str, Any]:
    now = datetime.fromtimestamp(time.time() if unix_s is None else unix_s, tz)
    return {
        "timezone": str(tz.key),
        "iso": now.isoformat(timespec="seconds"),
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H:%M"),
        "weekday": now.strftime("%A"),
        "utc_offset": now.strftime("%z"),
        "unix_ms": int(now.timestamp() * 1000),
    }


def clock_tool() -> Tool:
    async def run(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        return now_in(resolve_timezone(args.get("timezone") or "UTC"))

    return Tool(
        name="clock",
        description="Current date, time and weekday in a time zone (IANA name such as Europe/Paris, or a city).",
        schema="clock.v1",
        parameters={
            "type": "object",
            "properties": {"timezone": {"type": "string", "maxLength": 64}},
            "additionalProperties": False,
        },
        run=run,
        timeout_ms=1000,
        max_argument_bytes=512,
        max_result_bytes=1024,
    )
