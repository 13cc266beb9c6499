"""The KubeRay backend: one RayJob (plus its Secret and ConfigMap) per attempt.

Talks to the API server with the official ``kubernetes`` client (in-cluster config, else the
kubeconfig; loaded on first use so importing this module needs no cluster). Fencing: before an
attempt is created every older attempt of the job is deleted and *waited for* until its RayJob
and pods are gone, so two attempts never train at once. ``poll`` is a snapshot (RayJob, its
pods, their nodes; events only once something ended) fed to the pure
``kuberay_classify.rayjob_attempt_status``. An image pull error ends the attempt only once it
has lasted ``image_pull_grace_s`` since this backend first saw it for that attempt (a registry
hiccup heals; a wrong image name does not); a restarted manager starts that grace anew.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable

from orchestrator.contract import ENV_MANAGER_URL, EndReason
from orchestrator.errors import PermanentError, TemporaryError
from orchestrator.manager.backends import base
from orchestrator.manager.backends import kuberay_render as render
from orchestrator.manager.backends.kuberay_classify import (DEFAULT_SPOT_TAINTS, image_pull_failure,
                                                            rayjob_attempt_status)
from orchestrator.spec import parse_manifest

log = logging.getLogger(__name__)
GROUP, VERSION, PLURAL = "ray.io", "v1", "rayjobs"


def _load_api_client() -> Any:
    from kubernetes import client, config
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError) as exc:
            raise PermanentError("no Kubernetes configuration: run the manager in a pod with a service "
                                 "account, or point KUBECONFIG at a kubeconfig") from exc
    return client.ApiClient()


class KubeRayBackend:
    name = "kuberay"

    def __init__(self, api_client: Any = None, namespace: str | None = None, manager_url: str | None = None,
                 delete_timeout_s: float = 600.0,
                 poll_interval_s: float = 2.0, spot_taints: frozenset[str] = DEFAULT_SPOT_TAINTS,
                 image_pull_grace_s: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.time):
        self._api_client = api_client
        self._namespace = namespace          # overrides spec.kubernetes.namespace when set
        # The URL pods reach the manager at (its Service); the supervisor only knows its own bind address.
        self.manager_url = manager_url
        self._namespaces: dict[str, str] = {}  # job id -> namespace of its attempts
        self.delete_timeout_s = delete_timeout_s
        self.poll_interval_s = poll_interval_s
        self.spot_taints = spot_taints
        self.image_pull_grace_s = image_pull_grace_s
        self._pull_seen_at: dict[tuple[str, int], float] = {}  # (job, attempt) -> first poll with a pull error
        self._sleep, self._clock = sleep, clock
        self._core = self._custom = None

    # -- clients -------------------------------------------------------------------------
    def _apis(self) -> tuple[Any, Any]:
        if self._core is None:
            from kubernetes import client
            api = self._api_client or _load_api_client()
            self._core, self._custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        return self._core, self._custom

    def _ns(self, job_id: str) -> str:
        return self._namespace or self._namespaces.get(job_id, "bertctl")

    # -- Backend protocol ----------------------------------------------------------------
    def launch(self, request: base.LaunchRequest) -> str:
        job = parse_manifest(request.manifest)
        ns = self._namespace or job.spec.kubernetes.namespace
        self._namespaces[request.job_id] = ns
        job.spec.kubernetes.namespace = ns
        self._fence(request.job_id, request.attempt, ns)
        core, custom = self._apis()
        secret = render.attempt_secret(job, request.job_id, request.attempt, request.attempt_token)
        configmap, rayjob = render.render_attempt(job, request.job_id, request.attempt,
                                                  self.manager_url or request.manager_url, request.mtbp_s)
        self._create_or_replace(core.create_namespaced_secret, core.replace_namespaced_secret, ns, secret)
        self._create_or_replace(core.create_namespaced_config_map, core.replace_namespaced_config_map,
                                ns, configmap)
        name = rayjob["metadata"]["name"]
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, rayjob)
        except Exception as exc:  # noqa: BLE001 - translated below
            if _status(exc) != 409:  # 409: this attempt already exists (manager restarted mid-launch)
                raise _translate(exc, f"create RayJob {ns}/{name}") from exc
        log.info("launched RayJob %s/%s for job %s attempt %d", ns, name, request.job_id, request.attempt)
        return f"{ns}/{name}"  # the handle survives a manager restart: it names the namespace too

    def poll(self, job_id: str, attempt: int, handle: str) -> base.AttemptStatus:
        ns, handle = _split(handle)
        _, custom = self._apis()
        rayjob = self._get(lambda: custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, handle))
        if rayjob is None:
            return base.AttemptStatus(base.RunState.GONE, reason=EndReason.WORKER_LOST,
                                      message=f"RayJob {ns}/{handle} no longer exists")
        pods = self._pods(ns, job_id, attempt)
        nodes = self._nodes(pods)
        now = self._clock()
        seen = self._pull_seen(job_id, attempt, pods, now)

        def classify(events: list[dict]) -> base.AttemptStatus:
            return rayjob_attempt_status(rayjob, pods, nodes, events, self.spot_taints, now=now,
                                         pull_seen_at=seen, pull_grace_s=self.image_pull_grace_s)

        status = classify([])
        if status.state == base.RunState.EXITED and status.reason in (EndReason.WORKER_LOST, None):
            status = classify(self._events(ns, handle))  # pods of a preempted node may be gone: events say why
        return status

    def _pull_seen(self, job_id: str, attempt: int, pods: list[dict], now: float) -> float | None:
        """When this attempt's image pull error was first seen; forgotten once it clears."""
        if image_pull_failure(pods) is None:
            self._pull_seen_at.pop((job_id, attempt), None)
            return None
        return self._pull_seen_at.setdefault((job_id, attempt), now)

    def terminate(self, job_id: str, attempt: int, handle: str, grace_s: float) -> None:
        """Delete the attempt's RayJob (foreground), wait until it and its pods are gone, then its Secret and ConfigMap."""
        if handle:
            ns, name = _split(handle)
        else:  # the manager stopped before it learnt the handle: the name is derived, not stored
            ns, name = self._ns(job_id), render.rayjob_name(job_id, attempt)
        self._delete_attempt(ns, job_id, attempt, name, kill_after_s=grace_s)

    def cancel(self, job_id: str, namespace: str | None = None) -> None:
        """Delete every attempt of the job and wait until nothing of it is left."""
        ns = namespace or self._ns(job_id)
        for attempt, name in self._attempts(ns, job_id):
            self._delete_attempt(ns, job_id, attempt, name)

    def log_path(self, job_id: str, attempt: int, handle: str) -> str | None:
        return None  # logs live in the cluster: kubectl logs -l bertctl.dev/attempt=N

    # -- helpers -------------------------------------------------------------------------
    def _fence(self, job_id: str, attempt: int, ns: str) -> None:
        for older, name in self._attempts(ns, job_id):
            if older < attempt:
                self._delete_attempt(ns, job_id, older, name)
            elif older > attempt:
                raise PermanentError(f"job {job_id}: attempt {older} already exists, refusing to launch "
                                     f"stale attempt {attempt}")

    def _attempts(self, ns: str, job_id: str) -> list[tuple[int, str]]:
        _, custom = self._apis()
        found = _call(lambda: custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, label_selector=render.job_selector(job_id)), "list RayJobs")
        items = [(int(i["metadata"]["labels"][render.LABEL_ATTEMPT]), i["metadata"]["name"])
                 for i in found.get("items", [])]
        return sorted(items)

    def _delete_attempt(self, ns: str, job_id: str, attempt: int, name: str,
                        kill_after_s: float | None = None) -> None:
        """Deleting the RayJob starts every pod's preStop (the notice); pods still there after
        ``kill_after_s`` are force-deleted. Returns only once the RayJob and all pods are gone."""
        core, custom = self._apis()
        self._delete(lambda: custom.delete_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, name, propagation_policy="Foreground"))
        rayjob_gone = lambda: self._get(  # noqa: E731
            lambda: custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)) is None
        pods_gone = lambda: not self._pods(ns, job_id, attempt)  # noqa: E731
        within = self.delete_timeout_s if kill_after_s is None else max(kill_after_s, 0.0)
        # Foreground deletion keeps the RayJob until its pods are gone, and each pod's preStop
        # holds it for the checkpoint deadline: past the caller's grace, kill the pods.
        for what, gone in ((f"RayJob {ns}/{name}", rayjob_gone), (f"pods of {ns}/{name}", pods_gone)):
            if not self._wait_until(gone, within):
                self._force_delete_pods(ns, job_id, attempt)
                self._wait_gone(what, gone)
        self._delete(lambda: core.delete_namespaced_secret(render.secret_name(job_id, attempt), ns))
        self._delete(lambda: core.delete_namespaced_config_map(render.configmap_name(job_id, attempt), ns))
        log.info("deleted attempt %d of job %s (RayJob %s/%s)", attempt, job_id, ns, name)
        self._pull_seen_at.pop((job_id, attempt), None)

    def _force_delete_pods(self, ns: str, job_id: str, attempt: int) -> None:
        # A pod outliving its grace is usually on an unreachable node; its containers may still
        # run there, but the attempt's token is already stale, so it cannot report or commit.
        core, _ = self._apis()
        for pod in self._pods(ns, job_id, attempt):
            name = pod["metadata"]["name"]
            log.warning("force-deleting pod %s/%s of attempt %d (still there after its grace)", ns, name, attempt)
            self._delete(lambda name=name: core.delete_namespaced_pod(
                name, ns, grace_period_seconds=0, _preload_content=False))

    def _wait_until(self, done: Callable[[], bool], within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while not done():
            if time.monotonic() >= deadline:
                return False
            self._sleep(self.poll_interval_s)
        return True

    def _wait_gone(self, what: str, gone: Callable[[], bool]) -> None:
        if not self._wait_until(gone, self.delete_timeout_s):
            raise TemporaryError(f"{what} still exists {self.delete_timeout_s:.0f}s after deletion; check its "
                                 "finalizers (kubectl get -o yaml) and the KubeRay operator's logs",
                                 delay_s=self.poll_interval_s)

    def _pods(self, ns: str, job_id: str, attempt: int) -> list[dict]:
        core, _ = self._apis()
        resp = _call(lambda: core.list_namespaced_pod(ns, label_selector=render.job_selector(job_id, attempt),
                                                      _preload_content=False), "list pods")
        return _json(resp).get("items", [])

    def _nodes(self, pods: list[dict]) -> dict[str, dict | None]:
        core, _ = self._apis()
        names = sorted({(p.get("spec") or {}).get("nodeName") for p in pods} - {None, ""})
        return {n: self._get(lambda n=n: _json(core.read_node(n, _preload_content=False))) for n in names}

    def _events(self, ns: str, handle: str) -> list[dict]:
        core, _ = self._apis()
        resp = _call(lambda: core.list_namespaced_event(ns, _preload_content=False), "list events")
        # KubeRay names the RayCluster and every pod after the RayJob, so a name prefix finds them.
        return [e for e in _json(resp).get("items", [])
                if (e.get("involvedObject") or {}).get("name", "").startswith(handle)]

    @staticmethod
    def _get(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - translated below
            if _status(exc) == 404:
                return None
            raise _translate(exc, "read") from exc

    @staticmethod
    def _delete(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - translated below
            if _status(exc) != 404:
                raise _translate(exc, "delete") from exc

    @staticmethod
    def _create_or_replace(create: Callable, replace: Callable, ns: str, obj: dict) -> None:
        try:
            create(ns, obj)
        except Exception as exc:  # noqa: BLE001 - translated below
            if _status(exc) != 409:
                raise _translate(exc, f"create {obj['kind']} {ns}/{obj['metadata']['name']}") from exc
            _call(lambda: replace(obj["metadata"]["name"], ns, obj), f"replace {obj['kind']}")


def _split(handle: str) -> tuple[str, str]:
    ns, _, name = handle.rpartition("/")
    if not ns or not name:
        raise PermanentError(f"'{handle}' is not a KubeRay attempt handle (namespace/rayjob-name)")
    return ns, name


def _json(resp: Any) -> Any:
    import json
    return json.loads(resp.data) if hasattr(resp, "data") else resp


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def _call(fn: Callable[[], Any], what: str) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 - translated below
        raise _translate(exc, what) from exc


def _translate(exc: Exception, what: str) -> Exception:
    """API errors become the taxonomy: 4xx a user must fix are permanent, the rest temporary."""
    code = _status(exc)
    reason = getattr(exc, "reason", None) or type(exc).__name__
    if code in (401, 403):
        return PermanentError(f"{what}: forbidden ({code} {reason}); grant the manager's service account the "
                              "Role in k8s/base/rbac.yaml")
    if code in (400, 404, 422):
        return PermanentError(f"{what}: rejected by the API server ({code} {reason}); is the KubeRay operator "
                              "(ray.io/v1 CRDs) installed?")
    return TemporaryError(f"{what}: Kubernetes API unavailable ({code or ''} {reason}); will retry", delay_s=5.0)


def _factory(**options: Any) -> KubeRayBackend:
    # In the manager's Deployment BERTCTL_MANAGER_URL names its Service (k8s/base/deployment.yaml).
    options.setdefault("manager_url", os.environ.get(ENV_MANAGER_URL) or None)
    return KubeRayBackend(**options)


base.register("kuberay", _factory)
