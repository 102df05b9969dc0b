"""Why a simulated terminal's job fails: the backfill's job outcomes carry a real fleet's signal.

A job fails now and then on any terminal (a share per job type). On top of that:

- downloads time out on slow links: the terminal's own network latency, and the site's
  uplink (one site in five has a poor one, fixed by its id); a firmware image is big, a
  configuration (price tables, promotions) half as exposed;
- one terminal in ten has a defect of its own (a worn card reader, a loose cable, a corrupt
  partition), fixed by its id: it fails a quarter of its jobs more, day after day;
- the oldest hardware generation's card readers and boards fail self-tests and restarts
  more often;
- a terminal that is serving customers refuses configuration changes, restarts and health
  checks more often ("terminal busy"), in proportion to the site's load;
- a terminal in a fault fails a quarter of its jobs more (its memory, disk or configuration
  is in trouble);
- a terminal that is switched off or crashed never answers (the caller times it out).

The shares are the simulator's ground truth; :mod:`homepot.insights.job_success` never reads
them, it learns from the job outcomes they produce.
"""

from __future__ import annotations

import random
import zlib
from typing import Literal

BASE_FAILURE = {
    "health_check": 0.015,
    "config_change": 0.02,
    "restart": 0.03,
    "firmware_update": 0.03,
}
FAULT_FAILURE = 0.25
BUSY_FAILURE = 0.12  # at full load
POOR_UPLINK_SHARE = 0.2
DEFECTIVE_SHARE = 0.1
DEFECT_FAILURE = 0.25
POOR_UPLINK_TIMEOUTS = 0.3
# Latency above which a firmware download starts to time out, and the share per extra ms.
SLOW_LINK_MS = 25.0
TIMEOUTS_PER_MS = 0.006
# Extra failures of the jobs that exercise the hardware, per hardware generation.
AGED_HARDWARE = {"pos_g1_2016": 0.08}
HARDWARE_JOBS = frozenset({"health_check", "restart"})

# How much of a job is a download that a slow link can time out.
DOWNLOAD_EXPOSURE = {"firmware_update": 1.0, "config_change": 0.5}

Failure = Literal["failed", "timeout"]


def poor_uplink(site_id: str) -> bool:
    """Whether the site's uplink is poor: fixed by the site's id, the same in every run."""
    return zlib.crc32(f"uplink/{site_id}".encode()) % 1000 < POOR_UPLINK_SHARE * 1000


def defective(device_id: str) -> bool:
    """Whether the terminal has a defect of its own: fixed by its id, the same in every run."""
    return zlib.crc32(f"defect/{device_id}".encode()) % 1000 < DEFECTIVE_SHARE * 1000


def failure_shares(
    device_id: str,
    job_type: str,
    *,
    hardware: str,
    latency_ms: float,
    site_id: str,
    load: float,
    faulty: bool,
) -> tuple[float, float]:
    """(share of such jobs that fail outright, share that time out) for a terminal now."""
    failed = BASE_FAILURE.get(job_type, 0.02) + (FAULT_FAILURE if faulty else 0.0)
    failed += DEFECT_FAILURE if defective(device_id) else 0.0
    if job_type in HARDWARE_JOBS:
        failed += AGED_HARDWARE.get(hardware, 0.0)
    exposure = DOWNLOAD_EXPOSURE.get(job_type, 0.0)
    timeout = max(0.0, latency_ms - SLOW_LINK_MS) * TIMEOUTS_PER_MS
    timeout = exposure * (timeout + (POOR_UPLINK_TIMEOUTS if poor_uplink(site_id) else 0.0))
    if job_type != "firmware_update":
        failed += BUSY_FAILURE * min(max(load, 0.0), 1.0)
    return min(failed, 0.9), min(timeout, 0.9)


def draw_failure(
    rng: random.Random,
    device_id: str,
    job_type: str,
    *,
    hardware: str,
    latency_ms: float,
    site_id: str,
    load: float,
    faulty: bool,
) -> Failure | None:
    """How this job ends on this terminal: None (success), ``failed`` or ``timeout``."""
    failed, timeout = failure_shares(
        device_id,
        job_type,
        hardware=hardware,
        latency_ms=latency_ms,
        site_id=site_id,
        load=load,
        faulty=faulty,
    )
    draw = rng.random()
    if draw < timeout:
        return "timeout"
    if draw < timeout + failed * (1 - timeout):
        return "failed"
    return None
