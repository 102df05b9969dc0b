"""What the server knows of the devices' keys without asking the database.

:class:`DeviceKeyCache` holds each device's key verifier (``devices.api_key_hash``, which is
also the secret its MQTT messages are signed with; see :mod:`homepot.protocol.mqtt`). The
bridge fills it from every batch of devices it loads and signs pushed jobs with it; while the
database is down it checks incoming messages against it before spooling them, so that they
are replayed as authentic even if the key changes meanwhile.

The HTTP side keeps one too (:data:`HTTP_DEVICE_KEYS`, with a short time to live): which
device a key verifier belongs to, so that a request loads its device by primary key (see
:func:`homepot.fleet.auth.get_current_device`).

Whenever a device's key changes (registration, rotation, revocation), the code that changed
it calls :func:`device_credentials_changed`: the cached verifier is forgotten in every cache of
this process and the device's broker account is updated.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.config import FleetSettings
from homepot.device.models import Device
from homepot.fleet.broker_accounts import account_files, device_account_update
from homepot.kit.keycache import add_key_cache_invalidator

_CACHES: weakref.WeakSet[DeviceKeyCache] = weakref.WeakSet()


class DeviceKeyCache:
    """device_id → key verifier (None: the device has no key, it is revoked), and back.

    With ``ttl_seconds`` an entry is trusted for that long after it was remembered and then
    looked up afresh; without, until it is forgotten. At most ``max_entries`` are kept (all
    are dropped when a new one would pass that: the cache refills from the database).
    """

    def __init__(
        self,
        *,
        ttl_seconds: float | None = None,
        max_entries: int = 200_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hashes: dict[str, str | None] = {}
        self._devices_by_hash: dict[str, tuple[str, float]] = {}
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        _CACHES.add(self)

    def get(self, device_id: str) -> str | None:
        return self._hashes.get(device_id)

    def knows(self, device_id: str) -> bool:
        return device_id in self._hashes

    def device_for(self, key_hash: str) -> str | None:
        """The device whose key has this verifier, when remembered and still fresh."""
        entry = self._devices_by_hash.get(key_hash)
        if entry is None:
            return None
        device_id, expires_at = entry
        if self._ttl is not None and self._clock() >= expires_at:
            self.forget(device_id)
            return None
        return device_id

    def remember(self, device_id: str, key_hash: str | None) -> None:
        if device_id not in self._hashes and len(self._hashes) >= self._max_entries:
            self.clear()
        previous = self._hashes.get(device_id)
        if previous is not None and previous != key_hash:
            self._devices_by_hash.pop(previous, None)
        self._hashes[device_id] = key_hash
        if key_hash is not None:
            expires_at = self._clock() + self._ttl if self._ttl is not None else math.inf
            self._devices_by_hash[key_hash] = (device_id, expires_at)

    def forget(self, device_id: str) -> None:
        key_hash = self._hashes.pop(device_id, None)
        if key_hash is not None:
            self._devices_by_hash.pop(key_hash, None)

    def clear(self) -> None:
        self._hashes.clear()
        self._devices_by_hash.clear()

    async def load(self, session: AsyncSession, device_ids: set[str] | None = None) -> None:
        """Refresh from the database: the given devices, or all of them."""
        statement = select(Device.device_id, Device.api_key_hash)
        if device_ids is not None:
            statement = statement.where(Device.device_id.in_(device_ids))
            for device_id in device_ids:
                self.forget(device_id)
        for device_id, key_hash in (await session.execute(statement)).all():
            self.remember(device_id, key_hash)


async def device_credentials_changed(
    settings: FleetSettings, device_id: str, key_hash: str | None
) -> None:
    """Call when a device's key changed (``key_hash`` its new verifier, None when revoked):
    forgets the old one in every key cache of this process and updates the device's broker
    account (password file, broker reload) when HOMEPOT manages one."""
    for cache in list(_CACHES):
        cache.forget(device_id)
    accounts = account_files(settings)
    if accounts is not None:
        await asyncio.to_thread(device_account_update, accounts, device_id, key_hash)


def _forget_everywhere(device_id: str | None) -> None:
    """A key changed where this package is not called (a device deleted, kit.keycache)."""
    for cache in list(_CACHES):
        if device_id is None:
            cache.clear()
        else:
            cache.forget(device_id)


add_key_cache_invalidator(_forget_everywhere)

# HTTP requests' key → device lookups, trusted for a minute at most: a change made by another
# server process (which cannot invalidate this one) is seen within that time, and a key is
# still checked against the device's row on every request.
HTTP_KEY_TTL_SECONDS = 60.0
HTTP_DEVICE_KEYS = DeviceKeyCache(ttl_seconds=HTTP_KEY_TTL_SECONDS)
