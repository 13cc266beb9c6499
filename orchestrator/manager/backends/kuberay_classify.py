"""Why did a RayJob attempt end? A pure function over what Kubernetes says (plain dicts).

Inputs are the JSON shapes the API server returns (a RayJob, its pods, the nodes those pods
were bound to — ``None`` for a node that no longer exists — and events), so the table tests
and the backend feed the same function. Order of evidence, and why:

1. an image that cannot be pulled will never start: permanent, even before the RayJob ends,
   once the pull error has lasted ``pull_grace_s`` (a registry hiccup heals; within the grace
   a starting attempt stays STARTING with the pull error as its message);
2. a disruption (preemption, eviction, spot interruption, lost node) wins over the trainer's
   exit code, because a dying node makes trainers fail in arbitrary ways and a retry is cheap
   while wrongly failing a job is not;
3. the trainer's own exit code (from a container or the Ray job message) via the contract;
4. losing the head pod while the job runs ends the attempt: the driver died with it.

A STARTING status's message says what the attempt waits for (the supervisor records it as the
attempt's startup phase): a pod the scheduler cannot place yet, in the scheduler's own words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable

from orchestrator.contract import EndReason, reason_for_exit, EXIT_REASONS
from orchestrator.manager.backends.base import AttemptStatus, RunState

DISRUPTION_REASONS = frozenset({"PreemptionByScheduler", "DeletionByTaintManager",
                                "EvictionByEvictionAPI", "TerminationByKubelet"})
# Node taints that announce a spot interruption or a node being drained for it. Configurable
# per backend (KubeRayBackend(spot_taints=...)) for clusters with other tooling.
DEFAULT_SPOT_TAINTS = frozenset({
    "karpenter.sh/disrupted",                       # Karpenter v1: node is being disrupted
    "karpenter.sh/disruption",                      # Karpenter v0.3x
    "aws-node-termination-handler/spot-itn",        # AWS NTH: spot interruption notice
    "aws-node-termination-handler/asg-lifecycle-termination",
    "cloud.google.com/impending-node-termination",  # GKE: spot / preemptible VM reclaim
    "node.kubernetes.io/out-of-service",
})
LOST_NODE_TAINTS = frozenset({"node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready"})
IMAGE_PULL_WAITING = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName"})
PREEMPT_EVENTS = frozenset({"Preempted", "Evicted", "TaintManagerEviction", "SpotInterrupted",
                            "InstanceTerminating", "PreemptionByScheduler"})
LOST_EVENTS = frozenset({"NodeNotReady", "RemovingNode", "DeletingNode", "NodeLost"})
PREEMPT_POD_REASONS = frozenset({"Evicted", "Preempting", "Shutdown", "Terminated", "NodeShutdown"})
# Exit codes only the trainer chooses; a Ray container exiting with 1 or 137 says nothing.
TRAINER_CODES = frozenset(int(c) for c in EXIT_REASONS if int(c) != 0)
# Ray's job supervisor words a failed entrypoint this way, and KubeRay copies it to status.message.
_EXIT_RE = re.compile(r"entrypoint command failed with exit code (\d+)")
_TERMINAL_DEPLOY = frozenset({"Complete", "Failed"})
_TERMINAL_JOB = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


@dataclass(frozen=True)
class Evidence:
    reason: EndReason
    message: str


def is_head(pod: dict[str, Any]) -> bool:
    return _labels(pod).get("ray.io/node-type") == "head"


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _name(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "?")


def _statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    st = pod.get("status") or {}
    return (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or [])


def pod_disruption(pod: dict[str, Any]) -> Evidence | None:
    """A pod condition or status the kubelet / scheduler / taint manager sets when it takes a pod away."""
    st = pod.get("status") or {}
    for cond in st.get("conditions") or []:
        if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
            why = cond.get("reason", "")
            note = "" if why in DISRUPTION_REASONS else " (unrecognised reason, treated as preemption)"
            return Evidence(EndReason.PREEMPTED, f"pod {_name(pod)} disrupted: {why}{note}")
    if st.get("reason") == "NodeLost":
        return Evidence(EndReason.NODE_LOST, f"pod {_name(pod)}: its node stopped responding")
    if st.get("reason") in PREEMPT_POD_REASONS:
        return Evidence(EndReason.PREEMPTED, f"pod {_name(pod)} {st['reason']}: {st.get('message', '')}".rstrip(": "))
    return None


def node_disruption(name: str, node: dict[str, Any] | None, spot_taints: Iterable[str]) -> Evidence | None:
    if node is None:
        return Evidence(EndReason.NODE_LOST, f"node {name} disappeared")
    keys = {t.get("key") for t in (node.get("spec") or {}).get("taints") or []}
    spot = sorted(keys & set(spot_taints))
    if spot:
        return Evidence(EndReason.PREEMPTED, f"node {name} is being reclaimed (taint {spot[0]})")
    lost = sorted(keys & LOST_NODE_TAINTS)
    ready = [c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"]
    if lost or (ready and ready[0].get("status") != "True"):
        return Evidence(EndReason.NODE_LOST, f"node {name} is not ready")
    return None


def event_disruption(events: Iterable[dict[str, Any]]) -> Evidence | None:
    found: Evidence | None = None
    for ev in events:
        what = f"{(ev.get('involvedObject') or {}).get('kind', '?')} {(ev.get('involvedObject') or {}).get('name', '?')}"
        if ev.get("reason") in PREEMPT_EVENTS:
            return Evidence(EndReason.PREEMPTED, f"{what}: {ev['reason']}: {ev.get('message', '')}".rstrip(": "))
        if ev.get("reason") in LOST_EVENTS and found is None:
            found = Evidence(EndReason.NODE_LOST, f"{what}: {ev['reason']}")
    return found


def disruption(pods: list[dict], nodes: dict[str, dict | None], events: list[dict],
               spot_taints: Iterable[str] = DEFAULT_SPOT_TAINTS) -> Evidence | None:
    """Preemption beats a lost node: both are retried, but 'preempted' feeds the MTBP estimate."""
    found = [e for e in (pod_disruption(p) for p in pods) if e]
    found += [e for e in (node_disruption(n, nodes[n], spot_taints) for n in sorted(nodes)) if e]
    ev = event_disruption(events)
    if ev:
        found.append(ev)
    for reason in (EndReason.PREEMPTED, EndReason.NODE_LOST):
        for e in found:
            if e.reason == reason:
                return e
    return None


@dataclass(frozen=True)
class PullFailure:
    pod: str
    image: str
    reason: str    # ErrImagePull, ImagePullBackOff, InvalidImageName
    detail: str    # the kubelet's message


def image_pull_failure(pods: list[dict]) -> PullFailure | None:
    for pod in pods:
        for cs in _statuses(pod):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in IMAGE_PULL_WAITING:
                return PullFailure(_name(pod), cs.get("image", "?"), waiting["reason"], waiting.get("message", ""))
    return None


def _pull_ended(pull: PullFailure, waited_s: float) -> AttemptStatus:
    lasted = f" for {waited_s:.0f}s" if waited_s != float("inf") else ""
    message = (f"pod {pull.pod} cannot pull image {pull.image}{lasted}: {pull.reason} {pull.detail}".rstrip()
               + "; fix spec.kubernetes.image or the registry credentials (imagePullSecrets of the service account)")
    return AttemptStatus(RunState.EXITED, reason=EndReason.IMAGE_PULL, message=message)


def unschedulable(pods: list[dict]) -> str | None:
    """Why pods wait for a node, in the scheduler's words (the head's first, then by name):
    on a cloud cluster usually capacity the autoscaler is adding."""
    pending = [(not is_head(p), _name(p), c) for p in pods
               if (p.get("status") or {}).get("phase", "Pending") == "Pending"
               for c in (p.get("status") or {}).get("conditions") or []
               if c.get("type") == "PodScheduled" and c.get("status") == "False"]
    if not pending:
        return None
    cond = min(pending, key=lambda t: t[:2])[2]
    why = cond.get("message") or cond.get("reason") or "not scheduled yet"
    return f"{len(pending)} pod(s) waiting for a node ({cond.get('reason', 'Unschedulable')}): {why}"


def trainer_exit_code(rayjob: dict[str, Any], pods: list[dict]) -> int | None:
    """The trainer's exit code: a container that ended with one, else the Ray job's failure message."""
    for pod in pods:
        for cs in _statuses(pod):
            for state in ((cs.get("state") or {}).get("terminated"), (cs.get("lastState") or {}).get("terminated")):
                if state and state.get("exitCode") in TRAINER_CODES:
                    return int(state["exitCode"])
    match = _EXIT_RE.search((rayjob.get("status") or {}).get("message") or "")
    return int(match.group(1)) if match else None


def head_lost(rayjob: dict[str, Any], pods: list[dict], nodes: dict[str, dict | None]) -> str | None:
    """Why the head (and so the driver) is gone, or None while it lives or has not started yet."""
    heads = [p for p in pods if is_head(p)]
    deploy = (rayjob.get("status") or {}).get("jobDeploymentStatus", "")
    if not heads:
        return "the head pod is gone" if deploy == "Running" else None
    head = heads[0]
    node_name = (head.get("spec") or {}).get("nodeName")
    if node_name and node_name in nodes and nodes[node_name] is None:
        return f"head pod {_name(head)}'s node {node_name} disappeared"
    if (head.get("metadata") or {}).get("deletionTimestamp"):
        return f"head pod {_name(head)} is being deleted"
    if (head.get("status") or {}).get("phase") in ("Failed", "Succeeded"):
        return f"head pod {_name(head)} ended ({head['status']['phase']})"
    if any(int(cs.get("restartCount") or 0) > 0 for cs in _statuses(head)):
        return f"head pod {_name(head)} restarted (the Ray driver died with it)"
    return None


def _ended(rayjob: dict[str, Any], pods: list[dict], evidence: Evidence | None) -> AttemptStatus:
    st = rayjob.get("status") or {}
    if st.get("jobStatus") == "SUCCEEDED":
        return AttemptStatus(RunState.EXITED, exit_code=0, reason=EndReason.SUCCEEDED, message="Ray job succeeded")
    code = trainer_exit_code(rayjob, pods)
    if evidence:
        return AttemptStatus(RunState.EXITED, exit_code=code, reason=evidence.reason, message=evidence.message)
    message = st.get("message") or f"RayJob {st.get('jobDeploymentStatus', '')} / {st.get('jobStatus', '')}"
    return AttemptStatus(RunState.EXITED, exit_code=code, reason=reason_for_exit(code), message=message[:500])


def rayjob_attempt_status(rayjob: dict[str, Any], pods: list[dict], nodes: dict[str, dict | None],
                          events: list[dict], spot_taints: Iterable[str] = DEFAULT_SPOT_TAINTS,
                          now: float | None = None, pull_seen_at: float | None = None,
                          pull_grace_s: float = 0.0) -> AttemptStatus:
    """The attempt's state from one snapshot of the RayJob, its pods, their nodes and events.
    ``pull_seen_at``: when the caller first saw the current image pull error (none: no grace)."""
    status = _classify(rayjob, pods, nodes, events, spot_taints)
    pull = image_pull_failure(pods)
    if pull is None:
        return status
    waited = now - pull_seen_at if now is not None and pull_seen_at is not None else float("inf")
    if waited >= pull_grace_s:
        return _pull_ended(pull, waited)
    if status.state is RunState.STARTING:
        left = pull_grace_s - waited
        return AttemptStatus(RunState.STARTING, message=f"pulling image {pull.image} failed ({pull.reason} "
                             f"{pull.detail}".rstrip() + f"); failing in {left:.0f}s unless it succeeds")
    return status  # within the grace the pull error is not yet evidence: other evidence decides


def _classify(rayjob: dict[str, Any], pods: list[dict], nodes: dict[str, dict | None],
              events: list[dict], spot_taints: Iterable[str]) -> AttemptStatus:
    st = rayjob.get("status") or {}
    evidence = disruption(pods, nodes, events, spot_taints)
    if st.get("jobDeploymentStatus") in _TERMINAL_DEPLOY or st.get("jobStatus") in _TERMINAL_JOB:
        return _ended(rayjob, pods, evidence)
    lost = head_lost(rayjob, pods, nodes)
    if lost:
        head_evidence = disruption([p for p in pods if is_head(p)], _head_nodes(pods, nodes), events, spot_taints)
        reason = head_evidence.reason if head_evidence else EndReason.WORKER_LOST
        message = f"{lost}; {head_evidence.message}" if head_evidence else lost
        return AttemptStatus(RunState.EXITED, reason=reason, message=message)
    if st.get("jobDeploymentStatus") == "Running":
        note = f"trainer is checkpointing after: {evidence.message}" if evidence else ""
        return AttemptStatus(RunState.RUNNING, message=note)
    waiting = f"RayJob {st.get('jobDeploymentStatus') or 'submitted'}: starting the Ray cluster"
    return AttemptStatus(RunState.STARTING, message=unschedulable(pods) or waiting)


def _head_nodes(pods: list[dict], nodes: dict[str, dict | None]) -> dict[str, dict | None]:
    names = {(p.get("spec") or {}).get("nodeName") for p in pods if is_head(p)}
    return {n: nodes[n] for n in names if n in nodes}
