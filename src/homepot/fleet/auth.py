"""Device credentials on the server: checking site bootstrap keys and per-device API keys.

Keys and their verifiers are made by :mod:`homepot.kit.keys`.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.db import SessionDep
from homepot.device.models import Device
from homepot.fleet.device_keys import HTTP_DEVICE_KEYS
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


def _key_from(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.startswith(DEVICE_KEY_PREFIX):
        return value.strip()
    return request.headers.get("x-device-key")


async def get_current_device(request: Request, session: SessionDep) -> Device:
    key = _key_from(request)
    if not key:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "not authenticated: send the device's API key as 'Authorization: Bearer hpd_...'",
            {"WWW-Authenticate": "Bearer"},
        )
    device = await device_for_key(session, key)
    if device is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked device API key; register the device again",
            {"WWW-Authenticate": "Bearer"},
        )
    request.state.device_id = device.device_id
    return device


CurrentDevice = Annotated[Device, Depends(get_current_device)]


def ensure_own_device(device: Device, claimed_device_id: str | None) -> None:
    """A message naming another device than its credential's is refused (403)."""
    if claimed_device_id is not None and claimed_device_id != device.device_id:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"this key belongs to {device.device_id}; it cannot act for {claimed_device_id}",
        )
