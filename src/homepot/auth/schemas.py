from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from homepot.auth.models import Role


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds until the token expires")


class UserCreate(BaseModel):
    email: EmailStr
    password: str = Field(min_length=8, max_length=256)
    role: Role = Role.viewer
    full_name: str | None = Field(default=None, max_length=200)


class UserUpdate(BaseModel):
    """What an admin changes about another user; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    is_active: bool | None = Field(
        default=None, description="false disables the account; its tokens stop working at once"
    )
    role: Role | None = Field(default=None, description="A new role; existing tokens are revoked")


class UserPreferences(BaseModel):
    """What a user chooses for themself; every field is required on PUT."""

    model_config = ConfigDict(from_attributes=True, extra="forbid")

    analytics_opt_out: bool = Field(
        description='true: "Don\'t track my activity". The dashboard then sends no page '
        "views, clicks, searches or form submissions, and any it sends are discarded"
    )


class UserRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    email: EmailStr
    role: Role
    full_name: str | None
    is_active: bool
    created_at: datetime
    last_login_at: datetime | None
