"""The application factory and its lifespan. No logic lives here."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry

from homepot import __version__
from homepot.analytics.audit_router import router as audit_router
from homepot.analytics.metrics import RecorderCollector
from homepot.analytics.middleware import RequestLogMiddleware
from homepot.analytics.recorder import Recorder, set_recorder
from homepot.analytics.rollups import run_rollups
from homepot.analytics.router import router as analytics_router
from homepot.auth.router import router as auth_router
from homepot.auth.secret import with_secret_key
from homepot.auth.service import set_password_hash_threads
from homepot.auth.throttle import RateLimits
from homepot.config import Settings, get_settings
from homepot.db import create_engine, create_session_factory
from homepot.device.impact import run_impact_evaluator
from homepot.device.router import router as device_router
from homepot.device.states import run_device_watchdog
from homepot.export.router import router as export_router
from homepot.fleet.jobs_router import router as job_agent_router
from homepot.fleet.key_router import router as device_key_router
from homepot.fleet.mqtt import run_push_channel
from homepot.fleet.router import router as fleet_router
from homepot.insights.router import router as insights_router
from homepot.insights.tasks import run_insights, run_risk_scoring
from homepot.job.orchestrator import run_orchestrator
from homepot.job.router import router as job_router
from homepot.kit.singleton import Leadership
from homepot.overview.router import router as overview_router
from homepot.quality.router import router as quality_router
from homepot.retention.tasks import run_partition_maintenance, run_retention
from homepot.site.router import router as site_router
from homepot.system.admission import AdmissionGate, concurrent_request_limit
from homepot.system.errors import install_error_handlers
from homepot.system.limits import RequestBodyGuard
from homepot.system.metrics import (
    JetStreamUplinkCollector,
    LeadershipCollector,
    MqttBridgeCollector,
    RiskReadsCollector,
)
from homepot.system.router import router as system_router
from homepot.web.router import STATIC_DIR
from homepot.web.router import router as web_router
from homepot.web.security import SecurityHeaders

# Long-running tasks of the server, each an async context manager taking the app: started
# after the recorder, in this order, and stopped in reverse before the recorder drains.
BACKGROUND_SERVICES: tuple[Callable[[FastAPI], AbstractAsyncContextManager[None]], ...] = (
    run_partition_maintenance,
    run_push_channel,
    run_orchestrator,
    run_device_watchdog,
    run_impact_evaluator,
    run_retention,
    run_rollups,
    run_insights,
    run_risk_scoring,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    # Without a configured token secret, the data directory's (generated on first start).
    settings = with_secret_key(settings or get_settings())
    set_password_hash_threads(settings.auth.password_hash_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(
            settings.database_url, echo=settings.database_echo, settings=settings.database
        )
        recorder = Recorder(engine, settings.analytics)
        app.state.engine = engine
        app.state.session_factory = create_session_factory(engine)
        # Analytics reads from the replica when one is configured, else from the primary.
        read_engine = engine
        if settings.database_read_url:
            read_engine = create_engine(
                settings.database_read_url,
                echo=settings.database_echo,
                settings=settings.database,
            )
        app.state.read_engine = read_engine
        app.state.read_session_factory = (
            create_session_factory(read_engine) if read_engine is not engine else None
        )
        app.state.recorder = recorder
        # Which background singletons this process runs (all of them on SQLite).
        leadership = Leadership(engine)
        app.state.leadership = leadership
        previous_recorder = set_recorder(recorder)
        await recorder.start()
        try:
            async with AsyncExitStack() as services:
                # Started in order, stopped in reverse, all before the recorder drains.
                for service in BACKGROUND_SERVICES:
                    await services.enter_async_context(service(app))
                # Everything allocated at start-up lives as long as the process: keep it out
                # of the collector's generations, which shortens full collections (measured:
                # ~150 ms to ~10 ms).
                gc.freeze()
                yield
        finally:
            await leadership.release()
            await recorder.stop()
            set_recorder(previous_recorder)
            app.state.recorder = None
            if read_engine is not engine:
                await read_engine.dispose()
            await engine.dispose()

    app = FastAPI(
        title="HOMEPOT",
        version=__version__,
        summary="Fleet management and analytics for point-of-sale terminals",
        lifespan=lifespan,
    )
    registry = CollectorRegistry()
    app.state.settings = settings
    app.state.registry = registry
    app.state.recorder = None
    app.state.leadership = None
    app.state.rate_limits = RateLimits.of(settings.rate_limits)
    registry.register(RecorderCollector(lambda: app.state.recorder))
    registry.register(LeadershipCollector(lambda: app.state.leadership))
    registry.register(
        MqttBridgeCollector(
            lambda: (
                bridge.snapshot() if (bridge := getattr(app.state, "mqtt_bridge", None)) else None
            )
        )
    )
    registry.register(
        JetStreamUplinkCollector(
            lambda: (
                reader.snapshot()
                if (reader := getattr(app.state, "jetstream_uplink", None))
                else None
            )
        )
    )
    registry.register(
        RiskReadsCollector(
            lambda: (
                None
                if (baselines := getattr(app.state, "risk_baselines", None)) is None
                else baselines.snapshot()
            )
        )
    )
    # Innermost first: bodies are checked before any route reads them; every answer, also a
    # refusal, carries the security headers (and CORS headers when origins are configured)
    # and is written to the request log.
    app.add_middleware(RequestBodyGuard, limits=settings.limits)
    app.add_middleware(SecurityHeaders)
    if settings.cors_allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allowed_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    # Inside the request log (a refusal is logged too), outside everything that works.
    app.add_middleware(
        AdmissionGate,
        limit=concurrent_request_limit(settings),
        timeout_seconds=settings.limits.admission_timeout_seconds,
    )
    app.add_middleware(
        RequestLogMiddleware,
        settings=settings,
        recorder=lambda: app.state.recorder,
        registry=registry,
    )
    install_error_handlers(app)
    # First the devices' routes, which take most requests: a request is matched against the
    # routers in order, route by route (measured: ~100 us of CPU to reach /agent/report from
    # tenth place). No other router has a path under /api/v1/agent, so the order changes
    # nothing else.
    app.include_router(fleet_router)
    app.include_router(job_agent_router)
    app.include_router(system_router)
    app.include_router(auth_router)
    # Before the analytics router, so that /analytics/quality is never read as a stream.
    app.include_router(quality_router)
    app.include_router(analytics_router)
    app.include_router(export_router)
    app.include_router(audit_router)
    app.include_router(site_router)
    app.include_router(device_router)
    app.include_router(device_key_router)
    app.include_router(job_router)
    app.include_router(overview_router)
    app.include_router(insights_router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # Last, so that API routes win over the dashboard's pages.
    app.include_router(web_router)
    return app
