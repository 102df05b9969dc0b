"""Job success probability: how likely a job of a given type is to succeed on a device.

Two stages, both learned from ``job_outcomes`` alone (plus the error log, the state history,
the configuration history and the anomaly episodes for the device's recent health):

1. **Shrinkage** (empirical Bayes): the success rate of the job type in the fleet, then at the
   device's site, then on the device itself, each level pulled towards the one above by a
   prior worth a fixed number of outcomes (``PRIOR_STRENGTH``). A new device gets its site's
   rate, a new site the fleet's, a new fleet a weak prior of 90 %.
2. **Context** (logistic regression): the shrunk rate's log-odds next to what else is known at
   the moment the job starts: the job type's record on the device's firmware and
   configuration versions and at that hour of the site's day (each as a log-odds difference
   from the job type's rate), the device's record over every job type (a defect of its own
   fails them all), jobs that failed on the device in the last 24 h, errors it
   logged in the last 6 h, whether it is down now, and its active anomalies. The regression
   also recalibrates the shrunk rate. It is fitted only when the history holds enough
   failures (``MIN_FAILURES``); until then the shrunk rate is the answer.

Every feature of a past job is computed from what had finished before that job started, so
the fit never sees the future, and the benchmark (``benchmarks/job_success.py``) replays a
held-out history job by job under the same rule.

The reasons are sentences about the evidence that moved the estimate most ("3 of the last 4
firmware updates on this terminal timed out").

numpy is imported here, so import this module only where insights run.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

# Pseudo-counts of the prior at each level: how many outcomes of its own a level needs before
# its rate weighs as much as its parent's. Chosen on the training seed (benchmarks/README.md).
PRIOR_STRENGTH = {"job_type": 20.0, "site": 15.0, "device": 6.0, "context": 3.0}
# Without any history: 90 % success, worth 10 jobs.
EMPTY_FLEET_PRIOR = (9.0, 1.0)
MIN_FAILURES = 10
# L2 penalty of the context model's coefficients (per standardised feature).
PENALTY = 10.0
MIN_OUTCOMES = 100
RECENT_OUTCOMES = 10
FAILED = frozenset({"failed", "timeout"})
# Finished outcomes that count: a cancelled execution says nothing about the device.
COUNTED = frozenset({"success", "failed", "timeout"})
DOWN_STATES = frozenset({"offline", "error"})
# The first features are the shrinkage's levels: their sum is the shrunk rate's log-odds.
SHRINKAGE_FEATURES = 3
FEATURES = (
    "job_type_log_odds",
    "site_effect",
    "device_effect",
    "terminal_effect",
    "firmware_effect",
    "config_effect",
    "hardware_effect",
    "hour_effect",
    "failed_jobs_24h",
    "errors_6h",
    "down_now",
    "down_now_restart",
    "active_anomalies",
)
_DAY = 86_400.0
_HOUR = 3_600.0
_NOUNS = {
    "firmware_update": ("firmware update", "firmware updates"),
    "config_change": ("configuration change", "configuration changes"),
    "restart": ("restart", "restarts"),
    "health_check": ("health check", "health checks"),
}


def nouns(job_type: str) -> tuple[str, str]:
    fallback = job_type.replace("_", " ")
    return _NOUNS.get(job_type, (f"{fallback} job", f"{fallback} jobs"))


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@dataclass(frozen=True)
class Outcome:
    started: float  # epoch seconds
    finished: float
    job_type: str
    device_id: str
    status: str

    @property
    def succeeded(self) -> bool:
        return self.status == "success"


@dataclass
class JobHistory:
    """Everything the model reads, as sorted lists of epoch seconds per device."""

    outcomes: list[Outcome]  # sorted by start
    device_sites: dict[str, str | None]
    site_zones: dict[str, ZoneInfo]
    device_types: dict[str, str] = field(default_factory=dict)
    firmware: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    config: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    errors: dict[str, list[float]] = field(default_factory=dict)
    states: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    # (start, end or +inf, metric)
    anomalies: dict[str, list[tuple[float, float, str]]] = field(default_factory=dict)

    def version_at(self, kind: str, device_id: str, moment: float) -> str:
        """The firmware or config version a device ran at ``moment``: the last change seen
        before it, or ``as registered`` when none had been seen yet."""
        changes = (self.firmware if kind == "firmware" else self.config).get(device_id, ())
        index = bisect.bisect_right(changes, (moment, "\uffff"))
        return changes[index - 1][1] if index else "as registered"

    def local_hour(self, device_id: str, moment: float) -> int:
        site = self.device_sites.get(device_id)
        zone = self.site_zones.get(site or "", UTC)
        return datetime.fromtimestamp(moment, zone).hour

    def errors_between(self, device_id: str, start: float, end: float) -> int:
        times = self.errors.get(device_id, [])
        return bisect.bisect_left(times, end) - bisect.bisect_left(times, start)

    def state_at(self, device_id: str, moment: float) -> tuple[str | None, float | None]:
        changes = self.states.get(device_id, [])
        index = bisect.bisect_right(changes, (moment, "\uffff"))
        return (changes[index - 1][1], changes[index - 1][0]) if index else (None, None)

    def anomalies_at(self, device_id: str, moment: float) -> list[str]:
        return [
            metric
            for start, end, metric in self.anomalies.get(device_id, ())
            if start <= moment < end
        ]


@dataclass
class _Tally:
    outcomes: int = 0
    successes: int = 0

    def add(self, succeeded: bool) -> None:
        self.outcomes += 1
        self.successes += succeeded

    def shrunk(self, prior: float, strength: float) -> float:
        return (self.successes + strength * prior) / (self.outcomes + strength)


@dataclass
class Evidence:
    """What the estimate for one (job type, device, moment) rests on."""

    job_type: str
    device_id: str
    site_id: str | None
    fleet_rate: float
    type_rate: float
    site_rate: float
    device_rate: float
    basis: dict[str, int]
    fleet_successes: int
    site_tally: _Tally
    terminal_tally: _Tally
    recent: list[str]  # statuses of the device's latest outcomes of this type, newest first
    firmware: str
    firmware_tally: _Tally
    config: str
    config_tally: _Tally
    hardware: str
    hardware_tally: _Tally
    hour: int
    hour_tally: _Tally
    failed_jobs_24h: int
    errors_6h: int
    down: tuple[str | None, float | None]
    anomalies: list[str]
    features: list[float]


class _Counts:
    """Success tallies at every level, fed one finished outcome at a time."""

    def __init__(self, history: JobHistory) -> None:
        self.history = history
        self.fleet = _Tally()
        self.by_type: defaultdict[str, _Tally] = defaultdict(_Tally)
        self.by_site: defaultdict[tuple[str, str | None], _Tally] = defaultdict(_Tally)
        self.by_device: defaultdict[tuple[str, str], _Tally] = defaultdict(_Tally)
        self.by_terminal: defaultdict[str, _Tally] = defaultdict(_Tally)
        self.by_context: defaultdict[tuple[str, str, Any], _Tally] = defaultdict(_Tally)
        self.recent: defaultdict[tuple[str, str], deque[str]] = defaultdict(
            lambda: deque(maxlen=RECENT_OUTCOMES)
        )
        self.failures: defaultdict[str, list[float]] = defaultdict(list)

    def add(self, outcome: Outcome) -> None:
        history = self.history
        succeeded = outcome.succeeded
        job_type, device_id = outcome.job_type, outcome.device_id
        self.fleet.add(succeeded)
        self.by_type[job_type].add(succeeded)
        self.by_site[(job_type, history.device_sites.get(device_id))].add(succeeded)
        self.by_device[(job_type, device_id)].add(succeeded)
        self.by_terminal[device_id].add(succeeded)
        for context in self._contexts(outcome.job_type, device_id, outcome.started):
            self.by_context[context].add(succeeded)
        self.recent[(job_type, device_id)].appendleft(outcome.status)
        if not succeeded:
            bisect.insort(self.failures[device_id], outcome.finished)

    def _contexts(self, job_type: str, device_id: str, moment: float) -> list[tuple[str, str, Any]]:
        history = self.history
        return [
            (job_type, "firmware", history.version_at("firmware", device_id, moment)),
            (job_type, "config", history.version_at("config", device_id, moment)),
            (job_type, "hardware", history.device_types.get(device_id, "unknown")),
            (job_type, "hour", history.local_hour(device_id, moment)),
        ]

    def evidence(self, job_type: str, device_id: str, moment: float) -> Evidence:
        history = self.history
        strength = PRIOR_STRENGTH
        if self.fleet.outcomes:
            fleet_rate = self.fleet.shrunk(EMPTY_FLEET_PRIOR[0] / sum(EMPTY_FLEET_PRIOR), 2.0)
        else:
            fleet_rate = EMPTY_FLEET_PRIOR[0] / sum(EMPTY_FLEET_PRIOR)
        type_tally = self.by_type[job_type] if job_type in self.by_type else _Tally()
        type_rate = type_tally.shrunk(fleet_rate, strength["job_type"])
        site_id = history.device_sites.get(device_id)
        site_tally = self.by_site.get((job_type, site_id), _Tally())
        site_rate = site_tally.shrunk(type_rate, strength["site"])
        device_tally = self.by_device.get((job_type, device_id), _Tally())
        device_rate = device_tally.shrunk(site_rate, strength["device"])
        contexts = self._contexts(job_type, device_id, moment)
        tallies = [self.by_context.get(context, _Tally()) for context in contexts]
        effects = [
            _logit(tally.shrunk(type_rate, strength["context"])) - _logit(type_rate)
            for tally in tallies
        ]
        # The terminal's record over every job type, against the fleet's: a defect of its own
        # shows in all of them.
        terminal_tally = self.by_terminal.get(device_id, _Tally())
        terminal_effect = _logit(terminal_tally.shrunk(fleet_rate, strength["device"])) - _logit(
            fleet_rate
        )
        failures = self.failures.get(device_id, [])
        failed_24h = bisect.bisect_left(failures, moment) - bisect.bisect_left(
            failures, moment - _DAY
        )
        errors_6h = history.errors_between(device_id, moment - 6 * _HOUR, moment)
        state, since = history.state_at(device_id, moment)
        down = state in DOWN_STATES
        # A restart is how a down terminal comes back: being down says the opposite for it.
        restart = job_type == "restart"
        anomalies = history.anomalies_at(device_id, moment)
        features = [
            _logit(type_rate),
            _logit(site_rate) - _logit(type_rate),
            _logit(device_rate) - _logit(site_rate),
            terminal_effect,
            *effects,
            math.log1p(failed_24h),
            math.log1p(errors_6h),
            float(down and not restart),
            float(down and restart),
            float(len(anomalies)),
        ]
        return Evidence(
            job_type=job_type,
            device_id=device_id,
            site_id=site_id,
            fleet_rate=fleet_rate,
            type_rate=type_rate,
            site_rate=site_rate,
            device_rate=device_rate,
            basis={
                "device": device_tally.outcomes,
                "site": site_tally.outcomes,
                "job_type": type_tally.outcomes,
                "fleet": self.fleet.outcomes,
            },
            fleet_successes=self.fleet.successes,
            site_tally=site_tally,
            terminal_tally=terminal_tally,
            recent=list(self.recent.get((job_type, device_id), ())),
            firmware=str(contexts[0][2]),
            firmware_tally=tallies[0],
            config=str(contexts[1][2]),
            config_tally=tallies[1],
            hardware=str(contexts[2][2]),
            hardware_tally=tallies[2],
            hour=int(contexts[3][2]),
            hour_tally=tallies[3],
            failed_jobs_24h=failed_24h,
            errors_6h=errors_6h,
            down=(state, since) if state in DOWN_STATES else (None, None),
            anomalies=anomalies,
            features=features,
        )


def replay(history: JobHistory) -> tuple[np.ndarray, np.ndarray, list[Evidence]]:
    """Each past outcome's features from what had finished before its job started, its
    label (1 = success), and the evidence (for the benchmark's calibration table)."""
    counts = _Counts(history)
    pending: list[tuple[float, int]] = []
    rows: list[list[float]] = []
    labels: list[int] = []
    evidence: list[Evidence] = []
    for index, outcome in enumerate(history.outcomes):
        while pending and pending[0][0] <= outcome.started:
            counts.add(history.outcomes[heapq.heappop(pending)[1]])
        found = counts.evidence(outcome.job_type, outcome.device_id, outcome.started)
        rows.append(found.features)
        labels.append(int(outcome.succeeded))
        evidence.append(found)
        heapq.heappush(pending, (outcome.finished, index))
    matrix = np.array(rows, dtype=float) if rows else np.empty((0, len(FEATURES)))
    return matrix, np.array(labels, dtype=int), evidence


def counts_until(history: JobHistory, moment: float) -> _Counts:
    counts = _Counts(history)
    for outcome in history.outcomes:
        if outcome.finished <= moment:
            counts.add(outcome)
    return counts


@dataclass
class ContextModel:
    """The logistic regression on top of the shrunk rate; None coefficients: not fitted.

    The shrunk rate's log-odds is an offset: the regression learns how the context moves a
    job away from its device's shrunk rate (and, penalised towards none, how much to trust
    each level of it), so a fleet whose base rate differs from the one it was fitted on
    keeps its own level.
    """

    coefficients: np.ndarray | None = None
    intercept: float = 0.0
    means: np.ndarray = field(default_factory=lambda: np.zeros(len(FEATURES)))
    scales: np.ndarray = field(default_factory=lambda: np.ones(len(FEATURES)))
    samples: int = 0
    failures: int = 0

    @property
    def name(self) -> str:
        return "shrinkage+context" if self.coefficients is not None else "shrinkage"

    def log_odds(self, features: Sequence[float]) -> float:
        offset = float(sum(features[:SHRINKAGE_FEATURES]))
        if self.coefficients is None:
            return offset
        scaled = (np.asarray(features, dtype=float) - self.means) / self.scales
        return offset + float(self.intercept + scaled @ self.coefficients)

    def probability(self, features: Sequence[float]) -> float:
        return _sigmoid(self.log_odds(features))

    def contributions(self, features: Sequence[float]) -> list[float]:
        """How far each feature moves the log-odds from an average job's."""
        values = np.asarray(features, dtype=float)
        moved = np.zeros(len(FEATURES))
        moved[:SHRINKAGE_FEATURES] = values[:SHRINKAGE_FEATURES] - self.means[:SHRINKAGE_FEATURES]
        if self.coefficients is not None:
            moved += (values - self.means) / self.scales * self.coefficients
        return [float(value) for value in moved]


def logistic_regression(
    scaled: np.ndarray,
    labels: np.ndarray,
    offset: np.ndarray,
    penalty: float = PENALTY,
    steps: int = 50,
) -> tuple[np.ndarray, float]:
    """L2-penalised logistic regression with an offset (the intercept unpenalised), by
    Newton's method. Written here because the model needs the shrunk log-odds as a fixed
    offset, which scikit-learn's LogisticRegression has no parameter for (a feature would
    get a coefficient of its own); milliseconds for thousands of jobs."""
    rows, columns = scaled.shape
    design = np.hstack([np.ones((rows, 1)), scaled])
    weights = np.zeros(columns + 1)
    prior = np.full(columns + 1, penalty)
    prior[0] = 0.0
    for _ in range(steps):
        predicted = 1 / (1 + np.exp(-np.clip(offset + design @ weights, -30, 30)))
        gradient = design.T @ (predicted - labels) + prior * weights
        curvature = (design * (predicted * (1 - predicted))[:, None]).T @ design
        step = np.linalg.solve(curvature + np.diag(prior + 1e-9), gradient)
        weights -= step
        if np.max(np.abs(step)) < 1e-8:
            break
    return weights[1:], float(weights[0])


def fit(matrix: np.ndarray, labels: np.ndarray) -> ContextModel:
    """The context model, or an unfitted one (the shrunk rate alone) without enough failures."""
    failures = int(labels.size - labels.sum())
    model = ContextModel(samples=int(labels.size), failures=failures)
    if labels.size:
        model.means = matrix.mean(axis=0)
    if labels.size < MIN_OUTCOMES or failures < MIN_FAILURES or labels.sum() < MIN_FAILURES:
        return model
    scales = matrix.std(axis=0)
    scales[scales < 1e-9] = 1.0
    scaled = (matrix - model.means) / scales
    offset = matrix[:, :SHRINKAGE_FEATURES].sum(axis=1)
    coefficients, intercept = logistic_regression(scaled, labels, offset)
    model.coefficients, model.intercept = coefficients, intercept
    model.scales = scales
    return model


# --- reasons ----------------------------------------------------------------------------------


def _percent(value: float) -> str:
    return f"{value * 100:.0f} %"


def _ended(statuses: Iterable[str]) -> str:
    failed = [status for status in statuses if status in FAILED]
    if failed and all(status == "timeout" for status in failed):
        return "timed out"
    if failed and all(status == "failed" for status in failed):
        return "failed"
    return "failed or timed out"


def _record_sentence(found: Evidence) -> str:
    one, many = nouns(found.job_type)
    recent = found.recent[:4] if len(found.recent) >= 4 else found.recent
    if recent:
        failed = sum(status in FAILED for status in recent)
        if failed == 0:
            if len(recent) == 1:
                return f"The last {one} on this terminal succeeded"
            return f"The last {len(recent)} {many} on this terminal all succeeded"
        if len(recent) == 1:
            return f"The only {one} on this terminal so far {_ended(recent)}"
        return f"{failed} of the last {len(recent)} {many} on this terminal {_ended(recent)}"
    site = found.site_tally
    if site.outcomes:
        return (
            f"No {one} has run on this terminal yet; at its site {site.successes} of "
            f"{site.outcomes} succeeded (fleet: {_percent(found.type_rate)})"
        )
    if found.basis["job_type"]:
        return (
            f"No {one} has run on this terminal or its site yet; the fleet's rate is "
            f"{_percent(found.type_rate)} over {found.basis['job_type']} {many}"
        )
    if found.basis["fleet"]:
        return (
            f"No {one} has run in the fleet yet; the estimate rests on every job type "
            f"({found.fleet_successes} of {found.basis['fleet']} jobs succeeded)"
        )
    return f"No {one} has run in the fleet yet: the estimate is a prior, not evidence"


def _site_sentence(found: Evidence) -> str | None:
    site = found.site_tally
    if not site.outcomes or found.site_id is None or not found.basis["device"]:
        return None  # a new terminal's record sentence already names its site's
    _, many = nouns(found.job_type)
    return (
        f"At its site {found.site_id}, {site.successes} of {site.outcomes} {many} succeeded "
        f"(fleet: {_percent(found.type_rate)})"
    )


def _terminal_sentence(found: Evidence) -> str | None:
    tally = found.terminal_tally
    if not tally.outcomes:
        return None
    failed = tally.outcomes - tally.successes
    return (
        f"Over every job type, {failed} of its {tally.outcomes} jobs failed "
        f"(fleet: {_percent(1 - found.fleet_rate)})"
    )


def _context_sentence(kind: str, found: Evidence) -> str | None:
    _, many = nouns(found.job_type)
    tally = {
        "firmware": found.firmware_tally,
        "config": found.config_tally,
        "hardware": found.hardware_tally,
        "hour": found.hour_tally,
    }[kind]
    if not tally.outcomes:
        return None
    rate = tally.successes / tally.outcomes
    if kind == "firmware":
        where = (
            f"on firmware {found.firmware}"
            if found.firmware != "as registered"
            else "on terminals still on the firmware they registered with"
        )
    elif kind == "config":
        where = (
            f"on configuration {found.config}"
            if found.config != "as registered"
            else "on terminals still on the configuration they registered with"
        )
    elif kind == "hardware":
        where = f"on {found.hardware} terminals"
    else:
        where = f"between {found.hour:02d}:00 and {(found.hour + 1) % 24:02d}:00 site time"
    return (
        f"{many.capitalize()} {where} succeeded {_percent(rate)} of {tally.outcomes} times "
        f"(all {many}: {_percent(found.type_rate)})"
    )


def _health_sentence(kind: str, found: Evidence) -> str | None:
    if kind == "failed_jobs_24h" and found.failed_jobs_24h:
        count = found.failed_jobs_24h
        return f"{count} job{'s' if count > 1 else ''} failed on this terminal in the last 24 h"
    if kind == "errors_6h" and found.errors_6h:
        count = found.errors_6h
        return f"It logged {count} error{'s' if count > 1 else ''} in the last 6 h"
    if kind in ("down_now", "down_now_restart") and found.down[0] is not None:
        state, since = found.down
        assert since is not None
        return f"It is {state} now (since {datetime.fromtimestamp(since, UTC):%Y-%m-%d %H:%M} UTC)"
    if kind == "active_anomalies" and found.anomalies:
        metrics = ", ".join(sorted(set(found.anomalies)))
        count = len(found.anomalies)
        return f"{count} active anomal{'ies' if count > 1 else 'y'} ({metrics})"
    return None


def reasons(model: ContextModel, found: Evidence, top: int = 3) -> list[str]:
    """The sentences behind the estimate, the evidence that moved it most first. The device's
    own record (or the lack of one) is always among them."""
    contributions = model.contributions(found.features)
    ranked = sorted(range(len(FEATURES)), key=lambda index: -abs(contributions[index]))
    record = _record_sentence(found)
    sentences: list[str] = []
    for index in ranked:
        name = FEATURES[index]
        sentence: str | None
        if name == "device_effect":
            sentence = record
        elif name == "job_type_log_odds" or abs(contributions[index]) < 0.05:
            continue
        elif name == "site_effect":
            sentence = _site_sentence(found)
        elif name == "terminal_effect":
            sentence = _terminal_sentence(found)
        elif name.endswith("_effect"):
            sentence = _context_sentence(name.removesuffix("_effect"), found)
        else:
            sentence = _health_sentence(name, found)
        if sentence:
            sentences.append(sentence)
        if len(sentences) >= top:
            break
    if record not in sentences:
        sentences = sentences[: top - 1] + [record]
    return sentences


# --- rows ---------------------------------------------------------------------------------


def outcome_from_row(
    finished: datetime, duration_ms: int | None, job_type: str, device_id: str, status: str
) -> Outcome:
    """An outcome row as the model reads it: the job started ``duration_ms`` before it ended."""
    end = finished.timestamp()
    return Outcome(end - (duration_ms or 0) / 1000, end, job_type, device_id, status)
