"""``POST /api/v1/analytics/exports``: the pseudonymized export as a ZIP, for admins."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.responses import StreamingResponse

from homepot.audit.service import Actor
from homepot.auth.deps import AdminUser
from homepot.config import API_PREFIX
from homepot.db import SessionDep
from homepot.export import service
from homepot.export.pseudonym import ExportKeyError, pseudonymizer_from
from homepot.export.schemas import ExportCreate
from homepot.kit.routing import api_router

router = api_router(prefix=f"{API_PREFIX}/analytics", tags=["analytics"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"application/zip": {}},
        "description": "A ZIP of one file per table and manifest.json",
    },
    401: {"description": "No valid bearer token"},
    403: {"description": "The token's user is not an admin"},
    422: {"description": "An unknown table or format, or since after until"},
    503: {"description": "No export key configured (HOMEPOT_EXPORT_KEY)"},
}


@router.post(
    "/exports",
    summary="Export analytics tables, pseudonymized",
    description="The chosen tables (default: all eight) in the time range as Parquet or CSV "
    "files with a manifest.json, in one ZIP. Rows of the simulation (source `simulated`) are "
    "left out unless `include_simulated` is true; the manifest's `simulated_rows_left_out` and "
    "`provenance_note` (and the X-Export-Simulated-Rows-Left-Out header) say how many. "
    "User and session ids become keyed pseudonyms, "
    "IP addresses their /24 or /48 network, and free text loses e-mail addresses, tokens "
    "and card numbers. The archive is built before the first byte is sent, in bounded "
    "memory. Each export is written to the audit log. Admin only.",
    response_class=StreamingResponse,
    responses=_RESPONSES,
)
async def create_export(
    request: Request, admin: AdminUser, session: SessionDep, body: ExportCreate
) -> StreamingResponse:
    settings = request.app.state.settings
    key = settings.export_key.get_secret_value() if settings.export_key is not None else None
    try:
        pseudonymizer = pseudonymizer_from(key)
    except ExportKeyError as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    # The request's transaction (it loaded the admin) must not stay open while the export
    # reads and writes for minutes: end it now; the audit row below starts a short one.
    await session.commit()
    # From the read replica when one is configured (HOMEPOT_DATABASE_READ_URL).
    export = await service.export_zip(
        request.app.state.read_engine, body.to_request(), pseudonymizer
    )
    manifest = export.manifest
    service.write_export_audit(session, Actor.of(request, admin), manifest)
    stamp = manifest.created_at.strftime("%Y%m%dT%H%M%SZ")
    return StreamingResponse(
        export.chunks(),
        media_type="application/zip",
        headers={
            "Content-Disposition": f'attachment; filename="homepot-export-{stamp}.zip"',
            "X-Export-Id": manifest.export_id,
            "X-Export-Simulated-Rows-Left-Out": str(manifest.simulated_rows_left_out),
        },
    )
