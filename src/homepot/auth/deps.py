"""Who is calling: the typed dependencies every router uses."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer

from homepot.auth.models import Role, User
from homepot.auth.service import InvalidToken, decode_access_token
from homepot.db import SessionDep

oauth2_scheme = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/token", auto_error=False)

_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def get_current_user(
    request: Request,
    session: SessionDep,
    token: Annotated[str | None, Depends(oauth2_scheme)],
) -> User:
    if not token:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "not authenticated: send a bearer token", _UNAUTHORIZED
        )
    try:
        user_id, generation = decode_access_token(token, request.app.state.settings.auth)
    except InvalidToken as exc:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, f"invalid or expired token: {exc}", _UNAUTHORIZED
        ) from exc
    user = await session.get(User, user_id)
    if user is None or not user.is_active:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the token's user no longer exists or is disabled",
            _UNAUTHORIZED,
        )
    if generation != user.token_generation:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "the token was revoked (logged out, or the account changed); log in again",
            _UNAUTHORIZED,
        )
    # The request log middleware reads the principal from here.
    request.state.user_id = user.id
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


def require_role(*roles: Role) -> object:
    allowed = ", ".join(r.value for r in roles)

    async def _check(user: CurrentUser) -> User:
        if user.role not in roles:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"this action needs the role {allowed}; you are {user.role.value}",
            )
        return user

    return Depends(_check)


AdminUser = Annotated[User, require_role(Role.admin)]
OperatorUser = Annotated[User, require_role(Role.admin, Role.operator)]
