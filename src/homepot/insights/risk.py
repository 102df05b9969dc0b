"""Failure risk: a model learned from the database's own history, and how it is scored.

``train`` fits a scikit-learn gradient-boosting classifier on the samples of
:mod:`homepot.insights.features` and validates it on a held-out later period (the last quarter
of the range, after a gap of one horizon so that no failure is seen from both sides). The
model file carries its metadata: features, training range, horizon, validation figures, the
features' training medians and spreads, and their permutation importance, which is how each
score is explained ("memory rising +5.2 points/h", in the factors of a ``device_risk`` row).

A model file is a pickle: load only files you trained (``HOMEPOT_INSIGHTS__MODEL_PATH`` is an
administrator's setting). A file whose features differ from this version's is refused.
"""

from __future__ import annotations

import math
import pickle
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from homepot.insights.features import FEATURES, Samples

MODEL_FORMAT = 1
# Share of the range, at its end, held out for validation.
VALIDATION_SHARE = 0.25
MIN_POSITIVES = 5

_LABELS = {
    "last": ("{metric} now", "{value:.1f}"),
    "mean_1h": ("{metric} over the last hour", "{value:.1f}"),
    "slope_3h": ("{metric} trend", "{value:+.1f} per h"),
    "dev_24h": ("{metric} against its usual level", "{value:+.1f} robust z"),
    "excess_24h": ("{metric} above its usual highest", "{value:+.1f}"),
}
_METRIC_NAMES = {
    "cpu": "CPU %",
    "memory": "memory %",
    "disk": "disk %",
    "latency": "network latency ms",
    "error_rate": "transaction error rate %",
}
_COUNT_LABELS = {
    "memory_hours_to_limit": "hours until memory reaches 98 % at its trend",
    "errors_critical_1h": "critical errors in the last hour",
    "errors_critical_6h": "critical errors in 6 h",
    "errors_error_6h": "errors in 6 h",
    "errors_warning_6h": "warnings in 6 h",
    "errors_external_6h": "external-service errors in 6 h",
    "jobs_failed_24h": "failed jobs in 24 h",
    "state_changes_6h": "state changes in 6 h",
    "config_changes_6h": "configuration changes in 6 h",
    "failures_2h": "failures in the last 2 h",
    "failures_24h": "failures in 24 h",
    "minutes_since_failure": "minutes since its last failure",
    "hours_until_close": "hours until its site closes",
    "hours_since_online": "hours since it came online",
    "minutes_since_report": "minutes since its last report",
    "warnings_api_30m": "connection warnings in 30 min",
    "warnings_api_1h": "connection warnings in the last hour",
    "warnings_external_30m": "external-service warnings in 30 min",
    "warnings_external_1h": "external-service warnings in the last hour",
}
_RATIO_LABELS = {
    "latency_jitter_30m": ("network latency jitter over 30 min against its usual", "×{value:.1f}"),
    "latency_jitter_1h": ("network latency jitter over the hour against its usual", "×{value:.1f}"),
    "peers_failed_1h": (
        "share of its site's other devices that failed in the last hour",
        "{value:.0%}",
    ),
    "peers_critical_1h": (
        "critical errors per other device of its site in the last hour",
        "{value:.1f}",
    ),
    "peers_warnings_external_1h": (
        "external-service warnings per other device of its site in the last hour",
        "{value:.1f}",
    ),
}


class ModelError(Exception):
    """The model cannot be trained or loaded; the message says why."""


def describe(feature: str, value: float) -> tuple[str, str]:
    """A feature and its value as a person reads them."""
    if feature in _COUNT_LABELS:
        return _COUNT_LABELS[feature], f"{value:.0f}"
    if feature in _RATIO_LABELS:
        label, shown = _RATIO_LABELS[feature]
        return label, shown.format(value=value)
    metric, _, kind = feature.partition("_")
    if metric == "error" and kind.startswith("rate_"):
        metric, kind = "error_rate", kind.removeprefix("rate_")
    label, shown = _LABELS[kind]
    name = _METRIC_NAMES[metric]
    return label.format(metric=name), shown.format(value=value)


@dataclass
class RiskModel:
    estimator: Any
    features: tuple[str, ...]
    horizon: timedelta
    trained_since: datetime
    trained_until: datetime
    trained_at: datetime
    validation: dict[str, Any]
    medians: list[float]
    spreads: list[float]
    importance: list[float]

    @property
    def name(self) -> str:
        return f"gbm-{self.trained_at:%Y%m%dT%H%M%SZ}"

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        if matrix.shape[0] == 0:
            return np.empty(0)
        return np.asarray(self.estimator.predict_proba(matrix)[:, 1], dtype=float)

    def factors(self, row: np.ndarray, top: int = 3) -> list[dict[str, str]]:
        """The features that push this row's risk most: far from usual × important."""
        weights = []
        for index, value in enumerate(row):
            if math.isnan(value) or self.importance[index] <= 0:
                continue
            distance = abs(value - self.medians[index]) / max(self.spreads[index], 1e-6)
            weights.append((distance * self.importance[index], index))
        weights.sort(reverse=True)
        result = []
        for weight, index in weights[:top]:
            if weight <= 0:
                break
            label, shown = describe(self.features[index], float(row[index]))
            result.append({"factor": label, "value": shown})
        return result

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": MODEL_FORMAT,
            "estimator": self.estimator,
            "features": list(self.features),
            "horizon_seconds": self.horizon.total_seconds(),
            "trained_since": self.trained_since.isoformat(),
            "trained_until": self.trained_until.isoformat(),
            "trained_at": self.trained_at.isoformat(),
            "validation": self.validation,
            "medians": self.medians,
            "spreads": self.spreads,
            "importance": self.importance,
        }
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_bytes(pickle.dumps(payload))
        temporary.replace(path)


def load_model(path: Path) -> RiskModel:
    """The model in ``path``; ModelError when it is missing, unreadable or does not match."""
    try:
        payload = pickle.loads(path.read_bytes())
    except FileNotFoundError:
        raise ModelError(f"no model file at {path}") from None
    except Exception as exc:
        raise ModelError(f"{path} is not a HOMEPOT risk model: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path} is not a HOMEPOT risk model (format {MODEL_FORMAT})")
    if tuple(payload.get("features", ())) != FEATURES:
        expected, found = set(FEATURES), set(payload.get("features", ()))
        raise ModelError(
            f"{path} was trained on other features than this version computes "
            f"(missing: {sorted(expected - found)}, unknown: {sorted(found - expected)}); "
            "train it again with `homepot insights train`"
        )
    return RiskModel(
        estimator=payload["estimator"],
        features=FEATURES,
        horizon=timedelta(seconds=payload["horizon_seconds"]),
        trained_since=datetime.fromisoformat(payload["trained_since"]),
        trained_until=datetime.fromisoformat(payload["trained_until"]),
        trained_at=datetime.fromisoformat(payload["trained_at"]),
        validation=payload["validation"],
        medians=list(payload["medians"]),
        spreads=list(payload["spreads"]),
        importance=list(payload["importance"]),
    )


# Chosen on a training fleet's held-out quarter (benchmarks/risk.py --tune), never the test's.
ESTIMATOR_PARAMETERS: dict[str, Any] = {
    "max_iter": 120,
    "learning_rate": 0.1,
    "max_leaf_nodes": 15,
    "l2_regularization": 1.0,
    "min_samples_leaf": 20,
}


def make_estimator(seed: int, **overrides: Any) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        **{**ESTIMATOR_PARAMETERS, **overrides}, random_state=seed
    )


def fillable(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` with its never-observed columns as zeros: the estimator cannot bin a
    column without a value (a fleet reporting every 15 minutes has no 30-minute jitter);
    when scoring, its NaN goes where most rows went."""
    empty = np.isnan(matrix).all(axis=0)
    if not empty.any():
        return matrix
    filled = matrix.copy()
    filled[:, empty] = 0.0
    return filled


def held_out_split(moments: np.ndarray, horizon: timedelta) -> tuple[np.ndarray, np.ndarray, float]:
    """(rows to fit, rows to validate, where validation starts): the last
    ``VALIDATION_SHARE`` of the range is held out, after a gap of one horizon so that no
    failure is seen from both sides."""
    first, last = float(moments.min()), float(moments.max())
    split = last - (last - first) * VALIDATION_SHARE
    return moments < split - horizon.total_seconds(), moments >= split, split


def precision_at(scores: np.ndarray, labels: np.ndarray, share: float) -> float:
    """Precision among the ``share`` highest scores."""
    if scores.size == 0:
        return math.nan
    count = max(1, int(round(scores.size * share)))
    top = np.argsort(-scores, kind="stable")[:count]
    return float(labels[top].mean())


def evaluate(scores: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    positives = int(labels.sum())
    auc = float(roc_auc_score(labels, scores)) if 0 < positives < labels.size else None
    return {
        "samples": int(labels.size),
        "positives": positives,
        "roc_auc": None if auc is None else round(auc, 4),
        "precision_top_5pct": round(precision_at(scores, labels, 0.05), 4),
        "base_rate": round(positives / labels.size, 4) if labels.size else None,
    }


def train(
    samples: Samples,
    *,
    horizon: timedelta,
    since: datetime,
    until: datetime,
    now: datetime,
    seed: int = 0,
) -> RiskModel:
    """Fit on ``samples``; validation figures come from a model fitted on the earlier part only.

    Runs on one thread: the server shares its cores with requests, and OpenMP's spinning
    threads make a busy machine many times slower rather than faster.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _train(samples, horizon=horizon, since=since, until=until, now=now, seed=seed)


def _train(
    samples: Samples,
    *,
    horizon: timedelta,
    since: datetime,
    until: datetime,
    now: datetime,
    seed: int = 0,
) -> RiskModel:
    from sklearn.inspection import permutation_importance

    if samples.labels.sum() < MIN_POSITIVES:
        raise ModelError(
            f"only {int(samples.labels.sum())} failures in the range: a model needs at least "
            f"{MIN_POSITIVES} (widen --since/--until or shorten nothing: history is too short)"
        )
    train_rows, held_out, split = held_out_split(samples.moments, horizon)
    validation: dict[str, Any] = {"held_out_from": datetime.fromtimestamp(split, UTC).isoformat()}
    importance = np.zeros(samples.matrix.shape[1])
    if samples.labels[train_rows].sum() >= MIN_POSITIVES and samples.labels[held_out].sum() > 0:
        early = make_estimator(seed).fit(
            fillable(samples.matrix[train_rows]), samples.labels[train_rows]
        )
        scores = early.predict_proba(samples.matrix[held_out])[:, 1]
        validation |= evaluate(scores, samples.labels[held_out])
        # Importance on at most a few thousand held-out rows: enough to rank the features.
        rows = np.flatnonzero(held_out)[:: max(1, int(held_out.sum()) // 4000)]
        permuted = permutation_importance(
            early,
            samples.matrix[rows],
            samples.labels[rows],
            scoring="roc_auc",
            n_repeats=2,
            random_state=seed,
        )
        importance = np.clip(permuted.importances_mean, 0, None)
    else:
        validation["note"] = "too few failures in the held-out period to validate"
    estimator = make_estimator(seed).fit(fillable(samples.matrix), samples.labels)
    if not importance.any():
        importance = np.ones(samples.matrix.shape[1]) / samples.matrix.shape[1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature never observed: all NaN
        medians = np.nanmedian(samples.matrix, axis=0)
        spreads = np.nanpercentile(samples.matrix, 75, axis=0) - np.nanpercentile(
            samples.matrix, 25, axis=0
        )
    return RiskModel(
        estimator=estimator,
        features=FEATURES,
        horizon=horizon,
        trained_since=since,
        trained_until=until,
        trained_at=now,
        validation=validation,
        medians=[0.0 if math.isnan(v) else float(v) for v in medians],
        spreads=[1.0 if math.isnan(v) or v <= 0 else float(v) for v in spreads],
        importance=[float(v) for v in importance],
    )
