"""A store's payment gateway: outages that reach most of its terminals, and slow spells.

The gateway (the acquirer's host) is upstream of the store, shared by all its terminals. The
backfill plans its trouble per store here, rather than per terminal as the other faults:

- an **outage** becomes a ``payment_gateway_timeout`` fault on most terminals of the store,
  each from its own minute (:func:`plan_gateway_outage`); most outages are announced by the
  gateway answering slowly first (warnings of severity ``warning`` on every terminal);
- a **slow spell** is the same slowness without an outage after it (a
  :class:`~homepot.simulation.faults.Disturbance` on every terminal, not labelled), about as
  often as an announced outage: slow answers alone do not tell an outage is coming.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from homepot.simulation.faults import (
    FAULT_DURATIONS,
    GATEWAY_JOIN_CHANCE,
    GATEWAY_PRECURSOR_CHANCE,
    GATEWAY_STAGGER,
    GATEWAYS,
    Disturbance,
    Fault,
    FaultKind,
    Trouble,
)

_PRECURSOR = (timedelta(minutes=10), timedelta(minutes=40))


def plan_gateway_outage(
    rng: random.Random,
    site_id: str,
    device_ids: list[str],
    start: datetime,
    gateway: str,
) -> list[Fault]:
    """One payment-gateway outage at a store, as a fault per terminal it reaches.

    The gateway is upstream of the store, so it reaches most of its terminals
    (``GATEWAY_JOIN_CHANCE`` each, one at least), each from its own minute within
    ``GATEWAY_STAGGER`` of ``start``. Most outages (``GATEWAY_PRECURSOR_CHANCE``) begin with the
    gateway answering slowly: on every terminal from the same moment, 10–40 minutes before the
    first timeout at ``start``.
    """
    joined = [device for device in device_ids if rng.random() < GATEWAY_JOIN_CHANCE]
    if not joined:
        joined = [rng.choice(device_ids)]
    rng.shuffle(joined)  # which terminal loses the gateway first is chance
    slow_from = start
    strength = round(rng.uniform(0.4, 1.0), 2)
    if rng.random() < GATEWAY_PRECURSOR_CHANCE:
        low, high = _PRECURSOR
        slow_from = start - _milliseconds(low + (high - low) * rng.random())
    faults = []
    shortest, longest = FAULT_DURATIONS[FaultKind.payment_gateway_timeout]
    for number, device_id in enumerate(joined):
        first = start if number == 0 else start + _milliseconds(GATEWAY_STAGGER * rng.random())
        details: dict[str, Any] = {
            "timeout_share": round(rng.uniform(0.15, 0.6), 2),
            "gateway": gateway,
            "outage_start": start.isoformat(),
        }
        if slow_from < first:
            details["precursor_seconds"] = round((first - slow_from).total_seconds(), 3)
            details["precursor_strength"] = strength
        end = first + shortest + (longest - shortest) * rng.random()
        faults.append(
            Fault(device_id, site_id, FaultKind.payment_gateway_timeout, first, end, details)
        )
    return faults


def _milliseconds(span: timedelta) -> timedelta:
    """``span`` to the millisecond, so that the precursor lengths in the labels add up."""
    return timedelta(seconds=round(span.total_seconds(), 3))


@dataclass
class StoreGateway:
    """What a store's gateway does over a history: faults per terminal, and slow spells."""

    gateway: str
    faults: dict[str, list[Fault]] = field(default_factory=dict)  # by device, in time order
    spells: list[Disturbance] = field(default_factory=list)


def plan_store_gateway(
    rng: random.Random,
    site_id: str,
    device_ids: list[str],
    *,
    start: datetime,
    end: datetime,
    step: timedelta,
    open_at: Callable[[datetime], bool],
    outages_per_day: float,
) -> StoreGateway:
    """Outages and slow spells of one store's gateway in ``[start, end)``.

    ``outages_per_day`` is the chance per day the store is open (``open_at``); slow spells
    come at ``GATEWAY_PRECURSOR_CHANCE`` times that rate, as often as announced outages. One
    trouble at a time.
    """
    store = StoreGateway(rng.choice(GATEWAYS), {device: [] for device in device_ids})
    if not device_ids:
        return store
    chance = outages_per_day * step.total_seconds() / 86_400
    low, high = _PRECURSOR
    moment = start
    while moment < end:
        if not open_at(moment):
            moment += step
            continue
        draw = rng.random()
        if draw < chance:
            faults = plan_gateway_outage(rng, site_id, device_ids, moment, store.gateway)
            for fault in faults:
                store.faults[fault.device_id].append(fault)
            moment = max(fault.end for fault in faults)
        elif draw < chance * (1 + GATEWAY_PRECURSOR_CHANCE):
            length = low + (high - low) * rng.random()
            store.spells.append(
                Disturbance(Trouble.gateway, moment, moment + length, rng.uniform(0.4, 1.0))
            )
            moment += length
        else:
            moment += step
    return store


def outage_rate(fault_rate: float, share: float) -> float:
    """Outages per store and open day that give each terminal about ``fault_rate × share``
    gateway faults a day, as when every terminal drew them on its own (an outage reaches
    ``GATEWAY_JOIN_CHANCE`` of the store's terminals)."""
    return fault_rate * share / GATEWAY_JOIN_CHANCE
