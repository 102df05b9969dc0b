"""One switch for every cache of device key hashes: invalidate on rotation or revocation.

A component that caches device key hashes (e.g. the MQTT bridge, so that it can check
messages while the database is down) registers an invalidator with
:func:`add_key_cache_invalidator`. Whatever changes a device's key (registration, an admin's
rotation or revocation, deleting the device) calls :func:`device_key_changed` with its
session, or :func:`invalidate_device_keys` directly, so that an old key is refused at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

# Called with a device id (or None: every device) whenever device keys change.
KeyCacheInvalidator = Callable[[str | None], None]
_key_cache_invalidators: list[KeyCacheInvalidator] = []
# Called with a device id only once the change is committed (what follows the stored row).
_committed_key_listeners: list[KeyCacheInvalidator] = []
_PENDING_INVALIDATIONS = "homepot_device_keys_changed"


def add_key_cache_invalidator(invalidator: KeyCacheInvalidator) -> Callable[[], None]:
    """Have ``invalidator`` called whenever a device's key changes; returns its remover.

    A component that caches device key hashes (e.g. the MQTT bridge) registers here, so a
    rotated or revoked key is refused at once and not only when its cache next refreshes.
    """
    _key_cache_invalidators.append(invalidator)
    return lambda: _key_cache_invalidators.remove(invalidator)


def add_committed_key_listener(listener: KeyCacheInvalidator) -> Callable[[], None]:
    """Have ``listener`` called once a change of a device's key (or the device's deletion)
    is committed; returns its remover. For what must follow the stored row, not precede it
    (e.g. the broker's accounts: read before the commit, a new device is not there yet)."""
    _committed_key_listeners.append(listener)
    return lambda: _committed_key_listeners.remove(listener)


def invalidate_device_keys(device_id: str | None = None) -> None:
    """Drop cached key hashes of ``device_id`` (None: of every device) in every cache."""
    for invalidator in list(_key_cache_invalidators):
        try:
            invalidator(device_id)
        except Exception:  # one broken cache must not keep the others stale
            logger.exception("a device key cache could not be invalidated")


def device_key_changed(session: AsyncSession, device_id: str) -> None:
    """Invalidate caches now and again once ``session`` commits the change.

    Now, so that no request answers from the old key from here on; after the commit, so
    that a cache refilled in between (still reading the old row) is emptied again.
    """
    invalidate_device_keys(device_id)
    session.sync_session.info.setdefault(_PENDING_INVALIDATIONS, set()).add(device_id)


@event.listens_for(Session, "after_commit")
def _invalidate_after_commit(session: Session) -> None:
    for device_id in session.info.pop(_PENDING_INVALIDATIONS, ()):
        invalidate_device_keys(device_id)
        for listener in list(_committed_key_listeners):
            try:
                listener(device_id)
            except Exception:  # one broken listener must not keep the others stale
                logger.exception("a listener of committed device key changes failed")


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING_INVALIDATIONS, None)
