"""A load test spread over a Kubernetes cluster: the manifests, the shard wrapper and the collector.

``render_job`` gives three objects for ``kubectl apply``:

- an **Indexed Job** with one pod per shard, all started together (completions = parallelism =
  shards). Each pod runs ``microturn loadtest run --url URL --shard $(JOB_COMPLETION_INDEX)/N
  --start-at EPOCH --out /results <run args>`` under this module's ``shard`` wrapper, which uploads
  ``/results/result.json`` to the collector. No shard is ever retried: a retried shard would start
  late and measure a different load (``backoffLimitPerIndex: 0``; a global ``backoffLimit: 0`` would
  also kill the healthy shards on the first failure, so it is per index, with ``maxFailedIndexes``
  = shards and evicted or pre-empted pods failing their index, not being replaced);
- the **collector**: a one-replica Deployment and its Service. It runs ``microturn loadtest collect
  --dir /data --port P --shards N`` (``serve_collector``), takes each shard's result.json over
  HTTP, merges them and renders the report once every shard has reported, and serves report.html.

The collector's HTTP API (JSON answers unless said otherwise):

- ``PUT /results/{i}``: shard i's result.json (a JSON object). Re-sending the same shard replaces it
  until the merge starts (idempotent retries); afterwards the same bytes are accepted, others 409.
- ``POST /results/{i}/failed``: shard i ended without a result (body: ``{"exit_code": n}``).
- ``POST /merge``: merge now with the shards that arrived (a pod that died without a word).
- ``GET /status``, ``GET /healthz``, ``GET /report.html`` (``/`` too; 503 until merged),
  ``GET /result.json`` (if the merge wrote one).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

log = logging.getLogger("loadtest.k8s")

INDEX_VAR = "JOB_COMPLETION_INDEX"  # set by the Job controller in every pod of an Indexed Job
INDEX_REF = f"$({INDEX_VAR})"  # what the kubelet expands in a container's command and args
RESULTS_DIR = "/results"  # where a shard's `loadtest run --out` writes
RESULT_NAME = "result.json"
COLLECTOR_DIR = "/data"
RUN_AS = 10001  # the image's user (Dockerfile)
MAX_UPLOAD_BYTES = 256 * 1024 * 1024

# What the collector calls once every shard reported: the shards' result.json files (index order)
# and the directory to write into; it must write report.html there (and, if it can, result.json).
MergeFn = Callable[[list[Path], Path], None]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


@dataclass
class JobArgs:
    """What ``render_job`` needs; ``render_job`` also takes these as a dict (same keys)."""

    image: str  # the microturn image (loadtest installed; chromium in it for browser callers)
    shards: int  # pods, each running 1/N of the callers
    url: str  # the edge under test, as the shards reach it
    run_args: list[str] = field(default_factory=list)  # more `microturn loadtest run` arguments
    start_at: float | None = None  # epoch seconds all shards start at; None: now + start_delay_s
    start_delay_s: float = 180.0  # time for pulls and scheduling before the common start
    name: str = "microturn-loadtest"  # the Job's name; the collector is <name>-collector
    namespace: str | None = None
    cpu: str = "2"  # per shard pod (requests = limits: a throttled generator measures itself)
    memory: str = "4Gi"
    shm_size: str = "1Gi"  # /dev/shm for Chromium
    collector_port: int = 8080
    collector_cpu: str = "500m"
    collector_memory: str = "1Gi"
    results_pvc: str | None = None  # a PVC for the collector's /data (default: an emptyDir)
    deadline_s: int | None = None  # the Job's activeDeadlineSeconds (None: no deadline)
    ttl_s: int = 86400  # ttlSecondsAfterFinished
    image_pull_policy: str = "IfNotPresent"
    service_account: str | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # added to every object and pod

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JobArgs:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown render_job argument(s) {unknown}; known: {sorted(known)}")
        missing = [k for k in ("image", "shards", "url") if d.get(k) in (None, "")]
        if missing:
            raise ValueError(f"render_job needs {missing}")
        return cls(**dict(d))

    def check(self) -> None:
        if not isinstance(self.shards, int) or isinstance(self.shards, bool) or self.shards < 1:
            raise ValueError(f"shards must be an integer >= 1, got {self.shards!r}")
        if len(self.name) > 52 or not _NAME_RE.match(self.name):  # room for "-collector"
            raise ValueError(f"name {self.name!r}: lowercase letters, digits and '-', at most 52 chars")
        if self.namespace is not None and not _NAME_RE.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a DNS label")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url {self.url!r} must be http:// or https://")
        for key in ("cpu", "memory", "shm_size", "collector_cpu", "collector_memory"):
            if not _QUANTITY_RE.match(str(getattr(self, key))):
                raise ValueError(f"{key} {getattr(self, key)!r} is not a Kubernetes quantity")
        if not 1 <= self.collector_port <= 65535:
            raise ValueError(f"collector_port {self.collector_port} out of range")
        if not all(isinstance(a, str) for a in self.run_args):
            raise ValueError("run_args must be strings")
        for flag in ("--shard", "--start-at", "--out", "--url"):
            if any(a == flag or a.startswith(flag + "=") for a in self.run_args):
                raise ValueError(f"run_args must not set {flag}: render_job sets it for every shard")


def collector_url(args: JobArgs) -> str:
    """The collector's URL as the shard pods reach it (the Service's cluster DNS name)."""
    host = f"{args.name}-collector" + (f".{args.namespace}.svc" if args.namespace else "")
    return f"http://{host}:{args.collector_port}"


def render_job(args: Mapping[str, Any] | JobArgs) -> list[dict[str, Any]]:
    """The manifests of a distributed run: collector Service, collector Deployment, Indexed Job (in
    the order to apply them). ``args``: a :class:`JobArgs` or a dict with its keys (image, shards
    and url required); raises ValueError on a bad or unknown argument."""
    a = args if isinstance(args, JobArgs) else JobArgs.from_dict(args)
    a.check()
    start_at = int(a.start_at if a.start_at is not None else time.time() + a.start_delay_s)
    return [_collector_service(a), _collector_deployment(a), _job(a, start_at)]


def render_yaml(args: Mapping[str, Any] | JobArgs) -> str:
    """``render_job`` as one multi-document YAML stream (what ``microturn loadtest k8s`` prints)."""
    import yaml

    return yaml.safe_dump_all(render_job(args), sort_keys=False)


def _labels(a: JobArgs, component: str) -> dict[str, str]:
    return {
        **a.labels,
        "app.kubernetes.io/name": "microturn-loadtest",
        "app.kubernetes.io/instance": a.name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "microturn",
        "app.kubernetes.io/managed-by": "microturn-loadtest",
    }


def _selector(a: JobArgs, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": a.name, "app.kubernetes.io/component": component}


def _meta(a: JobArgs, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": _labels(a, component)}
    if a.namespace:
        meta["namespace"] = a.namespace
    return meta


def _pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_common(a: JobArgs) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": _pod_security(),
        "enableServiceLinks": False,
    }
    if a.service_account:
        spec["serviceAccountName"] = a.service_account
    if a.node_selector:
        spec["nodeSelector"] = dict(a.node_selector)
    return spec


def _env() -> list[dict[str, str]]:
    return [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONUNBUFFERED", "value": "1"}]


def _collector_service(a: JobArgs) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(a, f"{a.name}-collector", "collector"),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(a, "collector"),
            "ports": [{"name": "http", "port": a.collector_port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _collector_deployment(a: JobArgs) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10}
    data: dict[str, Any] = (
        {"name": "data", "persistentVolumeClaim": {"claimName": a.results_pvc}}
        if a.results_pvc
        else {"name": "data", "emptyDir": {"sizeLimit": "2Gi"}}
    )
    container = {
        "name": "collector",
        "image": a.image,
        "imagePullPolicy": a.image_pull_policy,
        "command": ["microturn"],
        "args": [
            *("loadtest", "collect", "--dir", COLLECTOR_DIR),
            *("--port", str(a.collector_port), "--shards", str(a.shards)),
        ],
        "ports": [{"name": "http", "containerPort": a.collector_port, "protocol": "TCP"}],
        "env": _env(),
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        "resources": {
            "requests": {"cpu": a.collector_cpu, "memory": a.collector_memory},
            "limits": {"memory": a.collector_memory},
        },
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "data", "mountPath": COLLECTOR_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(a, f"{a.name}-collector", "collector"),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},  # one writer of /data
            "selector": {"matchLabels": _selector(a, "collector")},
            "template": {
                "metadata": {"labels": _labels(a, "collector")},
                "spec": {
                    **_pod_common(a),
                    "containers": [container],
                    "volumes": [data, {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}],
                },
            },
        },
    }


def shard_run_command(a: JobArgs, start_at: int) -> list[str]:
    """The `microturn loadtest run` command line of every shard pod (INDEX_REF expanded per pod)."""
    return [
        "microturn",
        "loadtest",
        "run",
        "--url",
        a.url,
        "--shard",
        f"{INDEX_REF}/{a.shards}",
        "--start-at",
        str(start_at),
        "--out",
        RESULTS_DIR,
        *a.run_args,
    ]


def _job(a: JobArgs, start_at: int) -> dict[str, Any]:
    container = {
        "name": "shard",
        "image": a.image,
        "imagePullPolicy": a.image_pull_policy,
        "command": [
            *("python", "-m", "loadtest.k8s", "shard", "--collector", collector_url(a)),
            *("--result", f"{RESULTS_DIR}/{RESULT_NAME}", "--"),
        ],
        "args": shard_run_command(a, start_at),
        "env": _env(),
        "resources": {
            "requests": {"cpu": a.cpu, "memory": a.memory},
            "limits": {"cpu": a.cpu, "memory": a.memory},
        },
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "results", "mountPath": RESULTS_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": a.shards,
        "parallelism": a.shards,
        "backoffLimitPerIndex": 0,
        "maxFailedIndexes": a.shards,
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                {"action": "FailIndex", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "ttlSecondsAfterFinished": a.ttl_s,
        "template": {
            "metadata": {"labels": _labels(a, "shard")},
            "spec": {
                **_pod_common(a),
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 30,
                "topologySpreadConstraints": [
                    {
                        "maxSkew": 1,
                        "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "ScheduleAnyway",
                        "labelSelector": {"matchLabels": _selector(a, "shard")},
                    }
                ],
                "containers": [container],
                "volumes": [
                    {"name": "results", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": a.shm_size}},
                ],
            },
        },
    }
    if a.deadline_s is not None:
        spec["activeDeadlineSeconds"] = int(a.deadline_s)
    meta = _meta(a, a.name, "shard")
    meta["annotations"] = {"microturn.io/start-at": str(start_at), "microturn.io/shards": str(a.shards)}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}


# --- the shard side ---------------------------------------------------------------------------------


class UploadError(RuntimeError):
    """The collector refused a result, or could not be reached in time."""


def _request(url: str, data: bytes, method: str, timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def _send(url: str, data: bytes, method: str, attempts: int, backoff_s: float, timeout: float) -> dict:
    """Send with retries on connection errors and 5xx (the collector may be restarting); 4xx is final."""
    last: Exception | None = None
    for attempt in range(max(1, attempts)):
        try:
            return _request(url, data, method, timeout)
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                detail = exc.read().decode(errors="replace")[:500]
                raise UploadError(f"{method} {url}: {exc.code} {detail}") from exc
            last = exc
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        if attempt + 1 < attempts:
            time.sleep(min(backoff_s * 2**attempt, 30.0))
    raise UploadError(f"{method} {url}: gave up after {attempts} attempts: {last}")


def push_result(
    collector: str, index: int, result: Path, attempts: int = 20, backoff_s: float = 1.0, timeout: float = 60
) -> dict[str, Any]:
    """Upload one shard's result.json to the collector; returns the collector's status answer."""
    url = f"{collector.rstrip('/')}/results/{index}"
    return _send(url, result.read_bytes(), "PUT", attempts, backoff_s, timeout)


def report_failure(
    collector: str,
    index: int,
    exit_code: int,
    attempts: int = 20,
    backoff_s: float = 1.0,
    timeout: float = 60,
) -> dict[str, Any]:
    """Tell the collector that shard ``index`` ended without a result, so it need not wait for it."""
    url = f"{collector.rstrip('/')}/results/{index}/failed"
    body = json.dumps({"exit_code": exit_code}).encode()
    return _send(url, body, "POST", attempts, backoff_s, timeout)


def shard_index(env: Mapping[str, str] | None = None) -> int:
    """This pod's shard index, from the Job controller's JOB_COMPLETION_INDEX."""
    value = (os.environ if env is None else env).get(INDEX_VAR)
    if value is None or not value.isdigit():
        raise RuntimeError(f"{INDEX_VAR} is not set to an index ({value!r}): run in an Indexed Job's pod")
    return int(value)


def run_shard(command: list[str], result: Path, collector: str, index: int | None = None, **send: Any) -> int:
    """Run one shard's ``microturn loadtest run`` and hand its result to the collector.

    Returns 0 when the result reached the collector (the run's own verdict is inside it and the
    merged report decides), else the run's exit code (or 1): the pod's status says "this shard's
    measurements are in", nothing more. ``$(JOB_COMPLETION_INDEX)`` left in ``command`` (a kubelet
    that did not expand it) is replaced by the index."""
    index = shard_index() if index is None else index
    command = [c.replace(INDEX_REF, str(index)) for c in command]
    with contextlib.suppress(FileNotFoundError):
        result.unlink()  # never upload a stale result
    log.info("shard %d: %s", index, " ".join(command))
    try:
        rc = subprocess.run(command, check=False).returncode
    except OSError as exc:
        log.error("shard %d: cannot run %s: %s", index, command[0], exc)
        rc = 127
    if result.is_file():
        try:
            answer = push_result(collector, index, result, **send)
        except UploadError as exc:
            log.error("shard %d: result not delivered: %s", index, exc)
            return rc or 1
        log.info("shard %d: result delivered (run exit %d): %s", index, rc, answer)
        return 0
    log.error("shard %d: the run (exit %d) wrote no %s", index, rc, result)
    try:
        report_failure(collector, index, rc, **send)
    except UploadError as exc:
        log.error("shard %d: failure not reported: %s", index, exc)
    return rc or 1


# --- the collector ----------------------------------------------------------------------------------


class Collector:
    """The collector's state: which shards reported, and the merge (once, in a background thread).

    Results go to ``dir/shards/shard-NNNN.json`` (written atomically), failures to ``dir/failed/``;
    a restarted collector picks up what is there. The merge writes into ``dir``."""

    def __init__(self, directory: Path, shards: int, merge: MergeFn) -> None:
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        self.dir = Path(directory)
        self.shards = shards
        self._merge_fn = merge
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.state = "waiting"  # waiting | merging | done | failed
        self.error = ""
        (self.dir / "shards").mkdir(parents=True, exist_ok=True)
        (self.dir / "failed").mkdir(parents=True, exist_ok=True)
        self._received = {i for i in range(shards) if self._result_path(i).is_file()}
        self._failed = {i for i in range(shards) if self._failed_path(i).is_file()} - self._received
        if (self.dir / "report.html").is_file():
            self.state = "done"
            self._done.set()
        else:
            self._maybe_merge_locked()

    def _result_path(self, i: int) -> Path:
        return self.dir / "shards" / f"shard-{i:04d}.json"

    def _failed_path(self, i: int) -> Path:
        return self.dir / "failed" / f"shard-{i:04d}.json"

    def status(self) -> dict[str, Any]:
        """Which shards delivered, failed or are missing, and the merge's state and error."""
        with self._lock:
            return self._status_unlocked()

    def _check_index(self, i: int) -> None:
        if not 0 <= i < self.shards:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no shard {i}: shards are 0..{self.shards - 1}")

    def put_result(self, i: int, body: bytes) -> dict[str, Any]:
        self._check_index(i)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"shard {i}: not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise _HTTPError(HTTPStatus.BAD_REQUEST, f"shard {i}: a result is a JSON object")
        with self._lock:
            path = self._result_path(i)
            if self.state != "waiting":
                if path.is_file() and path.read_bytes() == body:
                    return self._status_unlocked()  # a retry of what was merged
                raise _HTTPError(HTTPStatus.CONFLICT, f"shard {i}: the results are already {self.state}")
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(body)
            tmp.replace(path)
            self._received.add(i)
            self._failed.discard(i)
            self._failed_path(i).unlink(missing_ok=True)
            log.info("shard %d received (%d of %d reported)", i, self._n_reported(), self.shards)
            self._maybe_merge_locked()
            return self._status_unlocked()

    def put_failed(self, i: int, body: bytes) -> dict[str, Any]:
        self._check_index(i)
        with self._lock:
            if i in self._received:
                raise _HTTPError(HTTPStatus.CONFLICT, f"shard {i} already delivered a result")
            if self.state != "waiting":
                raise _HTTPError(HTTPStatus.CONFLICT, f"the results are already {self.state}")
            self._failed_path(i).write_bytes(body or b"{}")
            self._failed.add(i)
            log.warning("shard %d failed without a result: %s", i, body[:200].decode(errors="replace"))
            self._maybe_merge_locked()
            return self._status_unlocked()

    def force_merge(self) -> dict[str, Any]:
        with self._lock:
            if self.state != "waiting":
                raise _HTTPError(HTTPStatus.CONFLICT, f"the results are already {self.state}")
            if not self._received:
                raise _HTTPError(HTTPStatus.CONFLICT, "no shard has delivered a result yet")
            self._start_merge_locked()
            return self._status_unlocked()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the merge finished (done or failed); False on timeout."""
        return self._done.wait(timeout)

    def _status_unlocked(self) -> dict[str, Any]:
        reported = self._received | self._failed
        return {
            "shards": self.shards,
            "received": sorted(self._received),
            "failed": sorted(self._failed),
            "missing": [i for i in range(self.shards) if i not in reported],
            "state": self.state,
            "error": self.error,
        }

    def _n_reported(self) -> int:
        return len(self._received | self._failed)

    def _maybe_merge_locked(self) -> None:
        if self.state == "waiting" and self._n_reported() == self.shards:
            if self._received:
                self._start_merge_locked()
            else:
                self.state, self.error = "failed", "every shard failed without a result"
                self._done.set()

    def _start_merge_locked(self) -> None:
        self.state = "merging"
        paths = [self._result_path(i) for i in sorted(self._received)]
        threading.Thread(target=self._merge, args=(paths,), name="collector-merge", daemon=True).start()

    def _merge(self, paths: list[Path]) -> None:
        log.info("merging %d shard result(s) into %s", len(paths), self.dir)
        try:
            self._merge_fn(paths, self.dir)
            if not (self.dir / "report.html").is_file():
                raise RuntimeError(f"the merge wrote no report.html in {self.dir}")
        except Exception as exc:  # the collector keeps serving its status either way
            log.exception("merge failed")
            with self._lock:
                self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
        else:
            with self._lock:
                self.state = "done"
            log.info("report ready: %s", self.dir / "report.html")
        self._done.set()


class _HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


_RESULT_PATH = re.compile(r"^/results/(\d+)(/failed)?$")


class _Handler(BaseHTTPRequestHandler):
    server: CollectorServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _reply(self, status: int, body: bytes, ctype: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: Mapping[str, str] | None = None) -> None:
        self._reply(status, json.dumps(doc).encode(), "application/json", headers)

    def _body(self) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _HTTPError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        n = int(length)
        if n > MAX_UPLOAD_BYTES:
            raise _HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"over {MAX_UPLOAD_BYTES} bytes")
        return self.rfile.read(n)

    def _handle(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except _HTTPError as exc:
            self.close_connection = True  # an unread body must not be taken for the next request
            self._json(exc.status, {"error": str(exc)})

    def do_GET(self) -> None:
        self._handle(self._get)

    do_HEAD = do_GET

    def do_PUT(self) -> None:
        self._handle(self._put)

    def do_POST(self) -> None:
        self._handle(self._post)

    def _get(self) -> None:
        c = self.server.collector
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._reply(200, b"ok\n", "text/plain")
        elif path == "/status":
            self._json(200, c.status())
        elif path in ("/", "/report.html", "/result.json"):
            name = "result.json" if path == "/result.json" else "report.html"
            file = c.dir / name
            if c.state == "done" and file.is_file():
                ctype = "application/json" if name == "result.json" else "text/html; charset=utf-8"
                self._reply(200, file.read_bytes(), ctype)
            elif c.state == "done":
                raise _HTTPError(HTTPStatus.NOT_FOUND, f"the merge wrote no {name}")
            elif c.state == "failed":
                self._json(500, c.status())
            else:
                self._json(503, c.status(), {"Retry-After": "10"})
        else:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no {path}")

    def _put(self) -> None:
        m = _RESULT_PATH.match(self.path)
        if not m or m.group(2):
            raise _HTTPError(HTTPStatus.NOT_FOUND, "PUT /results/{index}")
        self._json(200, self.server.collector.put_result(int(m.group(1)), self._body()))

    def _post(self) -> None:
        c = self.server.collector
        m = _RESULT_PATH.match(self.path)
        if self.path == "/merge":
            if self.headers.get("Content-Length"):
                self._body()  # ignored, but read so the connection stays in step
            self._json(202, c.force_merge())
        elif m and m.group(2):
            self._json(200, c.put_failed(int(m.group(1)), self._body()))
        elif m:  # POST works as PUT, for clients that only POST
            self._json(200, c.put_result(int(m.group(1)), self._body()))
        else:
            raise _HTTPError(HTTPStatus.NOT_FOUND, f"no POST {self.path}")


class CollectorServer(ThreadingHTTPServer):
    """The collector's HTTP server; ``collector`` holds the state, ``url`` is where it listens."""

    daemon_threads = True

    def __init__(self, collector: Collector, host: str, port: int) -> None:
        super().__init__((host, port), _Handler)
        self.collector = collector

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def make_collector_server(
    directory: str | Path, port: int, shards: int, merge: MergeFn, host: str = "0.0.0.0"
) -> CollectorServer:
    """A bound, not yet serving collector (``port=0``: a free port; see ``.url``)."""
    return CollectorServer(Collector(Path(directory), shards, merge), host, port)


def serve_collector(
    directory: str | Path, port: int, shards: int, merge: MergeFn, host: str = "0.0.0.0"
) -> None:
    """Run the collector until killed: take ``shards`` result.json uploads, call ``merge(paths, dir)``
    once all reported (it must write ``dir/report.html``), serve the report. What the collector pod
    runs as ``microturn loadtest collect --dir D --port P --shards N``."""
    server = make_collector_server(directory, port, shards, merge, host)
    log.info("collector for %d shard(s) on %s, results in %s", shards, server.url, directory)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtest.k8s shard --collector URL --result PATH -- <run command>``: a shard pod."""
    p = argparse.ArgumentParser(prog="python -m loadtest.k8s", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("shard", help="run one shard's command, then upload its result to the collector")
    s.add_argument("--collector", required=True, help="the collector's URL")
    s.add_argument("--result", required=True, type=Path, help="the result.json the command writes")
    s.add_argument("--index", type=int, default=None, help=f"shard index (default: ${INDEX_VAR})")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    ns = p.parse_args(argv)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        p.error("shard: give the command after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    try:
        return run_shard(command, ns.result, ns.collector, ns.index)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
