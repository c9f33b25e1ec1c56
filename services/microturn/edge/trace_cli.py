"""``microturn trace SESSION``: one live call's latency waterfall, hop by hop, from the edge holding it.

The edge keeps each call's last minute of micro-turns (``CallTrace``: the output's hop stamps) and
serves them at ``/api/sessions/{id}/timing``; an operator reads any call with ``edge.debug_token``.
"""

from __future__ import annotations

import argparse
import json
import sys

import httpx

from microturn.config import Settings
from microturn.edge.call_trace import TurnTiming

EXAMPLES = """\
examples:
  MICROTURN_EDGE__DEBUG_TOKEN=... microturn up        # an edge that lets an operator read timings
  MICROTURN_EDGE__DEBUG_TOKEN=... microturn trace sAbC123 --last 20
  microturn trace sAbC123 --edge https://edge.example.com --token "$TOKEN" --json

hops (ms): cut = the edge holding the chunk after its media ended; to_replica / from_replica = the
network and gRPC each way; queue = waiting on the replica for its tick; tick = the engine's step;
playout = audio already queued ahead of this chunk at the edge; round_trip = edge send -> output back.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "trace",
        help="a live call's latency waterfall, hop by hop (from the edge)",
        description=__doc__,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "session",
        help="the call's session id (the edge logs it; the browser gets it when it creates the call)",
    )
    p.add_argument("--edge", help="the edge's base URL (default: http://127.0.0.1:<edge.port>)")
    p.add_argument("--token", help="the call's token or the edge's debug token (default: edge.debug_token)")
    p.add_argument("--last", type=int, default=10, help="micro-turns to list one by one (default 10)")
    p.add_argument("--json", action="store_true", help="print the edge's whole answer as JSON")
    return p


def fetch(url: str, token: str | None) -> tuple[int, dict | str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    resp = httpx.get(url, headers=headers, timeout=10)
    try:
        return resp.status_code, resp.json()
    except ValueError:
        return resp.status_code, resp.text


def _cell(v: float | None) -> str:
    return f"{v:8.1f}" if v is not None else "       -"


def render(doc: dict, last: int) -> str:
    turns, summary = doc.get("turns", []), doc.get("summary", {})
    lines = [f"session {doc.get('session_id')}  model {doc.get('model_version') or '-'}  "
             f"({len(turns)} micro-turns)", "", f"{'hop':<14}{'p50 ms':>8}{'p99 ms':>8}"]  # fmt: skip
    for hop in (*TurnTiming.HOPS, "round_trip"):
        if hop in summary:
            lines.append(f"{hop:<14}{summary[hop]['p50']:8.1f}{summary[hop]['p99']:8.1f}")
    if turns and last > 0:
        lines += ["", f"{'chunk':>6}" + "".join(f"{h[:8]:>9}" for h in (*TurnTiming.HOPS, "round_trip"))]
        for t in turns[-last:]:
            cells = [_cell(t.get(f"{h}_ms")) for h in (*TurnTiming.HOPS, "round_trip")]
            lines.append(f"{t['chunk']:>6} " + " ".join(cells))
    return "\n".join(lines)


def run(ns: argparse.Namespace, settings: Settings) -> int:
    base = (ns.edge or f"http://127.0.0.1:{settings.edge.port}").rstrip("/")
    token = ns.token or settings.edge.debug_token
    try:
        status, doc = fetch(f"{base}/api/sessions/{ns.session}/timing", token)
    except httpx.HTTPError as exc:
        print(f"microturn trace: cannot reach the edge at {base}: {exc}", file=sys.stderr)
        return 3
    if status == 401:
        print("microturn trace: the edge refused the token: pass the call's token or the edge's debug "
              "token (--token, or edge.debug_token / MICROTURN_EDGE__DEBUG_TOKEN, as the edge has it)",
              file=sys.stderr)  # fmt: skip
        return 2
    if status != 200:
        detail = doc.get("detail", doc) if isinstance(doc, dict) else doc
        print(f"microturn trace: the edge answered {status}: {detail}", file=sys.stderr)
        return 1
    assert isinstance(doc, dict)
    print(json.dumps(doc, indent=2) if ns.json else render(doc, ns.last))
    return 0
