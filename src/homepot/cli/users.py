"""`homepot users`: manage user accounts."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from homepot.auth import service as auth_service
from homepot.auth.models import Role
from homepot.auth.schemas import UserCreate
from homepot.cli.common import EXIT_USAGE, fail, in_transaction, settings_from, stdout_console

users_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)


# --- users ---------------------------------------------------------------------------------


def _valid_user(email: str, password: str, role: Role) -> UserCreate:
    """The same rules as the API (a valid e-mail, a password of at least 8 characters)."""
    try:
        return UserCreate(email=email, password=password, role=role)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        raise fail(problems, EXIT_USAGE) from None


EmailOption = Annotated[str, typer.Option("--email", help="The user's e-mail (the login name).")]
PasswordOption = Annotated[
    str,
    typer.Option(
        "--password",
        prompt=True,
        hide_input=True,
        confirmation_prompt=True,
        help="At least 8 characters; asked for when left out.",
    ),
]


@users_app.command("create-admin")
def users_create_admin(ctx: typer.Context, email: EmailOption, password: PasswordOption) -> None:
    """Create an admin; does nothing if a user with that e-mail exists (safe to repeat)."""
    body = _valid_user(email, password, Role.admin)

    async def ensure(session: AsyncSession) -> tuple[str, Role, bool]:
        user, created = await auth_service.ensure_user(
            session, email=body.email, password=body.password, role=Role.admin
        )
        return user.email, user.role, created

    stored_email, role, created = in_transaction(settings_from(ctx), ensure)
    if created:
        stdout_console().print(f"Created admin {stored_email}.")
    elif role is Role.admin:
        stdout_console().print(
            f"Admin {stored_email} already exists; nothing changed (password unchanged)."
        )
    else:
        raise fail(
            f"{stored_email} already exists with role {role.value}, not admin; nothing changed"
        )


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    email: EmailOption,
    password: PasswordOption,
    role: Annotated[Role, typer.Option("--role", help="What the user may do.")] = Role.viewer,
) -> None:
    """Create a user with a role (admin, operator or viewer)."""
    body = _valid_user(email, password, role)

    async def create(session: AsyncSession) -> str:
        user = await auth_service.create_user(
            session, email=body.email, password=body.password, role=body.role
        )
        return user.email

    try:
        stored_email = in_transaction(settings_from(ctx), create)
    except auth_service.EmailTaken as exc:
        raise fail(str(exc)) from None
    stdout_console().print(f"Created {body.role.value} {stored_email}.")
