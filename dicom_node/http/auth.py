"""Who may use the HTTP server: API tokens, users with scrypt-hashed passwords, and web page logins.

Credentials come from the configuration (``[[http.users]]``, ``[[http.tokens]]``; see
``dicom_node.http.passwords`` to make them). When any is configured, or the server listens beyond loopback
(where at least one is required: the node refuses to start otherwise), every request needs one of:

- ``Authorization: Bearer <token>`` - an API token (scripts, PACS, Prometheus);
- ``Authorization: Basic ...`` - a user's name and password (curl ``-u``, DICOMweb clients);
- the ``spinenode_session`` cookie that ``POST /login`` (the page's login form) sets for a user.

The login page (``GET /login``) and its style sheet are open. A missing or wrong credential gets 401
(a browser asking for the page is sent to the login page instead), and is audited as an
``http_unauthorized`` event with the peer address, the method and path, and why - never the credential.
Tokens and passwords are compared in constant time (``hmac.compare_digest``; an unknown user name is
checked against a dummy hash so that it costs as long as a wrong password); sessions are 256-bit random
ids kept in memory (a restart logs everybody out).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import secrets
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from dicom_node.audit.records import AuditDB
from dicom_node.config import NodeConfig
from dicom_node.config.web import HttpToken, HttpUser
from dicom_node.http.passwords import DUMMY_HASH, token_sha256

SESSION_COOKIE = "spinenode_session"
SESSION_BYTES = 32  # 256 random bits per session id
MAX_SESSIONS = 1000  # the oldest session is dropped beyond this many
LOGIN_FORM_BYTES = 4096  # a login form is a name and a password
OPEN_PATHS = frozenset({"/login", "/static/style.css"})
LOGIN_PAGE = Path(__file__).resolve().parent / "static" / "login.html"
ERROR_MARK = "<!--error-->"
REALM = "SpineNode"
BASIC_CHALLENGE_PREFIXES = ("/dicom-web/",)  # DICOMweb clients answer a Basic challenge; browsers would prompt


@dataclass(frozen=True)
class Principal:
    """Who made a request: ``user`` or ``token`` and the configured name."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


class Denied(Exception):
    """No valid credential; ``why`` goes to the audit (never the credential itself)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class Authenticator:
    def __init__(self, users: tuple[HttpUser, ...], tokens: tuple[HttpToken, ...], session_s: float) -> None:
        self.users = {u.name: u for u in users}
        self.tokens = tokens
        self.session_s = session_s
        self._sessions: dict[str, tuple[Principal, float]] = {}  # sha256(session id) -> (user, expiry)
        self._lock = threading.Lock()

    # --- credentials ----------------------------------------------------------------------------------
    def token(self, token: str) -> Principal:
        digest = token_sha256(token).encode()
        found: HttpToken | None = None
        for t in self.tokens:  # every configured token is compared: the time does not tell which matched
            if hmac.compare_digest(digest, t.sha256.encode()):
                found = t
        if found is None:
            raise Denied("wrong token")
        return Principal("token", found.name)

    def password(self, name: str, password: str) -> Principal:
        user = self.users.get(name)
        ok = (user.password_hash if user is not None else DUMMY_HASH).matches(password)
        if user is None:
            raise Denied(f"unknown user {name[:64]!r}")
        if not ok:
            raise Denied(f"wrong password for user {user.name!r}")
        return Principal("user", user.name)

    def authorization(self, header: str) -> Principal:
        """``Authorization`` header: Bearer token or Basic user:password (blocking: scrypt)."""
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return self.token(value.strip())
        if scheme.lower() == "basic":
            try:
                name, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                raise Denied("unreadable basic credentials") from None
            if sep:
                return self.password(name, password)
        raise Denied(f"unsupported authorization scheme {scheme[:16]!r}")

    # --- sessions -------------------------------------------------------------------------------------
    def new_session(self, who: Principal) -> str:
        sid = secrets.token_urlsafe(SESSION_BYTES)
        now = time.monotonic()
        with self._lock:
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[_key(sid)] = (who, now + self.session_s)
        return sid

    def session(self, sid: str) -> Principal:
        with self._lock:
            entry = self._sessions.get(_key(sid))
        if entry is None:
            raise Denied("unknown session")
        if entry[1] <= time.monotonic():
            self.end_session(sid)
            raise Denied("expired session")
        return entry[0]

    def end_session(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(_key(sid), None)


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown peer"


def _login_page(error: str | None, status: int) -> HTMLResponse:
    page = LOGIN_PAGE.read_text()
    if error:
        page = page.replace(ERROR_MARK, f'<p class="error" role="alert">{html.escape(error)}</p>')
    return HTMLResponse(page, status_code=status)


def install(app: FastAPI, config: NodeConfig, db: AuditDB, required: bool, secure_cookie: bool) -> None:
    """The authentication middleware and the login routes (``required``: else every request may pass)."""
    auth = Authenticator(config.http_users, config.http_tokens, config.http_session_s)
    app.state.auth = auth

    def audit(request: Request, why: str) -> None:
        detail = f"{request.method} {request.url.path} from {_peer(request)}: {why}"
        db.record_event("http_unauthorized", detail[:1000])

    async def who(request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header:
            return await run_in_threadpool(auth.authorization, header)
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            return auth.session(sid)
        raise Denied("no credentials")

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request.state.principal = None
        if not required or request.url.path in OPEN_PATHS:
            return await call_next(request)
        try:
            request.state.principal = await who(request)
        except Denied as exc:
            await run_in_threadpool(audit, request, exc.why)
            if request.method == "GET" and request.url.path == "/" and "text/html" in request.headers.get("accept", ""):
                return RedirectResponse("/login", status_code=303)
            basic = request.url.path.startswith(BASIC_CHALLENGE_PREFIXES)
            challenge = f'Basic realm="{REALM}"' if basic else f'Bearer realm="{REALM}"'
            message = "authentication required: a token, a user's password or a login (see README)"
            return JSONResponse({"detail": message}, status_code=401, headers={"WWW-Authenticate": challenge})
        return await call_next(request)

    @app.get("/login", include_in_schema=False)
    def login_page() -> HTMLResponse:
        return _login_page(None, 200)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        body = await request.body()
        if len(body) > LOGIN_FORM_BYTES:
            return _login_page("The form is too large.", 400)
        form = parse_qs(body.decode(errors="replace"))
        name, password = (form.get(k, [""])[0] for k in ("name", "password"))
        try:
            user = await run_in_threadpool(auth.password, name, password)
        except Denied as exc:
            await run_in_threadpool(audit, request, f"login refused: {exc.why}")
            return _login_page("Wrong user name or password.", 401)
        await run_in_threadpool(db.record_event, "http_login", f"{user} from {_peer(request)}")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            auth.new_session(user),
            max_age=int(config.http_session_s),
            httponly=True,
            samesite="strict",
            secure=secure_cookie,
            path="/",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        sid = request.cookies.get(SESSION_COOKIE)
        if sid:
            auth.end_session(sid)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response


__all__ = ["SESSION_COOKIE", "Authenticator", "Denied", "Principal", "install"]
