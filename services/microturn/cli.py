"""The ``microturn`` command: one entry point for the local run and for every service.

``microturn up`` runs the whole system on this machine (``down`` stops it). In containers (the
Dockerfile, the Helm chart) each service runs by its own subcommand with settings from the
environment (``MICROTURN_<SECTION>__<FIELD>``) and/or a YAML file (``--config``, ``MICROTURN_CONFIG``):

  microturn edge            the WebRTC edge (signalling on edge.port, media over ICE)
  microturn interaction     render or deploy the Ray Serve config of the interaction service
  microturn background      the background model service (JetStream consumer "background")
  microturn tools           the tool service (consumers "tools" and "timers", gRPC Tools API)
  microturn bus setup       create the JetStream streams and durable consumers, then exit
  microturn config check    validate the settings and the MICROTURN_* environment, then exit
  microturn rollout ...     roll a model version out to a local run (microturn rollout --help)
  microturn loadtest ...    load tests from real browsers and aiortc callers (microturn loadtest --help)

Exit codes: 0 ok, 1 failure, 2 bad settings or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

import yaml

from microturn.config import ConfigError, load_settings, unknown_env_vars
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


def cmd_edge(ns: argparse.Namespace) -> int:
    from microturn.edge.__main__ import serve

    return serve(_settings(ns))


def cmd_bus_service(ns: argparse.Namespace) -> int:
    from microturn.bus.lifecycle import run_service

    if ns.command == "tools":
        from microturn.tools.service import ToolsService as make
    else:
        from microturn.background.service import BackgroundService as make
    return run_service(ns.command, make, _settings(ns))


def cmd_interaction(ns: argparse.Namespace) -> int:
    from microturn.interaction.serve_config import run

    return run(_settings(ns), print_config=ns.print, deploy=ns.deploy, watch=ns.watch, timeout_s=ns.timeout)


def cmd_bus_setup(ns: argparse.Namespace) -> int:
    from microturn.bus.errors import PublishError
    from microturn.bus.setup import setup

    settings = _settings(ns)
    try:
        created = asyncio.run(setup(settings, timeout_s=ns.timeout))
    except (ConnectionError, OSError, TimeoutError, PublishError) as exc:  # PermissionDenied is one
        print(f"microturn bus setup: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"nats": settings.nats.client_url, "ready": created}), flush=True)
    return 0


def cmd_config_check(ns: argparse.Namespace) -> int:
    settings = _settings(ns)
    unknown = unknown_env_vars()
    if unknown:
        print(
            "microturn config check: these variables name no setting (typo?): " + ", ".join(unknown),
            file=sys.stderr,
        )
        return 2
    if ns.show:
        print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")
    else:
        print("settings ok", flush=True)
    return 0


def cmd_rollout(ns: argparse.Namespace) -> int:
    return ns.rollout_fn(ns, _settings(ns))


def cmd_trace(ns: argparse.Namespace) -> int:
    from microturn.edge.trace_cli import run

    return run(ns, _settings(ns))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microturn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, help="YAML config file (default: $MICROTURN_CONFIG)")
    parser.add_argument("--state-dir", type=Path, help="where the local run keeps data (default: .state)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("up", help="start NATS, Ray and every service; Ctrl-C stops").set_defaults(fn=cmd_up)
    p_down = sub.add_parser("down", help="stop a local run started with `up`")
    p_down.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a clean stop")
    p_down.set_defaults(fn=cmd_down)

    sub.add_parser("edge", help="serve the WebRTC edge until SIGTERM").set_defaults(fn=cmd_edge)
    for name, what in (("background", "the background model service"), ("tools", "the tool service")):
        sub.add_parser(name, help=f"run {what} until SIGTERM").set_defaults(fn=cmd_bus_service)
    p_int = sub.add_parser(
        "interaction",
        help="render (--print) or deploy (--deploy) the interaction Serve config",
        description="The interaction service runs inside Ray Serve; this renders its Serve config from "
        "the settings (the chart's RayService embeds the same config) or deploys it to a running Ray "
        "cluster's dashboard (ray.dashboard_port) and waits until the application is RUNNING.",
    )
    p_int.add_argument("--print", action="store_true", help="print the rendered Serve config as YAML")
    p_int.add_argument("--deploy", action="store_true", help="deploy it and wait until RUNNING")
    p_int.add_argument(
        "--watch", action="store_true", help="after deploying, report status changes until stopped"
    )
    p_int.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for RUNNING")
    p_int.set_defaults(fn=cmd_interaction)

    p_bus = sub.add_parser("bus", help="JetStream administration")
    bus_sub = p_bus.add_subparsers(dest="bus_command", required=True, metavar="ACTION")
    p_setup = bus_sub.add_parser(
        "setup",
        help="create/update the streams and the services' durable consumers, then exit",
        description="Idempotent: creates what is missing and brings changed configs up to date. Run it "
        "before the services (and before KEDA's JetStream scalers, which read the consumers' lag).",
    )
    p_setup.add_argument("--timeout", type=float, default=120.0, help="seconds to keep trying to reach NATS")
    p_setup.set_defaults(fn=cmd_bus_setup)

    from microturn.rollout.cli import add_parser as add_rollout_parser

    add_rollout_parser(sub).set_defaults(fn=cmd_rollout)
    from microturn.edge.trace_cli import add_parser as add_trace_parser

    add_trace_parser(sub).set_defaults(fn=cmd_trace)
    sub.add_parser(
        "loadtest", help="load tests: run, merge, report, calibrate, k8s (see microturn loadtest --help)"
    )
    p_cfg = sub.add_parser("config", help="settings")
    cfg_sub = p_cfg.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    p_check = cfg_sub.add_parser(
        "check", help="validate the settings (file + MICROTURN_* environment); fail on unknown variables"
    )
    p_check.add_argument("--show", action="store_true", help="print the effective settings as YAML")
    p_check.set_defaults(fn=cmd_config_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["loadtest"]:  # its own parser, with its own subcommands (loadtest/cli.py)
        from loadtest.cli import main as loadtest_main

        return loadtest_main(args[1:])
    ns = build_parser().parse_args(args)
    try:
        return ns.fn(ns)
    except ConfigError as exc:
        print(f"microturn {ns.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
