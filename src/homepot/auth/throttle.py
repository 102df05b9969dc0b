"""The server's rate limits: logins, device registration and event ingestion.

One set of limiters per application (``app.state.rate_limits``), in process memory: see
:mod:`homepot.kit.ratelimit` for what that means with several processes. Over a limit the
answer is ``429`` with ``Retry-After``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from homepot.auth.deps import CurrentUser
from homepot.auth.models import User
from homepot.config import RateLimitSettings
from homepot.kit.ratelimit import SlidingWindowLimiter, retry_after_header


@dataclass(frozen=True)
class RateLimits:
    login_by_address: SlidingWindowLimiter
    login_by_account: SlidingWindowLimiter
    registration_by_address: SlidingWindowLimiter
    ingest_by_sender: SlidingWindowLimiter

    @classmethod
    def of(cls, settings: RateLimitSettings) -> RateLimits | None:
        if not settings.enabled:
            return None
        window = settings.login_window_seconds
        return cls(
            login_by_address=SlidingWindowLimiter(settings.login_failures_per_address, window),
            login_by_account=SlidingWindowLimiter(settings.login_failures_per_account, window),
            registration_by_address=SlidingWindowLimiter(
                settings.registration_failures_per_minute, 60
            ),
            ingest_by_sender=SlidingWindowLimiter(settings.ingest_requests_per_minute, 60),
        )


def rate_limits(request: Request) -> RateLimits | None:
    """This application's limiters; None when rate limiting is switched off."""
    limits: RateLimits | None = getattr(request.app.state, "rate_limits", None)
    return limits


def too_many(wait: float, message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        f"{message}; try again in {max(1, round(wait))} s",
        retry_after_header(wait),
    )


def client_address(request: Request) -> str:
    # Set by the request-log middleware from the peer (or a trusted proxy's X-Forwarded-For).
    address = getattr(request.state, "client_ip", None)
    if address:
        return str(address)
    return request.client.host if request.client else "unknown"


def limit_ingest(request: Request, sender: str) -> None:
    """429 when ``sender`` (``user:<id>`` or ``device:<id>``) sent too many batches."""
    limits = rate_limits(request)
    if limits is None:
        return
    wait = limits.ingest_by_sender.try_hit(sender)
    if wait:
        raise too_many(wait, "too many event batches from this sender; send fewer, larger batches")


async def _limit_user_ingest(request: Request, user: CurrentUser) -> User:
    limit_ingest(request, f"user:{user.id}")
    return user


# The logged-in user of a dashboard ingestion endpoint, counted against the ingestion limit.
IngestingUser = Annotated[User, Depends(_limit_user_ingest)]
