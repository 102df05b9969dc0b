"""How the server pushes a job to a device: MQTT when a broker is configured, otherwise an
in-process channel (the embedded demo and simulator run in the server's own process).

A push is best effort: the orchestrator waits for the device's acknowledgement and, when none
comes, leaves the execution for the device to collect by polling ``GET /api/v1/agent/jobs``.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Protocol

from homepot.protocol.messages import JobCommand


class PushChannel(Protocol):
    async def push(self, device_id: str, command: JobCommand) -> None:
        """Hand ``command`` to the transport; raises when the transport is unavailable."""
        ...


class InProcessChannel:
    """A queue per device, for simulated devices living in the server's process."""

    def __init__(self, max_queued_per_device: int = 100) -> None:
        self._queues: defaultdict[str, asyncio.Queue[JobCommand]] = defaultdict(
            lambda: asyncio.Queue(max_queued_per_device)
        )

    async def push(self, device_id: str, command: JobCommand) -> None:
        # A full queue means nobody is listening: drop the push, polling will deliver it.
        if not self._queues[device_id].full():
            self._queues[device_id].put_nowait(command)

    def inbox(self, device_id: str) -> asyncio.Queue[JobCommand]:
        """What a simulated device reads its pushed jobs from."""
        return self._queues[device_id]
