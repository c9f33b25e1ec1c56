"""The ``microturn`` command: ``up`` runs the whole system locally, ``down`` stops it."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from microturn.config import ConfigError, load_settings
from microturn.localrun.ports import PortInUseError


def _settings(ns: argparse.Namespace):
    # Through the environment, so that every child process of a local run sees the same settings.
    if ns.config:
        os.environ["MICROTURN_CONFIG"] = str(ns.config.resolve())
    if ns.state_dir:
        os.environ["MICROTURN_STATE_DIR"] = str(ns.state_dir.resolve())
    return load_settings()


def cmd_up(ns: argparse.Namespace) -> int:
    from microturn.localrun.supervisor import RunAlreadyActive, Supervisor, build_specs

    settings = _settings(ns)
    supervisor = Supervisor(settings, build_specs(settings))
    try:
        return asyncio.run(supervisor.run())
    except (PortInUseError, RunAlreadyActive) as exc:
        print(f"microturn up: {exc}", file=sys.stderr)
        return 2


def cmd_down(ns: argparse.Namespace) -> int:
    from microturn.localrun.supervisor import down

    return down(_settings(ns).state_dir, timeout_s=ns.timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="microturn", description=__doc__)
    parser.add_argument("--config", type=Path, help="YAML config file (default: $MICROTURN_CONFIG)")
    parser.add_argument("--state-dir", type=Path, help="where the local run keeps data (default: .state)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start NATS, Ray and every service; Ctrl-C stops").set_defaults(fn=cmd_up)
    p_down = sub.add_parser("down", help="stop a local run started with `up`")
    p_down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a clean stop")
    p_down.set_defaults(fn=cmd_down)
    ns = parser.parse_args(argv)
    try:
        return ns.fn(ns)
    except ConfigError as exc:
        print(f"microturn {ns.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
