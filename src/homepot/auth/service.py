"""Password hashing (argon2), access tokens (JWT) and user management."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from homepot.auth.models import Role, User
from homepot.auth.schemas import UserPreferences
from homepot.config import AuthSettings
from homepot.db import utcnow

_hasher = PasswordHasher()

# Verified against when the e-mail is unknown, so that a login takes as long either way.
_DUMMY_HASH = _hasher.hash("homepot-timing-equaliser")

T = TypeVar("T")

# Hashing threads run at a lower CPU priority than the event loop (Linux: nice is per
# thread, and argon2's own lane threads inherit it), so that on a busy machine a burst of
# logins takes CPU time the requests of everyone else leave over.
HASH_THREAD_NICENESS = 10


def _lower_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)


def _hashing_threads(count: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(
        max_workers=count, thread_name_prefix="homepot-password", initializer=_lower_priority
    )


# argon2 costs ~50 ms of CPU per hash and releases the GIL while it works: run in these
# threads, a burst of logins waits its turn here instead of stalling the event loop.
_hash_threads = _hashing_threads(2)


@dataclass(frozen=True)
class Credentials:
    """A user created with a generated password (shown once, then only its hash is kept)."""

    email: str
    role: Role
    password: str


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
    previous, _hash_threads = _hash_threads, _hashing_threads(count)
    previous.shutdown(wait=False)


async def _off_the_loop(work: Callable[..., T], *args: str) -> T:
    return await asyncio.get_running_loop().run_in_executor(_hash_threads, work, *args)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def generate_password() -> str:
    """16 URL- and shell-safe characters (96 bits)."""
    return secrets.token_urlsafe(12)


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


@dataclass(frozen=True)
class LoginAttempt:
    """The outcome of a login: the user when it succeeded, and the account it named."""

    user: User | None
    # The id of the account the e-mail belongs to, also when the password was wrong (for the
    # audit trail); None when no account has that e-mail.
    account_id: str | None


async def authenticate(
    session_factory: async_sessionmaker[AsyncSession], email: str, password: str
) -> LoginAttempt:
    """Check an e-mail and password without holding a database connection while hashing.

    The account is read in one short transaction and ``last_login_at`` written in another;
    in between, the password is verified in the hashing threads. A burst of logins then
    waits for those threads, not for connections that every other request needs too.
    """
    async with session_factory() as session:
        user = await get_user_by_email(session, email)
    if user is None:
        await verify_password_off_loop(_DUMMY_HASH, password)
        return LoginAttempt(user=None, account_id=None)
    if not await verify_password_off_loop(user.password_hash, password) or not user.is_active:
        return LoginAttempt(user=None, account_id=user.id)
    user.last_login_at = utcnow()
    async with session_factory() as session, session.begin():
        await session.execute(
            update(User).where(User.id == user.id).values(last_login_at=user.last_login_at)
        )
    return LoginAttempt(user=user, account_id=user.id)


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


async def ensure_user_with_generated_password(
    session: AsyncSession, *, email: str, role: Role, full_name: str | None = None
) -> tuple[User, Credentials | None]:
    """The user of that e-mail, created with a generated password unless it exists.

    Returns the user and, when it was created, its credentials; an existing user keeps its
    password and role.
    """
    password = generate_password()
    user, created = await ensure_user(session, email=email, password=password, role=role)
    if not created:
        return user, None
    if full_name is not None:
        user.full_name = full_name
    return user, Credentials(email, role, password)
