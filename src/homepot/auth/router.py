from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select

from homepot.audit.service import Actor, write_audit_log
from homepot.auth import service
from homepot.auth.deps import AdminUser, CurrentUser
from homepot.auth.models import User
from homepot.auth.schemas import Token, UserCreate, UserPreferences, UserRead, UserUpdate
from homepot.auth.throttle import client_address, rate_limits, too_many
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.kit.query import NoParameters
from homepot.kit.routing import api_router

router = api_router(prefix=API_PREFIX, tags=["auth"])

# The audit trail's author of a failed login whose e-mail matches no account.
ANONYMOUS = "anonymous"


async def _audit_failed_login(request: Request, account_id: str | None, *, locked: bool) -> None:
    """Audit rows for a failed login, in a short transaction of their own."""
    async with request.app.state.session_factory() as session:
        author = account_id or ANONYMOUS
        actor = Actor(user_id=author, ip_address=client_address(request))
        resource = {"resource_type": "user", "resource_id": author}
        reason = "unknown account" if account_id is None else "wrong password or disabled account"
        write_audit_log(
            session, actor, action="auth.login.failed", details={"reason": reason}, **resource
        )
        if locked:
            write_audit_log(
                session,
                actor,
                action="auth.login.throttled",
                details={"reason": "too many failed logins; further attempts get 429 for a while"},
                **resource,
            )
        await session.commit()


@router.post(
    "/auth/token",
    response_model=Token,
    summary="Log in with e-mail and password (OAuth2 password form)",
    description="Failed logins are counted per client address and per account; beyond "
    "`HOMEPOT_RATE_LIMITS__LOGIN_FAILURES_PER_ADDRESS` / `..._PER_ACCOUNT` within "
    "`..._LOGIN_WINDOW_SECONDS` the answer is 429 with `Retry-After`, without checking the "
    "password. Every failure is written to the audit log (`auth.login.failed`).",
    responses={
        401: {"description": "Wrong e-mail or password, or a disabled account"},
        429: {"description": "Too many failed logins from this address or for this account"},
    },
)
async def login(request: Request, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Token:
    # No request session: authenticate holds no connection while the password is hashed.
    limits = rate_limits(request)
    address = f"address:{client_address(request)}"
    account = f"account:{service.normalise_email(form.username)}"
    if limits is not None:
        wait = max(
            limits.login_by_address.retry_after(address),
            limits.login_by_account.retry_after(account),
        )
        if wait:
            raise too_many(wait, "too many failed logins from this address or for this account")
        # Counted before the password is checked, so that concurrent attempts cannot all
        # pass the check above; a success is forgiven below.
        limits.login_by_address.hit(address)
        limits.login_by_account.hit(account)
    attempt = await service.authenticate(
        request.app.state.session_factory, form.username, form.password
    )
    user = attempt.user
    if user is None:
        locked = limits is not None and bool(
            limits.login_by_address.retry_after(address)
            or limits.login_by_account.retry_after(account)
        )
        await _audit_failed_login(request, attempt.account_id, locked=locked)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "incorrect e-mail or password",
            {"WWW-Authenticate": "Bearer"},
        )
    if limits is not None:
        limits.login_by_address.forgive(address)
        limits.login_by_account.reset(account)
    request.state.user_id = user.id
    auth = request.app.state.settings.auth
    return Token(
        access_token=service.create_access_token(user, auth),
        expires_in=auth.access_token_expire_minutes * 60,
    )


@router.post(
    "/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Log out: the user's tokens stop working at once",
    description="Revokes every token issued to the user so far (all their sessions, on "
    "every device); log in again for a new one. Any logged-in user.",
    responses={401: {"description": "No valid bearer token"}},
)
async def logout(user: CurrentUser, request: Request, session: SessionDep) -> None:
    service.revoke_tokens(user)
    write_audit_log(
        session,
        Actor.of(request, user),
        action="auth.logout",
        resource_type="user",
        resource_id=user.id,
    )


@router.get("/users/me", response_model=UserRead, summary="The user the token belongs to")
async def read_me(user: CurrentUser) -> User:
    return user


@router.get(
    "/users/me/preferences",
    response_model=UserPreferences,
    summary="The logged-in user's preferences",
    description='`analytics_opt_out`: whether the user chose "Don\'t track my activity". '
    "The dashboard's tracker reads it when a page loads. Any logged-in user.",
)
async def read_my_preferences(user: CurrentUser) -> User:
    return user


@router.put(
    "/users/me/preferences",
    response_model=UserPreferences,
    summary="Change the logged-in user's preferences",
    description="Replaces the preferences (every field required). With "
    "`analytics_opt_out: true` the user's dashboard activity is no longer recorded: the "
    "tracker stops sending it and the ingestion discards any that arrives. Any logged-in user.",
    responses={422: {"description": "A missing, unknown or non-boolean field"}},
)
async def update_my_preferences(body: UserPreferences, user: CurrentUser) -> User:
    return service.set_preferences(user, body)


@router.post(
    "/users",
    response_model=UserRead,
    status_code=status.HTTP_201_CREATED,
    summary="Create a user (admin only)",
)
async def create_user(body: UserCreate, session: SessionDep, _admin: AdminUser) -> User:
    try:
        return await service.create_user(
            session,
            email=body.email,
            password=body.password,
            role=body.role,
            full_name=body.full_name,
        )
    except service.EmailTaken as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc


@router.get("/users", response_model=list[UserRead], summary="List users (admin only)")
async def list_users(
    session: SessionDep, _admin: AdminUser, _params: Annotated[NoParameters, Query()]
) -> list[User]:
    return list(await session.scalars(select(User).order_by(User.created_at)))


@router.patch(
    "/users/{user_id}",
    response_model=UserRead,
    summary="Disable, enable or change the role of a user (admin only)",
    description="`is_active: false` disables the account: its tokens are refused from the "
    "next request on, and it cannot log in. A role change also revokes the user's tokens. "
    "An admin cannot disable or demote themself.",
    responses={
        404: {"description": "No user with this id"},
        409: {"description": "An admin tried to disable or demote themself"},
    },
)
async def update_user(
    user_id: Annotated[str, Path(max_length=32, description="The user's id")],
    body: UserUpdate,
    request: Request,
    session: SessionDep,
    admin: AdminUser,
) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no user with id {user_id}")
    try:
        changes = await service.update_user(
            session, admin, user, is_active=body.is_active, role=body.role
        )
    except service.CannotChangeOwnAccount as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    if changes:
        write_audit_log(
            session,
            Actor.of(request, admin),
            action="user.update",
            resource_type="user",
            resource_id=user.id,
            details=changes,
        )
    return user
