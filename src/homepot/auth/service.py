"""Password hashing (argon2), access tokens (JWT) and user management."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

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


def normalise_email(email: str) -> str:
    return email.strip().lower()


def create_access_token(user: User, settings: AuthSettings) -> str:
    now = utcnow()
    claims = {
        "sub": user.id,
        "role": user.role.value,
        "iat": now,
        "exp": now + timedelta(minutes=settings.access_token_expire_minutes),
    }
    return jwt.encode(claims, settings.secret_key.get_secret_value(), settings.algorithm)


def decode_access_token(token: str, settings: AuthSettings) -> str:
    """The user id the token was issued to."""
    try:
        claims = jwt.decode(
            token,
            settings.secret_key.get_secret_value(),
            algorithms=[settings.algorithm],
            options={"require": ["sub", "exp"]},
        )
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    return str(claims["sub"])


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == normalise_email(email)))


async def authenticate(session: AsyncSession, email: str, password: str) -> User | None:
    user = await get_user_by_email(session, email)
    if user is None:
        verify_password(_DUMMY_HASH, password)
        return None
    if not user.is_active or not verify_password(user.password_hash, password):
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
    user = User(email=email, password_hash=hash_password(password), role=role, full_name=full_name)
    session.add(user)
    await session.flush()
    return user


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
