"""Keep this edge pod's ``controller.kubernetes.io/pod-deletion-cost`` equal to its live calls.

When a Deployment scales down, its ReplicaSet deletes the pods with the lowest deletion cost first;
an edge whose cost is its session count is removed emptiest first, so a scale-down cuts the fewest
calls (and the pod's preStop/termination grace lets the rest end). The annotation is patched only
when the count changed, at most every ``edge.deletion_cost_interval_s``. Patching needs ``get`` and
``patch`` on pods in the namespace (the chart's Role); a failed patch is logged (once per kind of
failure until it works again) and retried: it never affects a call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from kubernetes import client, config

from microturn.config import EdgeSettings

log = logging.getLogger(__name__)

ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
SERVICEACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class DeletionCost:
    def __init__(
        self,
        api: client.CoreV1Api,
        pod: str,
        namespace: str,
        sessions: Callable[[], int],
        interval_s: float,
    ) -> None:
        self.api, self.pod, self.namespace = api, pod, namespace
        self.sessions, self.interval_s = sessions, interval_s
        self.published: int | None = None  # the cost the pod carries now (None: not yet written)
        self.failures = 0
        self._last_error: str | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, cfg: EdgeSettings, sessions: Callable[[], int]) -> DeletionCost | None:
        """From the pod's in-cluster credentials; None without ``edge.pod_name`` (not on Kubernetes)."""
        if cfg.pod_name is None:
            return None
        namespace = cfg.pod_namespace
        if namespace is None:
            try:
                namespace = SERVICEACCOUNT_NAMESPACE.read_text().strip()
            except OSError as exc:
                raise RuntimeError(
                    f"edge.pod_name is set but edge.pod_namespace is not, and {SERVICEACCOUNT_NAMESPACE} "
                    f"cannot be read ({exc.strerror}): set MICROTURN_EDGE__POD_NAMESPACE"
                ) from None
        config.load_incluster_config()
        return cls(client.CoreV1Api(), cfg.pod_name, namespace, sessions, cfg.deletion_cost_interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="pod-deletion-cost")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            await self.update()
            await asyncio.sleep(self.interval_s)

    async def update(self) -> None:
        """Patch the annotation if the session count changed since it was last written."""
        n = self.sessions()
        if n == self.published:
            return
        body = {"metadata": {"annotations": {ANNOTATION: str(n)}}}
        try:
            await asyncio.to_thread(self.api.patch_namespaced_pod, self.pod, self.namespace, body)
        except Exception as exc:  # API server unreachable, RBAC missing, pod gone: retry next time
            self.failures += 1
            kind = getattr(exc, "reason", None) or type(exc).__name__
            if kind != self._last_error:
                log.warning(
                    "cannot set %s=%d on pod %s/%s (%s): a scale-down may remove this edge before emptier ones",
                    ANNOTATION, n, self.namespace, self.pod, _short(exc),
                )  # fmt: skip
                self._last_error = kind
            return
        if self._last_error is not None:
            log.info("%s is written again on pod %s/%s", ANNOTATION, self.namespace, self.pod)
        self.published, self._last_error = n, None


def _short(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    return f"HTTP {status} {reason}" if status else f"{type(exc).__name__}: {exc}"[:200]
