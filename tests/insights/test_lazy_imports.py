"""A server without insights does not pay for scikit-learn (issue 10: lazy imports)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


@pytest.mark.parametrize("insights", [False, True])
def test_a_server_without_a_risk_model_never_loads_scikit_learn(
    tmp_path: Path, insights: bool
) -> None:
    """Start the app (lifespan, a request, a few insights intervals) in a fresh interpreter
    and look at its modules: with insights off, and with insights on but no model file (risk
    then comes from the anomaly episodes), scikit-learn stays unloaded. (numpy is loaded
    either way: pyarrow, for exports, imports it.)
    """
    url = f"sqlite+aiosqlite:///{tmp_path / 'lazy.db'}"
    code = textwrap.dedent(
        f"""
        import asyncio, sys
        from asgi_lifespan import LifespanManager
        from httpx import ASGITransport, AsyncClient
        from homepot.config import AuthSettings, InsightsSettings, Settings
        from homepot.db import run_migrations
        from homepot.main import create_app

        run_migrations({url!r})
        settings = Settings(
            database_url={url!r},
            data_dir={str(tmp_path)!r},
            auth=AuthSettings(secret_key="lazy-import-test-secret-long-enough-for-hs256"),
            insights=InsightsSettings(
                enabled={insights!r}, interval_seconds=0.2, risk_interval_seconds=0.2
            ),
        )

        async def main() -> None:
            app = create_app(settings)
            async with LifespanManager(app):
                transport = ASGITransport(app=app)
                async with AsyncClient(transport=transport, base_url="http://t") as client:
                    answer = await client.get("/api/v1/jobs")
                    assert answer.status_code == 401, answer.status_code
                await asyncio.sleep(1.5)  # a few insights intervals

        asyncio.run(main())
        print("sklearn" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "False"
