"""The local rollout driver's pieces that need no cluster: versions as Serve applications, the
checkpoint of a version, and the `microturn rollout` commands against a controller's status file."""

from __future__ import annotations

import json
import time

import pytest

from microturn.cli import main as cli_main
from microturn.config import load_settings
from microturn.model.checkpoint import shipped_checkpoints
from microturn.rollout import store
from microturn.rollout.analysis import default_thresholds
from microturn.rollout.local import (
    Deployed,
    app_for,
    read_deployed,
    resolve_checkpoint,
    serve_config_for,
    write_deployed,
)
from microturn.rollout.machine import SpecError, initial
from microturn.rollout.store import rollout_dir, routing_path


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROTURN_STATE_DIR", str(tmp_path / "state"))
    return load_settings()


def test_each_version_is_its_own_serve_application(settings):
    ckpt = str(shipped_checkpoints()["microturn-tiny-v1"])
    deployed = {"microturn-tiny-v2": Deployed("interaction", None),
                "microturn-tiny-v1": Deployed(app_for(settings, "microturn-tiny-v1"), ckpt)}  # fmt: skip
    apps = serve_config_for(settings, deployed)["applications"]
    assert [a["name"] for a in apps] == ["interaction", "interaction-microturn-tiny-v1"]
    assert [a["route_prefix"] for a in apps] == ["/interaction", "/interaction-microturn-tiny-v1"]
    v1 = apps[1]["args"]["settings"]["interaction"]
    assert v1["checkpoint"] == ckpt and v1["app_name"] == "interaction-microturn-tiny-v1"
    assert "checkpoint" not in apps[0]["args"]["settings"].get("interaction", {})


def test_a_fresh_run_has_one_version_and_the_registry_round_trips(settings):
    assert read_deployed(settings) == {"microturn-tiny-v2": Deployed("interaction", None)}
    write_deployed(settings, {"v9": Deployed("interaction-v9", "/m/v9.safetensors")})
    assert read_deployed(settings) == {"v9": Deployed("interaction-v9", "/m/v9.safetensors")}


def test_a_version_resolves_to_its_shipped_checkpoint_or_a_given_one_that_declares_it():
    assert resolve_checkpoint("microturn-tiny-v1").endswith("microturn-tiny-v1.safetensors")
    with pytest.raises(SpecError, match="no checkpoint of version 'v7' is shipped"):
        resolve_checkpoint("v7")
    with pytest.raises(SpecError, match="is version 'microturn-tiny-v2', not 'microturn-tiny-v1'"):
        resolve_checkpoint("microturn-tiny-v1", str(shipped_checkpoints()["microturn-tiny-v2"]))


def write_status(settings, age_s: float = 0.0) -> None:
    path = rollout_dir(settings) / "status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"status": store.status_to_doc(initial("microturn-tiny-v2")),
           "versions": {"microturn-tiny-v2": {"app": "interaction", "ready": True, "sessions": 3, "opened": 9,
                                              "metrics": {"deadline_miss_ratio": 0.01, "stream_error_ratio": 0.0}}},
           "updated_unix_ms": int((time.time() - age_s) * 1000)}  # fmt: skip
    path.write_text(json.dumps(doc))


def test_commands_need_a_running_controller(settings, capsys):
    assert cli_main(["rollout", "start", "--to", "microturn-tiny-v1"]) == 3
    assert "no rollout controller is running" in capsys.readouterr().err
    write_status(settings, age_s=60)  # a controller that stopped a minute ago
    assert cli_main(["rollout", "abort"]) == 3


def test_start_writes_the_spec_the_controller_reads(settings, capsys):
    write_status(settings)
    assert cli_main(["rollout", "start", "--to", "microturn-tiny-v1", "--steps", "20,100", "--hold", "2m",
                     "--min-sessions", "3", "--drain-deadline", "90s"]) == 0  # fmt: skip
    spec = store.spec_from_doc(json.loads((rollout_dir(settings) / "spec.json").read_text()))
    assert [s.weight for s in spec.steps] == [20, 100] and spec.steps[0].hold_s == 120
    assert spec.steps[0].min_sessions == 3 and spec.drain_deadline_s == 90
    assert spec.checkpoint.endswith("microturn-tiny-v1.safetensors")
    assert "rollout of microturn-tiny-v1 requested" in capsys.readouterr().out
    assert cli_main(["rollout", "pause"]) == 0
    assert json.loads((rollout_dir(settings) / "command.json").read_text()) == {"command": "pause"}


def test_analysis_thresholds_can_be_set_per_rollout(settings):
    write_status(settings)
    assert cli_main(["rollout", "start", "--to", "microturn-tiny-v1", "--threshold", "tick_p99_ms=180:2",
                     "--threshold", "stream_error_ratio=0.02"]) == 0  # fmt: skip
    th = store.spec_from_doc(
        json.loads((rollout_dir(settings) / "spec.json").read_text())
    ).analysis.thresholds
    assert (th["tick_p99_ms"].limit, th["tick_p99_ms"].margin) == (180, 2)
    assert th["stream_error_ratio"].limit == 0.02 and th["stream_error_ratio"].margin == 0.5  # its default
    assert th["deadline_miss_ratio"] == default_thresholds()["deadline_miss_ratio"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "microturn-tiny-v1", "--steps", "50,20,100"], "rise strictly"),
        (["--to", "microturn-tiny-v1", "--steps", "10,50"], "last step"),
        (["--to", "not-shipped"], "no checkpoint of version"),
        (["--to", "microturn-tiny-v1", "--threshold", "tick_p99=150"], "METRIC one of"),
        (["--to", "microturn-tiny-v1", "--threshold", "tick_p99_ms=fast"], "are numbers"),
        (["--to", "microturn-tiny-v1", "--threshold", "tick_p99_ms=nan"], "finite and >= 0"),
        (["--to", "microturn-tiny-v1", "--threshold", "tick_p99_ms=150:-1"], "finite and >= 0"),
    ],
)
def test_a_bad_rollout_is_refused_before_anything_changes(settings, capsys, args, message):
    write_status(settings)
    assert cli_main(["rollout", "start", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (rollout_dir(settings) / "spec.json").exists()


def test_a_bad_duration_is_a_usage_error(settings, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["rollout", "start", "--to", "microturn-tiny-v1", "--hold", "soon"])
    assert exc.value.code == 2 and "is not a duration" in capsys.readouterr().err


def test_status_prints_a_table_and_json(settings, capsys):
    write_status(settings)
    assert cli_main(["rollout", "status"]) == 0
    out = capsys.readouterr().out
    assert "phase     Idle" in out and "microturn-tiny-v2 100%" in out and "1.0%" in out
    assert cli_main(["rollout", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"]["stable"] == "microturn-tiny-v2"


def test_candidate_settings_reach_its_replicas_and_bad_ones_are_refused(settings, capsys):
    write_status(settings)
    assert cli_main(["rollout", "start", "--to", "microturn-tiny-v1", "--set", "fault_tick_delay_ms=300",
                     "--set", "interaction.session_slots=16"]) == 0  # fmt: skip
    spec = store.spec_from_doc(json.loads((rollout_dir(settings) / "spec.json").read_text()))
    assert spec.candidate_settings == {"fault_tick_delay_ms": 300, "session_slots": 16}
    deployed = {
        "microturn-tiny-v1": Deployed(
            "interaction-microturn-tiny-v1", spec.checkpoint, spec.candidate_settings
        )
    }
    (app,) = serve_config_for(settings, deployed)["applications"]
    assert app["args"]["settings"]["interaction"]["fault_tick_delay_ms"] == 300
    for bad, message in (("session_slots=0", "session_slots"), ("no_such_setting=1", "no_such_setting"),
                         ("fault_tick_delay_ms", "SETTING=VALUE")):  # fmt: skip
        assert cli_main(["rollout", "start", "--to", "microturn-tiny-v1", "--set", bad]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("move_to", ["", "microturn-tiny-v2"])
def test_past_the_deadline_the_edges_are_told_to_move_or_end_the_versions_calls(settings, move_to):
    from microturn.rollout.local import LocalController
    from microturn.rollout.machine import EndSessions
    from microturn.rollout.routing import RoutingTable

    controller = LocalController(settings)
    routing_path(settings).parent.mkdir(parents=True, exist_ok=True)
    RoutingTable(5, {"microturn-tiny-v2": 100}).write(routing_path(settings))
    controller.apply([EndSessions("microturn-tiny-v1", move_to, "microturn-tiny-v1 is being retired")])
    table = RoutingTable.from_json(routing_path(settings).read_text())
    assert table.epoch == 5 and table.weights == {"microturn-tiny-v2": 100}
    assert "being retired" in table.retired["microturn-tiny-v1"]
    assert table.moves == ({"microturn-tiny-v1": move_to} if move_to else {})
