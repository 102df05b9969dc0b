"""The failure-risk features that read trouble before a failure: a link's jitter against its
own normal, recent warnings by category, and what the device's site peers went through."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from homepot.analytics.models import DeviceMetrics, DeviceStateHistory, ErrorLog
from homepot.insights.features import FEATURES, current_features, load_history
from homepot.insights.risk import describe
from tests.helpers import create_device, create_site

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
STEP = timedelta(minutes=5)


def _warning(device_id: str, at: datetime, category: str, code: str) -> ErrorLog:
    return ErrorLog(timestamp=at, category=category, severity="warning", error_code=code,
                    error_message=code, device_id=device_id)  # fmt: skip


async def test_jitter_warnings_and_a_failing_peer_raise_the_trouble_features(
    app: FastAPI,
) -> None:
    """Three terminals of one store, a day of steady latency. In the last half hour the
    first one's latency jumps about and it logs retransmission and slow-gateway warnings; the
    second one failed 20 minutes ago with a critical gateway timeout; the third is calm."""
    rng = random.Random(4)
    site_id = await create_site(app)
    shaky, failed, calm = [await create_device(app, site_id=site_id) for _ in range(3)]
    other_store = await create_device(app)  # a failure elsewhere is nobody's peer
    async with app.state.session_factory() as session:
        for device_id in (shaky, failed, calm, other_store):
            moment = NOW - timedelta(hours=26)
            while moment <= NOW:
                latency = 40 * math.exp(rng.gauss(0, 0.05))
                if device_id == shaky and moment > NOW - timedelta(minutes=30):
                    latency *= math.exp(rng.choice((-1, 1)) * rng.uniform(0.4, 0.8))
                session.add(
                    DeviceMetrics(device_id=device_id, timestamp=moment, cpu_percent=20.0,
                                  memory_percent=50.0, disk_percent=40.0,
                                  network_latency_ms=latency, error_rate=0.3)
                )  # fmt: skip
                moment += STEP
        for minutes in (25, 12, 4):
            at = NOW - timedelta(minutes=minutes)
            session.add(_warning(shaky, at, "api", "NET_RETRANSMIT"))
        session.add(_warning(shaky, NOW - timedelta(minutes=45), "external_service", "SLOW"))
        session.add(_warning(shaky, NOW - timedelta(minutes=10), "external_service", "SLOW"))
        session.add(_warning(shaky, NOW - timedelta(minutes=90), "api", "NET_RETRANSMIT"))
        for device_id in (failed, other_store):
            session.add(
                ErrorLog(timestamp=NOW - timedelta(minutes=20), category="external_service",
                         severity="critical", error_code="EXT_SERVICE_TIMEOUT",
                         error_message="timeout", device_id=device_id)
            )  # fmt: skip
            session.add(
                DeviceStateHistory(device_id=device_id, timestamp=NOW - timedelta(minutes=15),
                                   previous_state="online", new_state="error", reason="down")
            )  # fmt: skip
        await session.commit()
        history = await load_history(session, NOW - timedelta(hours=1), NOW)
    samples = current_features(history, [shaky, failed, calm], NOW)
    rows = {
        device_id: dict(zip(FEATURES, row, strict=True))
        for device_id, row in zip(samples.device_ids, samples.matrix, strict=True)
    }
    assert rows[shaky]["latency_jitter_30m"] > 3 * rows[calm]["latency_jitter_30m"]
    assert 0.5 < rows[calm]["latency_jitter_30m"] < 2  # its own normal: about 1
    assert rows[shaky]["latency_jitter_1h"] > 1.5
    assert (rows[shaky]["warnings_api_30m"], rows[shaky]["warnings_api_1h"]) == (3, 3)
    assert rows[shaky]["warnings_external_30m"] == 1
    assert rows[shaky]["warnings_external_1h"] == 2
    assert rows[calm]["warnings_api_1h"] == 0
    # Peers: the failed terminal is one of two others for each of the rest (two failures:
    # the critical error and the state change, one device), never its own peer.
    for device_id in (shaky, calm):
        assert rows[device_id]["peers_failed_1h"] == 0.5
        assert rows[device_id]["peers_critical_1h"] == 0.5
    assert rows[calm]["peers_warnings_external_1h"] == 1.0  # the shaky one's two, per peer
    assert rows[failed]["peers_failed_1h"] == 0
    assert rows[failed]["peers_critical_1h"] == 0
    later = current_features(history, [calm], NOW + timedelta(hours=1, minutes=30))
    assert dict(zip(FEATURES, later.matrix[0], strict=True))["peers_failed_1h"] == 0


def test_the_trouble_features_read_as_sentences() -> None:
    assert describe("latency_jitter_30m", 3.24) == (
        "network latency jitter over 30 min against its usual",
        "×3.2",
    )
    assert describe("warnings_api_1h", 4) == ("connection warnings in the last hour", "4")
    assert describe("peers_failed_1h", 0.5) == (
        "share of its site's other devices that failed in the last hour",
        "50%",
    )
