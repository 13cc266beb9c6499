"""Each job's per-step training metrics, kept from its heartbeats and bounded for long runs.

The rule (docs/manager.md, "Metric history"): a job keeps at most ``MAX_POINTS_PER_JOB`` points.
Its steps are cut into buckets of ``stride`` steps, the smallest power of two that covers the
highest recorded step in ``BUCKETS`` buckets; an attempt keeps one point per bucket, the newest
step of it, so the curve's tail is always the latest heartbeat. When the highest step crosses
``BUCKETS x stride`` the stride doubles and every older point is thinned to it, so a run's history
stays uniformly spaced whatever its length. Attempts that repeat steps after a resume keep their
own points (the curve shows both); if they ever push a job past the bound, the history is thinned
at twice the stride until it fits. Every write happens inside the heartbeat's transaction, which
holds the job's row lock, so two heartbeats of one job never thin at once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from orchestrator.contract import Heartbeat
from orchestrator.manager.models import MetricPoint
from orchestrator.manager.store import Store

MAX_POINTS_PER_JOB = 2000
BUCKETS = MAX_POINTS_PER_JOB // 2   # half the bound: room for attempts that repeat steps after a resume
CHECK_EVERY = 8                     # buckets between two counts of a job's points (the count is a scan)
METRICS = ("loss", "mlm_accuracy", "nsp_accuracy", "lr", "tokens_per_s")
POINT_FIELDS = ("attempt", "step", "at", *METRICS, "world_size", "sample_digest")


def stride_for(step: int) -> int:
    """The bucket width for a history whose highest step is ``step``: a power of two."""
    stride = 1
    while step > BUCKETS * stride:
        stride *= 2
    return stride


def _values(hb: Heartbeat) -> dict[str, Any]:
    values = {k: getattr(hb, k) for k in _VALUES}
    # The data ledger's chain value, once heartbeats carry one (the column waits for it).
    values["sample_digest"] = getattr(hb, "sample_digest", None)
    return values


# Built once: building SQLAlchemy expressions costs more than running them, and this is the heartbeat
# hot path. ``p_*`` are the point's key, ``v_*`` its values; a merge keeps a stored value the heartbeat lacks.
_T = MetricPoint.__table__
_VALUES = (*METRICS, "world_size")
_VALUE_COLUMNS = (*_VALUES, "sample_digest")
_JOB = _T.c.job_id == bindparam("p_job")
_MINE = _JOB & (_T.c.attempt == bindparam("p_attempt"))
# The job's highest step, this attempt's newest step below this one, whether it has this one, and its
# oldest step above: index seeks in one round trip. An attempt keeps one point per bucket, so the step
# below is the only other one that can share this step's bucket.
_STEP = bindparam("p_step")
_NEIGHBOURHOOD = select(*(select(agg).where(where).scalar_subquery() for agg, where in (
    (func.max(_T.c.step), _JOB), (func.max(_T.c.step), _MINE & (_T.c.step < _STEP)),
    (func.count(), _MINE & (_T.c.step == _STEP)), (func.min(_T.c.step), _MINE & (_T.c.step > _STEP)))))
_MERGE = _T.update().where(_MINE & (_T.c.step == bindparam("p_step"))).values(
    {c: func.coalesce(bindparam(f"v_{c}"), _T.c[c]) for c in _VALUE_COLUMNS})
_MOVE = _T.update().where(_MINE & (_T.c.step == bindparam("p_below"))).values(
    {"step": bindparam("p_step"), "at": bindparam("p_now"), **{c: bindparam(f"v_{c}") for c in _VALUE_COLUMNS}})
_INSERT = _T.insert().values({"job_id": bindparam("p_job"), "attempt": bindparam("p_attempt"),
                              "step": bindparam("p_step"), "at": bindparam("p_now"),
                              **{c: bindparam(f"v_{c}") for c in _VALUE_COLUMNS}})


def record_point(s: Session, job_id: str, attempt: int, hb: Heartbeat, now: float) -> None:
    """Keep this heartbeat's step in the job's history (call with the job's row locked).

    A heartbeat without any metric (an attempt's final word) only completes the point of its step,
    if there is one: a point is a measurement, never a placeholder. This runs on every heartbeat:
    one round trip of index lookups and one write, and a count only now and then (``_check_bound``)."""
    values = _values(hb)
    if hb.step < 1 or all(v is None for v in values.values()):
        return
    params = {"p_job": job_id, "p_attempt": attempt, "p_step": hb.step, "p_now": now,
              **{f"v_{k}": v for k, v in values.items()}}
    top, below, same, above = s.execute(_NEIGHBOURHOOD, params).one()
    stride = stride_for(max(top or 0, hb.step))
    if top is not None and stride > stride_for(top):
        _check_bound(s, job_id, stride, thin(s, job_id, stride))  # thinning keeps ``below``: newest of its bucket
    bucket = hb.step // stride
    if above is not None and above // stride == bucket:
        return  # a late heartbeat: a newer step already stands for this bucket
    if same or all(values[k] is None for k in (*METRICS, "sample_digest")):
        s.execute(_MERGE, params)
    elif below is not None and below // stride == bucket:  # the bucket's point moves on to this step
        s.execute(_MOVE, {**params, "p_below": below})
    else:
        s.execute(_INSERT, params)
        if below is None or below // stride // CHECK_EVERY != bucket // CHECK_EVERY:
            _check_bound(s, job_id, stride)


def _check_bound(s: Session, job_id: str, stride: int, count: int | None = None) -> None:
    """Counted at an attempt's first point, at every ``CHECK_EVERY``-th bucket and after thinning: at most
    CHECK_EVERY - 1 points come between two counts, so keeping a counted job at or below
    MAX_POINTS_PER_JOB - CHECK_EVERY keeps every job at or below MAX_POINTS_PER_JOB."""
    if count is None:
        count = s.scalar(select(func.count()).where(MetricPoint.job_id == job_id))
    if count > MAX_POINTS_PER_JOB - CHECK_EVERY:
        _enforce_bound(s, job_id, stride * 2)


def thin(s: Session, job_id: str, stride: int) -> int:
    """Keep one point per (attempt, bucket of ``stride`` steps), its newest step; the points left."""
    rows = s.execute(select(MetricPoint.id, MetricPoint.attempt, MetricPoint.step)
                     .where(MetricPoint.job_id == job_id)).all()
    newest: dict[tuple[int, int], tuple[int, int]] = {}
    for id_, attempt, step in rows:
        key = (attempt, step // stride)
        if key not in newest or step > newest[key][0]:
            newest[key] = (step, id_)
    keep = {id_ for _, id_ in newest.values()}
    _delete_ids(s, [r[0] for r in rows if r[0] not in keep])
    return len(keep)


def _enforce_bound(s: Session, job_id: str, stride: int) -> None:
    """Thin at doubling strides until the job has room again; past one bucket per attempt (more attempts
    than the bound, in theory), the oldest points go."""
    limit = MAX_POINTS_PER_JOB - CHECK_EVERY
    top = s.scalar(select(func.max(MetricPoint.step)).where(MetricPoint.job_id == job_id)) or 0
    count = thin(s, job_id, stride)
    while count > limit and stride <= top:
        stride *= 2
        count = thin(s, job_id, stride)
    if count > limit:
        oldest = s.scalars(select(MetricPoint.id).where(MetricPoint.job_id == job_id)
                           .order_by(MetricPoint.at, MetricPoint.id).limit(count - limit))
        _delete_ids(s, list(oldest))


def _delete_ids(s: Session, ids: list[int]) -> None:
    for start in range(0, len(ids), 500):  # well under SQLite's bound on query parameters
        s.execute(delete(MetricPoint).where(MetricPoint.id.in_(ids[start:start + 500]))
                  .execution_options(synchronize_session=False))


def history(store: Store, job_id: str, since_step: int = 0, max_points: int = MAX_POINTS_PER_JOB) -> list[dict]:
    """The job's points with a step above ``since_step``, by attempt then step; at most ``max_points``,
    picked evenly and always with the first and the newest."""
    q = (select(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > since_step)
         .order_by(MetricPoint.attempt, MetricPoint.step))
    with store.tx(durable=False) as s:
        points = [{k: getattr(p, k) for k in POINT_FIELDS} for p in s.scalars(q)]
    return evenly(points, max_points)


def evenly(items: list, limit: int) -> list:
    """``limit`` items spread evenly over ``items``, the first and the last among them."""
    if len(items) <= limit:
        return items
    if limit == 1:
        return items[-1:]
    last = len(items) - 1
    return [items[round(i * last / (limit - 1))] for i in range(limit)]
