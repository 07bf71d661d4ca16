"""The HTTP app of a running node: the web page and the REST API, on the node's own loaded models and
audit database (``build_app(node)``; ``dicom_node.http.server`` runs it with uvicorn in a thread).

Routes:

- ``GET /``: the page (``static/index.html``: upload and segment, and the node's recent DICOM jobs).
- ``GET /api/health``: the node's health (``Node.health``): DICOM listener, models, queue, deliveries.
- ``GET /api/models``: the model cards, with whether each is loaded and which is the default.
- ``POST /api/segment``: multipart ``file`` (PNG, JPEG or DICOM) and optional ``model``; figures,
  timing and the URLs of the original, mask and overlay PNGs (and SEG, SR and SC for DICOM input).
- ``GET /api/results/{id}/{name}``: a file of an upload's result.
- ``GET /api/jobs?limit=N``, ``GET /api/jobs/{id}``: jobs received over DICOM with outputs and deliveries
  (one job: with every delivery attempt); ``GET /api/jobs/{id}/overlay.png``: the job's overlay SC as a
  PNG thumbnail; ``GET /api/jobs/{id}/outputs/{seg|sr|sc}``: the output file.
- ``GET /metrics``: Prometheus text format.
- ``POST /dicom-web/studies[/{study}]``: STOW-RS into the node (``dicom_node.http.stow``).
- ``GET /login``, ``POST /login``, ``POST /logout``: the page's login (``dicom_node.http.auth``), which
  guards every other route when credentials are configured or the server listens beyond loopback.

Blocking work (inference, SQLite, file reads) runs in the thread pool, never on the event loop. Errors
are JSON ``{"detail": "plain message"}`` with a 4xx status; an unexpected error is a 500 and is logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from dicom_node.audit.records import OutputKind
from dicom_node.audit.report import recent_jobs
from dicom_node.config.web import is_loopback
from dicom_node.http import auth
from dicom_node.http.stow import add_stow_routes
from dicom_node.http.uploads import MAX_UPLOAD_BYTES, SegmentRequest, UploadError, result_path, segment_upload
from dicom_node.http.views import Histogram, Thumbnails, job_detail, output_path, prometheus_text
from inference.model_card import list_cards

if TYPE_CHECKING:
    from dicom_node.roles.node import Node

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries, headers and the model field around the file
SEGMENT_CONCURRENCY = 2  # uploads segmented at once; more wait (the models' own lock serialises passes)
JOBS_LIMIT_MAX = 500
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".dcm": "application/dicom", ".json": "application/json"}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
IMMUTABLE = "private, max-age=86400, immutable"


class _TooLarge(Exception):
    pass


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises once more than ``limit`` body bytes came in (a body without Content-Length)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge
        return message

    return wrapped


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"file too large: the limit is {limit // 2**20} MiB")


def build_app(
    node: Node, max_upload_bytes: int = MAX_UPLOAD_BYTES, host: str | None = None, https: bool = False
) -> FastAPI:
    """The app; ``host`` is where it listens (default: the config's): beyond loopback it needs credentials."""
    app = FastAPI(title="SpineNode", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    app.state.node = node
    config = node.config
    required = bool(config.http_users or config.http_tokens) or not is_loopback(host or config.http_host)
    auth.install(app, config, node.db, required, secure_cookie=https)  # inside the headers middleware below
    thumbnails = Thumbnails()
    upload_times = Histogram()
    segmenting = asyncio.Semaphore(SEGMENT_CONCURRENCY)

    @app.middleware("http")
    async def headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        try:
            response = await call_next(request)
        except Exception as exc:  # answered here: an exception reaching uvicorn would also drop the connection
            log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
            response = JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/health")
    def health() -> dict[str, Any]:
        return node.health()

    @app.get("/api/models")
    def models() -> list[dict[str, Any]]:
        status = {m["name"]: m for m in node.models.status()}
        out = []
        for card in list_cards(node.models.root):
            m = status.get(card.name, {})
            out.append(
                card.to_json()
                | {
                    "default": card.name == node.config.model,
                    "loaded": bool(m.get("loaded")),
                    "error": m.get("error"),
                    "disclaimer": card.disclaimer,
                }
            )
        return out

    @app.post("/api/segment")
    async def segment(request: Request) -> dict[str, Any]:
        limit = max_upload_bytes + FORM_OVERHEAD_BYTES
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPException(400, "invalid Content-Length")
            if int(length) > limit:
                raise _too_large(max_upload_bytes)
        limited = Request(request.scope, _limited(request.receive, limit))
        try:
            async with limited.form(max_files=1, max_fields=4) as form:
                upload, model = form.get("file"), form.get("model")
                if not isinstance(upload, UploadFile):
                    raise HTTPException(400, "no file: send the image as the multipart form field 'file'")
                data = await upload.read(max_upload_bytes + 1)
                filename = upload.filename or ""
        except _TooLarge:
            raise _too_large(max_upload_bytes) from None
        except (MultiPartException, ClientDisconnect) as exc:
            raise HTTPException(400, f"unreadable multipart form: {exc}") from None
        if len(data) > max_upload_bytes:
            raise _too_large(max_upload_bytes)
        if not data:
            raise HTTPException(400, "the file is empty")
        if model is not None and not isinstance(model, str):
            raise HTTPException(400, "the 'model' field must be text")
        req = SegmentRequest(data, Path(filename).name[:200], (model or "").strip() or node.config.model)
        async with segmenting:
            try:
                result = await run_in_threadpool(
                    segment_upload,
                    req,
                    node.config.data_dir,
                    node.models,
                    node.config.max_pixels,
                    node.config.flip_agreement,
                    node.receiver.decoder.decode,  # compressed DICOM: time-limited, in the helper process
                )
            except UploadError as exc:
                raise HTTPException(exc.status, exc.message) from None
        upload_times.observe(result["timing_ms"]["inference"] / 1000)
        files = result.pop("files")
        base = f"/api/results/{result['id']}/"
        names = {
            "original": "original_png",
            "mask": "mask_colour_png",
            "mask_labels": "mask_png",
            "overlay": "overlay_png",
            "metrics": "metrics_json",
            "input": "input",
            "seg": "seg",
            "sr": "sr",
            "sc": "sc",
        }
        result["urls"] = {key: base + files[name] for key, name in names.items() if name in files}
        return result

    @app.get("/api/results/{result_id}/{name}")
    def result_file(result_id: str, name: str) -> FileResponse:
        path = result_path(node.config.data_dir, result_id, name)
        if path is None:
            raise HTTPException(404, "no such result file (results are kept for the latest uploads only)")
        media = MEDIA_TYPES.get(path.suffix, "application/octet-stream")
        return FileResponse(path, media_type=media, headers={"Cache-Control": IMMUTABLE})

    def _links(job: dict[str, Any]) -> dict[str, Any]:
        kinds = {o["kind"] for o in job["outputs"] if not o["pruned_at"]}  # no link to a deleted file
        job["urls"] = {
            "self": f"/api/jobs/{job['id']}",
            **({"thumbnail": f"/api/jobs/{job['id']}/overlay.png"} if "sc" in kinds else {}),
            **{k: f"/api/jobs/{job['id']}/outputs/{k}" for k in ("seg", "sr", "sc") if k in kinds},
        }
        return job

    @app.get("/api/jobs")
    def jobs(limit: int = Query(50, ge=1, le=JOBS_LIMIT_MAX)) -> dict[str, Any]:
        return {"jobs": [_links(j) for j in recent_jobs(node.db, limit)]}

    @app.get("/api/jobs/{job_id}")
    def job(job_id: int) -> dict[str, Any]:
        view = job_detail(node.db, job_id)
        if view is None:
            raise HTTPException(404, f"no job {job_id}")
        return _links(view)

    @app.get("/api/jobs/{job_id}/overlay.png")
    def job_thumbnail(job_id: int) -> Response:
        path = output_path(node.db, job_id, OutputKind.SC)
        if path is None:
            raise HTTPException(404, f"job {job_id} has no overlay (yet)")
        return Response(thumbnails.png(path), media_type="image/png", headers={"Cache-Control": IMMUTABLE})

    @app.get("/api/jobs/{job_id}/outputs/{kind}")
    def job_output(job_id: int, kind: str) -> FileResponse:
        if kind not in ("seg", "sr", "sc"):
            raise HTTPException(404, "outputs are seg, sr and sc")
        path = output_path(node.db, job_id, OutputKind(kind))
        if path is None:
            raise HTTPException(404, f"job {job_id} has no {kind.upper()} (yet)")
        return FileResponse(
            path,
            media_type="application/dicom",
            filename=f"job-{job_id}-{kind}.dcm",
            headers={"Cache-Control": IMMUTABLE},
        )

    add_stow_routes(app, node, max_upload_bytes)

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        text = prometheus_text(node.db, upload_times, node.models.status(), node.pruner)
        return PlainTextResponse(text, media_type=PROMETHEUS_TYPE)

    return app
