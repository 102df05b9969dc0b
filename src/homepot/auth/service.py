"""Password hashing (argon2), access tokens (JWT) and user management."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.auth.models import Role, User
from homepot.auth.schemas import UserPreferences
from homepot.config import AuthSettings
from homepot.db import utcnow

_hasher = PasswordHasher()

# Verified against when the e-mail is unknown, so that a login takes as long either way.
_DUMMY_HASH = _hasher.hash("homepot-timing-equaliser")

T = TypeVar("T")

# argon2 costs ~50 ms of CPU per hash and releases the GIL while it works: run in these
# threads, a burst of logins waits its turn here instead of stalling the event loop.
_hash_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="homepot-password")


class InvalidToken(Exception):
    """The token is missing, malformed, expired or signed with another key."""


class EmailTaken(Exception):
    def __init__(self, email: str) -> None:
        super().__init__(f"a user with e-mail {email} already exists")
        self.email = email


def set_password_hash_threads(count: int) -> None:
    """Bound the password hashing to ``count`` threads (``auth.password_hash_threads``)."""
    global _hash_threads
    if _hash_threads._max_workers == count:
        return
    previous, _hash_threads = (
        _hash_threads,
        ThreadPoolExecutor(max_workers=count, thread_name_prefix="homepot-password"),
    )
    previous.shutdown(wait=False)


async def _off_the_loop(work: Callable[..., T], *args: str) -> T:
    return await asyncio.get_running_loop().run_in_executor(_hash_threads, work, *args)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def hash_password_off_loop(password: str) -> str:
    return await _off_the_loop(hash_password, password)


async def verify_password_off_loop(password_hash: str, password: str) -> bool:
    return await _off_the_loop(verify_password, password_hash, password)


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _signing_key(settings: AuthSettings) -> str:
    if settings.secret_key is None:
        raise RuntimeError(
            "the token secret was not resolved: build the app with create_app (which calls"
            " homepot.auth.secret.with_secret_key)"
        )
    return settings.secret_key.get_secret_value()


def create_access_token(user: User, settings: AuthSettings) -> str:
    """A token for ``user``, valid until it expires, the user logs out or is disabled.

    ``gen`` is the user's token generation at issue: logging out or disabling the user
    raises the generation, and every token carrying an older one is refused from then on.
    """
    now = utcnow()
    claims = {
        "sub": user.id,
        "role": user.role.value,
        "gen": user.token_generation,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + timedelta(minutes=settings.access_token_expire_minutes),
    }
    return jwt.encode(claims, _signing_key(settings), settings.algorithm)


def decode_access_token(token: str, settings: AuthSettings) -> tuple[str, int]:
    """The user id the token was issued to and the user's token generation at the time."""
    try:
        claims = jwt.decode(
            token,
            _signing_key(settings),
            algorithms=[settings.algorithm],
            options={"require": ["sub", "exp", "gen"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    generation = claims["gen"]
    if not isinstance(generation, int):
        raise InvalidToken("the token's generation is not a number")
    return str(claims["sub"]), generation


def revoke_tokens(user: User) -> None:
    """Every token issued to ``user`` so far stops working (the caller commits)."""
    user.token_generation += 1


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == normalise_email(email)))


async def authenticate(session: AsyncSession, email: str, password: str) -> User | None:
    user = await get_user_by_email(session, email)
    if user is None:
        await verify_password_off_loop(_DUMMY_HASH, password)
        return None
    if not await verify_password_off_loop(user.password_hash, password) or not user.is_active:
        return None
    user.last_login_at = utcnow()
    return user


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    role: Role,
    full_name: str | None = None,
) -> User:
    email = normalise_email(email)
    if await get_user_by_email(session, email) is not None:
        raise EmailTaken(email)
    user = User(
        email=email,
        password_hash=await hash_password_off_loop(password),
        role=role,
        full_name=full_name,
    )
    session.add(user)
    await session.flush()
    return user


class CannotChangeOwnAccount(Exception):
    """An admin tried to disable or demote themself (which could leave no admin)."""


async def update_user(
    session: AsyncSession, actor: User, user: User, *, is_active: bool | None, role: Role | None
) -> dict[str, dict[str, object]]:
    """Enable/disable a user or change their role; returns what changed (old, new).

    Disabling revokes the user's tokens at once; so does a role change, so that no token
    carries the old role.
    """
    if user.id == actor.id and (is_active is False or (role is not None and role != user.role)):
        raise CannotChangeOwnAccount(
            "you cannot disable your own account or change your own role; ask another admin"
        )
    changes: dict[str, dict[str, object]] = {}
    if is_active is not None and is_active != user.is_active:
        changes["is_active"] = {"old": user.is_active, "new": is_active}
        user.is_active = is_active
    if role is not None and role != user.role:
        changes["role"] = {"old": user.role.value, "new": role.value}
        user.role = role
    if changes:
        revoke_tokens(user)
        await session.flush()
    return changes


def set_preferences(user: User, preferences: UserPreferences) -> User:
    """Store the user's choices (the caller's transaction commits them)."""
    user.analytics_opt_out = preferences.analytics_opt_out
    return user


async def ensure_user(
    session: AsyncSession, *, email: str, password: str, role: Role
) -> tuple[User, bool]:
    """Create the user unless that e-mail exists; returns (user, created). Idempotent."""
    existing = await get_user_by_email(session, email)
    if existing is not None:
        return existing, False
    return await create_user(session, email=email, password=password, role=role), True
