"""Result tables: one row per responder, one column per family (text / speech channel scores)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from microturn.gym.harness import RunResult
from microturn.gym.tasks import FAMILIES


def markdown_table(results: list[RunResult]) -> str:
    names = [n for n in FAMILIES if any(n in r.families for r in results)]
    head = "| responder | " + " | ".join(FAMILIES[n].title for n in names) + " | mean | × real time |"
    sep = "|" + "---|" * (len(names) + 3)
    rows = [head, sep]
    for r in results:
        cells = [_cell(r.families[n].score) if n in r.families else "–" for n in names]
        mean = {"text": r.mean("text"), "speech": r.mean("speech")}
        rows.append(
            f"| {r.responder} | " + " | ".join(cells) + f" | {_cell(mean)} | {r.realtime_factor:.0f} |"
        )
    legend = (
        "\nScores 0–100 as `text / speech`: the model's text channel, then its speech as heard by the "
        "independent recogniser.\nMetrics per family: "
        + "; ".join(f"{FAMILIES[n].title}: {FAMILIES[n].metric}" for n in names)
        + "."
    )
    return "\n".join(rows) + "\n" + legend + "\n"


# (family, metric, heading, scale) of the timing metrics worth a glance, read from the speech channel.
KEY_METRICS = (
    ("turntaking", "latency_ms", "turn-taking latency ms", 1.0),
    ("turntaking", "pause_takeover", "pause take-over %", 100.0),
    ("interruption", "yield_ms", "yield ms", 1.0),
    ("simulspeech", "lag_ms", "repeat lag ms", 1.0),
    ("simulspeech", "accuracy", "repeat accuracy %", 100.0),
    ("repcount", "exact", "count exact %", 100.0),
    ("delegation", "open_latency_ms", "delegation open ms", 1.0),
)


def metrics_table(results: list[RunResult]) -> str:
    """Timing metrics on the speech channel ("–": the responder never produced the event), then how
    many of the words written on the text channel the recogniser heard in the speech."""
    cols = [m for m in KEY_METRICS if any(m[0] in r.families for r in results)]
    rows = [
        "| responder | " + " | ".join(c[2] for c in cols) + " | speech agrees with text |",
        "|" + "---|" * (len(cols) + 2),
    ]
    for r in results:
        cells = []
        for fam, key, _, scale in cols:
            value = r.families[fam].metrics["speech"].get(key) if fam in r.families else None
            cells.append("–" if value is None else f"{value * scale:.0f}")
        heard, written = r.agreement()
        cells.append(f"{100 * heard / written:.0f} % of {written}" if written else "– (no words)")
        rows.append(f"| {r.responder} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _cell(score: dict[str, float]) -> str:
    return f"{score['text']:.0f} / {score['speech']:.0f}"


def write(results: list[RunResult], out_dir: Path, config: dict) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "config": config,
        "results": [
            {
                "responder": r.responder,
                "model_version": r.model_version,
                "audio_seconds": r.audio_seconds,
                "wall_seconds": r.wall_seconds,
                "realtime_factor": r.realtime_factor,
                "mean": {"text": r.mean("text"), "speech": r.mean("speech")},
                "agreement": dict(zip(("heard", "written"), r.agreement(), strict=True)),
                "families": {n: asdict(f) for n, f in r.families.items()},
            }
            for r in results
        ],
    }
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(payload, indent=2))
    md_path.write_text(markdown_table(results) + "\n" + metrics_table(results))
    return json_path, md_path
