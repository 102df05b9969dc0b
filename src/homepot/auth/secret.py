"""The token signing secret: configured, or generated once and kept in the data directory.

Without ``HOMEPOT_AUTH__SECRET_KEY`` the server makes a random 64-byte secret the first time
it starts and keeps it in ``<data_dir>/token-secret`` (mode 0600, directory 0700), so tokens
survive restarts and no installation ever signs with a value printed in this repository.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from pydantic import SecretStr

from homepot.config import Settings

logger = logging.getLogger(__name__)

SECRET_FILE_NAME = "token-secret"


class SecretFileUnsafe(RuntimeError):
    """The kept secret cannot be trusted (others may read it) or cannot be read."""


def secret_path(data_dir: Path) -> Path:
    return data_dir / SECRET_FILE_NAME


def load_or_create_secret(data_dir: Path) -> str:
    """The secret kept in ``data_dir``, generated on first use.

    Safe when several processes start at once: the secret is written to a private temporary
    file and linked into place, so every process ends up reading the same complete value.
    """
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = secret_path(data_dir)
    if not path.exists():
        temporary = data_dir / f".{SECRET_FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(64))
                handle.flush()
                os.fsync(handle.fileno())
            try:
                os.link(temporary, path)
                logger.warning("generated a new token secret in %s", path)
            except FileExistsError:
                pass  # another process made it first: use theirs
        finally:
            temporary.unlink(missing_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretFileUnsafe(
            f"{path} is readable by other users (mode {mode:o}); anyone who reads it can forge"
            f" tokens: chmod 600 {path} (or delete it to have a new one made)"
        )
    secret = path.read_text().strip()
    if len(secret) < 32:
        raise SecretFileUnsafe(
            f"{path} holds no usable secret; delete it to have a new one made on start"
        )
    return secret


def with_secret_key(settings: Settings) -> Settings:
    """``settings`` with a token secret: the configured one, else the data directory's."""
    if settings.auth.secret_key is not None:
        return settings
    secret = SecretStr(load_or_create_secret(settings.data_dir))
    auth = settings.auth.model_copy(update={"secret_key": secret})
    return settings.model_copy(update={"auth": auth})
