"""Device credentials on the server: checking site bootstrap keys and per-device API keys.

Keys and their verifiers are made by :mod:`homepot.kit.keys`.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import bindparam, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.db import SessionDep, utcnow
from homepot.device.models import Device
from homepot.fleet.device_keys import HTTP_DEVICE_KEYS
from homepot.job.executions import waiting_for_poll
from homepot.kit.keys import DEVICE_KEY_PREFIX, hash_key
from homepot.site.models import Site


def bootstrap_key_matches(site: Site, key: str) -> bool:
    if site.bootstrap_key_hash is None:
        return False
    return hmac.compare_digest(site.bootstrap_key_hash, hash_key(key))


def device_key_matches(device: Device, key: str) -> bool:
    return device_key_hash_matches(device, hash_key(key))


def device_key_hash_matches(device: Device, key_hash: str) -> bool:
    if device.api_key_hash is None:
        return False
    return hmac.compare_digest(device.api_key_hash, key_hash)


async def device_for_key(session: AsyncSession, key: str) -> Device | None:
    """The device holding ``key`` (None: no device does, or its key was revoked).

    The device id comes from the short-lived key cache when it knows the key, and the device
    is then loaded by primary key (from the session when already there); the key is checked
    against the loaded row either way, so that a stale cache can never let an old key in.
    """
    key_hash = hash_key(key)
    device_id = HTTP_DEVICE_KEYS.device_for(key_hash)
    if device_id is not None:
        device = await session.get(Device, device_id)
        if device is not None and device_key_hash_matches(device, key_hash):
            return device
        HTTP_DEVICE_KEYS.forget(device_id)
    device = await session.scalar(select(Device).where(Device.api_key_hash == key_hash))
    if device is not None:
        HTTP_DEVICE_KEYS.remember(device.device_id, key_hash)
    return device


# A device with whether a poll would find jobs for it, in one round trip: a report asks for
# jobs, and most of the time there are none, so the poll itself is skipped then.
_JOBS_WAITING = exists().where(waiting_for_poll(Device.device_id)).label("jobs_waiting")
_DEVICE_BY_ID = select(Device, _JOBS_WAITING).where(Device.device_id == bindparam("device_id"))
_DEVICE_BY_KEY = select(Device, _JOBS_WAITING).where(Device.api_key_hash == bindparam("key_hash"))


async def device_and_jobs_for_key(
    session: AsyncSession, key: str, *, ack_timeout_seconds: float
) -> tuple[Device, bool] | None:
    """:func:`device_for_key`, and whether jobs wait for the device (as a poll would see
    them now: :func:`homepot.job.executions.waiting_for_poll`). The same checks of the key:
    the cache only says which device to load, the loaded row decides."""
    key_hash = hash_key(key)
    now = utcnow()
    window = {"poll_now": now, "poll_ack_overdue": now - timedelta(seconds=ack_timeout_seconds)}
    device_id = HTTP_DEVICE_KEYS.device_for(key_hash)
    if device_id is not None:
        row = (await session.execute(_DEVICE_BY_ID, {"device_id": device_id, **window})).first()
        if row is not None and device_key_hash_matches(row[0], key_hash):
            return row[0], bool(row[1])
        HTTP_DEVICE_KEYS.forget(device_id)
    row = (await session.execute(_DEVICE_BY_KEY, {"key_hash": key_hash, **window})).first()
    if row is None:
        return None
    HTTP_DEVICE_KEYS.remember(row[0].device_id, key_hash)
    return row[0], bool(row[1])


def _key_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.startswith(DEVICE_KEY_PREFIX):
        return value.strip()
    return request.headers.get("x-device-key")


def _unauthenticated() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "not authenticated: send the device's API key as 'Authorization: Bearer hpd_...'",
        {"WWW-Authenticate": "Bearer"},
    )


def _unknown_key() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "unknown or revoked device API key; register the device again",
        {"WWW-Authenticate": "Bearer"},
    )


async def get_current_device(request: Request, session: SessionDep) -> Device:
    key = _key_from(request)
    if not key:
        raise _unauthenticated()
    device = await device_for_key(session, key)
    if device is None:
        raise _unknown_key()
    request.state.device_id = device.device_id
    return device


@dataclass(frozen=True)
class ReportingDevice:
    """The authenticated device of a report, and whether a poll would find jobs for it."""

    device: Device
    jobs_waiting: bool


async def get_reporting_device(request: Request, session: SessionDep) -> ReportingDevice:
    """:func:`get_current_device` for ``POST /agent/report``: the same key checks, and the
    device is loaded with whether jobs wait for it (one round trip for both)."""
    key = _key_from(request)
    if not key:
        raise _unauthenticated()
    found = await device_and_jobs_for_key(
        session, key, ack_timeout_seconds=request.app.state.settings.fleet.ack_timeout_seconds
    )
    if found is None:
        raise _unknown_key()
    request.state.device_id = found[0].device_id
    return ReportingDevice(*found)


CurrentDevice = Annotated[Device, Depends(get_current_device)]
CurrentReportingDevice = Annotated[ReportingDevice, Depends(get_reporting_device)]


def ensure_own_device(device: Device, claimed_device_id: str | None) -> None:
    """A message naming another device than its credential's is refused (403)."""
    if claimed_device_id is not None and claimed_device_id != device.device_id:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this key belongs to {device.device_id}; it cannot act for {claimed_device_id}",
        )
