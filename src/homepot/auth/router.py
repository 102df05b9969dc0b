from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import select

from homepot.auth import service
from homepot.auth.deps import AdminUser, CurrentUser
from homepot.auth.models import User
from homepot.auth.schemas import Token, UserCreate, UserPreferences, UserRead
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.kit.query import NoParameters

router = APIRouter(prefix=API_PREFIX, tags=["auth"])


@router.post(
    "/auth/token",
    response_model=Token,
    summary="Log in with e-mail and password (OAuth2 password form)",
)
async def login(
    request: Request,
    session: SessionDep,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
) -> Token:
    user = await service.authenticate(session, form.username, form.password)
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "incorrect e-mail or password",
            {"WWW-Authenticate": "Bearer"},
        )
    request.state.user_id = user.id
    auth = request.app.state.settings.auth
    return Token(
        access_token=service.create_access_token(user, auth),
        expires_in=auth.access_token_expire_minutes * 60,
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
