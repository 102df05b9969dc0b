from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, Enum, Integer, String, false, text
from sqlalchemy.orm import Mapped, mapped_column

from homepot.db import Base, new_event_id, utcnow


class Role(enum.StrEnum):
    admin = "admin"
    operator = "operator"
    viewer = "viewer"


class User(Base):
    __tablename__ = "users"

    # A user is its opaque id everywhere (tokens, analytics rows, audit logs); the e-mail is
    # a login name only and never copied into analytics.
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_event_id)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(
        Enum(Role, native_enum=False, length=16, validate_strings=True), default=Role.viewer
    )
    full_name: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The user's "Don't track my activity" choice: their dashboard events are then discarded.
    analytics_opt_out: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Raised by logout, disabling and a role change: tokens carrying an older one are refused.
    token_generation: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]
