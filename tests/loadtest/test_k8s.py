"""The distributed run's manifests (schema-valid, one un-retried pod per shard, index -> --shard) and
the collector (real HTTP on a free loopback port, a stub merge)."""

from __future__ import annotations

import json
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from loadtest import k8s

ARGS: dict[str, Any] = {
    "image": "ghcr.io/example/microturn:1.2.3",
    "shards": 4,
    "url": "http://microturn-edge.voice.svc:8000",
    "run_args": ["--scenario", "qa", "--callers", "40", "--mode", "browser"],
    "start_at": 1764600000,
}


def by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


def expand(items: list[str], env: dict[str, str]) -> list[str]:
    """What the kubelet does to a container's command and args: $(VAR) -> the env var's value."""
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), s) for s in items]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"namespace": "voice", "results_pvc": "lt-results", "deadline_s": 3600, "service_account": "lt"},
        {"shards": 1, "node_selector": {"pool": "loadgen"}, "labels": {"team": "voice"}},
    ],
)
def test_every_object_validates_strictly(extra: dict[str, Any]) -> None:
    objs = k8s.render_job({**ARGS, **extra})
    assert [o["kind"] for o in objs] == ["Service", "Deployment", "Job"]
    for obj in objs:
        kubernetes_validate.validate(obj, "1.35.0", strict=True)


def test_strict_validation_catches_a_typo() -> None:
    """The validation above can fail: an unknown field is rejected."""
    job = by_kind(k8s.render_job(ARGS))["Job"]
    job["spec"]["completionsMode"] = "Indexed"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, "1.35.0", strict=True)


def test_job_runs_each_shard_once_together() -> None:
    job = by_kind(k8s.render_job(ARGS))["Job"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4
    assert spec["backoffLimitPerIndex"] == 0  # no shard retried
    assert spec["maxFailedIndexes"] == 4  # one failed shard does not stop the others
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailIndex"
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = pod["containers"]
    assert c["image"] == ARGS["image"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] == c["resources"]["limits"]
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", "/dev/shm", k8s.RESULTS_DIR} <= mounts
    assert job["metadata"]["annotations"]["microturn.io/start-at"] == "1764600000"


def test_each_index_becomes_its_shard_argument() -> None:
    objs = by_kind(k8s.render_job(ARGS))
    (c,) = objs["Job"]["spec"]["template"]["spec"]["containers"]
    service = objs["Service"]
    seen = []
    for i in range(4):
        argv = expand(c["command"] + c["args"], {k8s.INDEX_VAR: str(i)})
        assert argv[:4] == ["python", "-m", "loadtest.k8s", "shard"]
        wrapper, run = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
        collector = wrapper[wrapper.index("--collector") + 1]
        assert collector == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
        assert run[:3] == ["microturn", "loadtest", "run"]
        assert run[run.index("--shard") + 1] == f"{i}/4"
        assert run[run.index("--start-at") + 1] == "1764600000"
        assert run[run.index("--url") + 1] == ARGS["url"]
        assert run[run.index("--out") + 1] == k8s.RESULTS_DIR
        assert wrapper[wrapper.index("--result") + 1] == f"{k8s.RESULTS_DIR}/{k8s.RESULT_NAME}"
        assert run[-len(ARGS["run_args"]) :] == ARGS["run_args"]
        seen.append(run[run.index("--shard") + 1])
    assert len(set(seen)) == 4


def test_collector_is_reachable_and_told_the_shard_count() -> None:
    objs = by_kind(k8s.render_job({**ARGS, "namespace": "voice"}))
    dep, svc = objs["Deployment"], objs["Service"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    argv = c["command"] + c["args"]
    assert argv[:3] == ["microturn", "loadtest", "collect"]
    assert argv[argv.index("--shards") + 1] == "4"
    port = int(argv[argv.index("--port") + 1])
    assert c["ports"][0]["containerPort"] == port == svc["spec"]["ports"][0]["port"]
    (shard,) = objs["Job"]["spec"]["template"]["spec"]["containers"]
    assert f"http://{svc['metadata']['name']}.voice.svc:{port}" in shard["command"]
    shard_labels = objs["Job"]["spec"]["template"]["metadata"]["labels"]
    assert not svc["spec"]["selector"].items() <= shard_labels.items()  # shards are not behind it


def test_yaml_round_trip() -> None:
    assert list(yaml.safe_load_all(k8s.render_yaml(ARGS))) == k8s.render_job(ARGS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"image": ""}, "needs"),
        ({"shards": 0}, "shards"),
        ({"shard": 4}, "unknown"),
        ({"run_args": ["--shard", "0/1"]}, "--shard"),
        ({"name": "Load_Test"}, "name"),
        ({"cpu": "two"}, "quantity"),
        ({"url": "edge:8000"}, "url"),
    ],
)
def test_bad_arguments_are_refused_clearly(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        k8s.render_job({**ARGS, **change})


# --- the collector over real HTTP ---------------------------------------------------------------------


class StubMerge:
    """Records its calls and writes a report listing the shards' payloads."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[Path]] = []
        self.fail = fail

    def __call__(self, paths: list[Path], out: Path) -> None:
        self.calls.append(list(paths))
        if self.fail:
            raise RuntimeError("histograms do not line up")
        docs = [json.loads(p.read_text()) for p in paths]
        (out / "result.json").write_text(json.dumps({"shards": docs}))
        (out / "report.html").write_text("<html>" + ",".join(str(d["shard"]) for d in docs) + "</html>")


@pytest.fixture
def collector(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[k8s.CollectorServer, StubMerge]]:
    shards, fail = getattr(request, "param", (4, False))
    merge = StubMerge(fail)
    server = k8s.make_collector_server(tmp_path / "collect", 0, shards, merge, host="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server, merge
    server.shutdown()
    server.server_close()
    thread.join(5)


def call(url: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def upload(server: k8s.CollectorServer, i: int, doc: Any) -> tuple[int, bytes]:
    return call(f"{server.url}/results/{i}", "PUT", json.dumps(doc).encode())


def test_collector_merges_once_every_shard_arrived(collector) -> None:
    server, merge = collector
    for n, i in enumerate([2, 0, 3]):
        assert upload(server, i, {"shard": i})[0] == 200
        assert call(f"{server.url}/report.html")[0] == 503  # not yet
        assert upload(server, i, {"shard": i})[0] == 200  # a retry counts once
        status = json.loads(call(f"{server.url}/status")[1])
        assert len(status["received"]) == n + 1 and status["state"] == "waiting"
    assert json.loads(call(f"{server.url}/status")[1])["missing"] == [1]
    assert upload(server, 1, {"shard": 1})[0] == 200
    assert server.collector.wait(10)
    assert len(merge.calls) == 1
    assert [json.loads(p.read_text())["shard"] for p in merge.calls[0]] == [0, 1, 2, 3]
    assert call(f"{server.url}/report.html") == (200, b"<html>0,1,2,3</html>")
    assert json.loads(call(f"{server.url}/result.json")[1])["shards"][3] == {"shard": 3}
    assert upload(server, 1, {"shard": 1})[0] == 200  # the same bytes again: fine
    assert upload(server, 1, {"shard": 9})[0] == 409  # a different result after the merge: no
    assert len(merge.calls) == 1


def test_collector_refuses_bad_uploads(collector) -> None:
    server, merge = collector
    assert upload(server, 4, {"shard": 4})[0] == 404
    assert call(f"{server.url}/results/0", "PUT", b"{not json")[0] == 400
    assert upload(server, 0, [1, 2])[0] == 400
    assert call(f"{server.url}/nothing")[0] == 404
    assert call(f"{server.url}/merge", "POST", b"")[0] == 409  # nothing to merge
    assert json.loads(call(f"{server.url}/status")[1])["received"] == []
    assert call(f"{server.url}/healthz") == (200, b"ok\n")
    assert merge.calls == []


@pytest.mark.parametrize("collector", [(3, False)], indirect=True)
def test_failed_shard_and_forced_merge(collector) -> None:
    server, merge = collector
    assert upload(server, 0, {"shard": 0})[0] == 200
    assert call(f"{server.url}/results/1/failed", "POST", b'{"exit_code": 137}')[0] == 200
    assert call(f"{server.url}/results/0/failed", "POST", b"{}")[0] == 409  # 0 delivered
    status = json.loads(call(f"{server.url}/status")[1])
    assert (status["failed"], status["missing"], status["state"]) == ([1], [2], "waiting")
    assert call(f"{server.url}/merge", "POST", b"")[0] == 202  # shard 2 died without a word
    assert server.collector.wait(10)
    assert [p.name for p in merge.calls[0]] == ["shard-0000.json"]
    assert call(f"{server.url}/report.html") == (200, b"<html>0</html>")


@pytest.mark.parametrize("collector", [(2, True)], indirect=True)
def test_merge_failure_is_reported(collector) -> None:
    server, _ = collector
    upload(server, 0, {"shard": 0})
    upload(server, 1, {"shard": 1})
    assert server.collector.wait(10)
    code, body = call(f"{server.url}/report.html")
    assert code == 500
    assert "histograms do not line up" in json.loads(body)["error"]


def test_restarted_collector_keeps_what_arrived(tmp_path: Path) -> None:
    merge = StubMerge()
    first = k8s.Collector(tmp_path, 2, merge)
    first.put_result(1, b'{"shard": 1}')
    again = k8s.Collector(tmp_path, 2, merge)
    assert again.status()["received"] == [1]
    again.put_result(0, b'{"shard": 0}')
    assert again.wait(10) and again.state == "done"


# --- the shard wrapper: index from the environment, result to the collector ---------------------------

FAKE_RUN = (
    "import json, sys, pathlib; a = sys.argv[1:]; "
    "pathlib.Path(a[a.index('--out') + 1], 'result.json').write_text("
    "json.dumps({'shard': int(a[a.index('--shard') + 1].split('/')[0])})); sys.exit(1)"
)


@pytest.mark.parametrize("collector", [(3, False)], indirect=True)
def test_shard_wrapper_delivers_each_index(collector, tmp_path: Path, monkeypatch) -> None:
    server, _ = collector
    for i in range(3):
        monkeypatch.setenv(k8s.INDEX_VAR, str(i))
        out = tmp_path / f"pod{i}"
        out.mkdir()
        # the kubelet left $(JOB_COMPLETION_INDEX) unexpanded here: the wrapper fills it in
        cmd = [sys.executable, "-c", FAKE_RUN, "--shard", f"{k8s.INDEX_REF}/3", "--out", str(out)]
        rc = k8s.main(["shard", "--collector", server.url, "--result", str(out / "result.json"), "--", *cmd])
        assert rc == 0  # delivered, although the run itself exited 1 (its verdict is in the result)
    assert server.collector.wait(10)
    assert call(f"{server.url}/report.html") == (200, b"<html>0,1,2</html>")


@pytest.mark.parametrize("collector", [(2, False)], indirect=True)
def test_shard_without_result_reports_failure(collector, tmp_path: Path) -> None:
    server, _ = collector
    cmd = [sys.executable, "-c", "import sys; sys.exit(3)"]
    rc = k8s.run_shard(cmd, tmp_path / "result.json", server.url, index=1, attempts=1)
    assert rc == 3
    assert server.collector.status()["failed"] == [1]


def test_shard_index_needs_the_job_controller() -> None:
    assert k8s.shard_index({k8s.INDEX_VAR: "7"}) == 7
    with pytest.raises(RuntimeError, match=k8s.INDEX_VAR):
        k8s.shard_index({})
