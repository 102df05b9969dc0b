"""What the MQTT bridge knows of the devices' keys without asking the database.

:class:`DeviceKeyCache` holds each device's key verifier (``devices.api_key_hash``, which is
also the secret its MQTT messages are signed with; see :mod:`homepot.protocol.mqtt`). The
bridge fills it from every batch of devices it loads and signs pushed jobs with it; while the
database is down it checks incoming messages against it before spooling them, so that they
are replayed as authentic even if the key changes meanwhile.

Whenever a device's key changes (registration, rotation, revocation), the code that changed
it calls :func:`device_credentials_changed`: the cached verifier is forgotten in every cache of
this process and the device's broker account is updated.
"""

from __future__ import annotations

import asyncio
import weakref

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.config import FleetSettings
from homepot.device.models import Device
from homepot.fleet.broker_accounts import device_account_update, password_file
from homepot.kit.keycache import add_key_cache_invalidator

_CACHES: weakref.WeakSet[DeviceKeyCache] = weakref.WeakSet()


class DeviceKeyCache:
    """device_id → key verifier (None: the device has no key, it is revoked)."""

    def __init__(self) -> None:
        self._hashes: dict[str, str | None] = {}
        _CACHES.add(self)

    def get(self, device_id: str) -> str | None:
        return self._hashes.get(device_id)

    def knows(self, device_id: str) -> bool:
        return device_id in self._hashes

    def remember(self, device_id: str, key_hash: str | None) -> None:
        self._hashes[device_id] = key_hash

    def forget(self, device_id: str) -> None:
        self._hashes.pop(device_id, None)

    def clear(self) -> None:
        self._hashes.clear()

    async def load(self, session: AsyncSession, device_ids: set[str] | None = None) -> None:
        """Refresh from the database: the given devices, or all of them."""
        statement = select(Device.device_id, Device.api_key_hash)
        if device_ids is not None:
            statement = statement.where(Device.device_id.in_(device_ids))
            for device_id in device_ids:
                self._hashes.pop(device_id, None)
        for device_id, key_hash in (await session.execute(statement)).all():
            self._hashes[device_id] = key_hash


async def device_credentials_changed(
    settings: FleetSettings, device_id: str, key_hash: str | None
) -> None:
    """Call when a device's key changed (``key_hash`` its new verifier, None when revoked):
    forgets the old one in every key cache of this process and updates the device's broker
    account (password file, broker reload) when HOMEPOT manages one."""
    for cache in list(_CACHES):
        cache.forget(device_id)
    accounts = password_file(settings)
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
