"""HTTP authentication for real: a node (no inference workers) with its HTTP server on loopback, one user
and one API token in its configuration, driven with httpx - tokens, basic authentication, the page's
login and session cookie, 401s and their audit; the configuration's refusals (no credentials beyond
loopback, malformed hashes, wrong types) and the hashing helpers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dicom_node.config import ConfigError, NodeConfig, load_config
from dicom_node.config.web import HttpToken, HttpUser
from dicom_node.http.auth import SESSION_COOKIE
from dicom_node.http.passwords import ScryptHash, hash_password, new_token, token_sha256
from dicom_node.http.server import HttpServer, InsecureServer
from dicom_node.roles.node import Node
from tests.conftest import PROJECT, free_port, session_models

USER, PASSWORD = "reader", "correct horse battery staple"
TOKEN_NAME = "prometheus"
TOKEN = new_token()
LOOPBACK = "127.0.0.1"


def auth_config(data_dir: Path, **extra: object) -> NodeConfig:
    return NodeConfig(
        data_dir=data_dir,
        port=free_port(),
        bind=LOOPBACK,
        workers=0,  # no inference: these tests are about the door
        http_users=(HttpUser(USER, ScryptHash.parse(hash_password(PASSWORD))),),
        http_tokens=(HttpToken(TOKEN_NAME, token_sha256(TOKEN)),),
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, HttpServer]]:
    node = Node.compose(auth_config(tmp_path_factory.mktemp("auth-var")), session_models())
    node.start(preload=False)
    http = HttpServer(node, LOOPBACK, free_port())
    http.start()
    yield node, http
    http.stop()
    node.stop()


def unauthorized_events(node: Node) -> list[str]:
    return [e.detail or "" for e in node.db.events("http_unauthorized")]


def test_every_route_needs_a_credential_and_each_401_is_audited(server: tuple[Node, HttpServer]) -> None:
    node, http = server
    before = len(unauthorized_events(node))
    with httpx.Client(base_url=http.url, timeout=30) as anonymous:
        for method, path in (
            ("GET", "/api/health"),
            ("GET", "/api/jobs"),
            ("GET", "/metrics"),
            ("GET", "/static/app.js"),
            ("POST", "/api/segment"),
            ("POST", "/dicom-web/studies"),
        ):
            rsp = anonymous.request(method, path)
            assert rsp.status_code == 401, (method, path, rsp.text)
            assert "authentication required" in rsp.json()["detail"]
        assert rsp.headers["www-authenticate"] == 'Basic realm="SpineNode"'  # DICOMweb: a Basic challenge
        page = anonymous.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 303 and page.headers["location"] == "/login"  # a browser goes to the login
        assert anonymous.get("/login").status_code == 200  # ... which is open, with its style sheet
        assert anonymous.get("/static/style.css").status_code == 200
    events = unauthorized_events(node)[before:]
    assert len(events) == 7
    assert all(f"from {LOOPBACK}:" in e and e.endswith("no credentials") for e in events)
    assert events[0].startswith("GET /api/health from ")


def test_tokens_and_basic_credentials(server: tuple[Node, HttpServer]) -> None:
    node, http = server
    with httpx.Client(base_url=http.url, timeout=30) as c:
        assert c.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/metrics", auth=(USER, PASSWORD)).status_code == 200
        wrong_token = c.get("/api/health", headers={"Authorization": f"Bearer {TOKEN}x"})
        wrong_password = c.get("/api/health", auth=(USER, PASSWORD + "x"))
        unknown_user = c.get("/api/health", auth=("nobody", PASSWORD))
        odd_scheme = c.get("/api/health", headers={"Authorization": "Digest abc"})
    assert [r.status_code for r in (wrong_token, wrong_password, unknown_user, odd_scheme)] == [401] * 4
    events = unauthorized_events(node)[-4:]
    assert events[0].endswith("wrong token")
    assert events[1].endswith(f"wrong password for user '{USER}'")
    assert events[2].endswith("unknown user 'nobody'")
    assert "unsupported authorization scheme 'Digest'" in events[3]
    assert not any(TOKEN in e or PASSWORD in e for e in unauthorized_events(node))  # never the credential


def test_page_login_sets_a_session_cookie_and_logout_ends_it(server: tuple[Node, HttpServer]) -> None:
    node, http = server
    with httpx.Client(base_url=http.url, timeout=30) as browser:
        refused = browser.post("/login", data={"name": USER, "password": "guess"})
        assert refused.status_code == 401 and "Wrong user name or password." in refused.text
        assert SESSION_COOKIE not in browser.cookies
        assert unauthorized_events(node)[-1].endswith(f"login refused: wrong password for user '{USER}'")

        ok = browser.post("/login", data={"name": USER, "password": PASSWORD})
        assert ok.status_code == 303 and ok.headers["location"] == "/"
        cookie = ok.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/", headers={"Accept": "text/html"}).status_code == 200  # the page itself
        assert browser.get("/api/jobs").status_code == 200
        assert any(e.detail and e.detail.startswith(f"user {USER} from ") for e in node.db.events("http_login"))
        session = browser.cookies[SESSION_COOKIE]

        assert browser.post("/logout").status_code == 303
    with httpx.Client(base_url=http.url, timeout=30, cookies={SESSION_COOKIE: session}) as stale:
        assert stale.get("/api/jobs").status_code == 401
    assert unauthorized_events(node)[-1].endswith("unknown session")


def test_a_server_beyond_loopback_needs_credentials(tmp_path: Path) -> None:
    node = Node.compose(
        NodeConfig(data_dir=tmp_path / "var", port=free_port(), bind=LOOPBACK, workers=0), session_models()
    )
    try:
        with pytest.raises(InsecureServer, match="without authentication"):
            HttpServer(node, "0.0.0.0", free_port())
        HttpServer(node, LOOPBACK, free_port())  # loopback without credentials: open, as before
    finally:
        node.db.dispose()
    f = tmp_path / "n.toml"
    f.write_text('[http]\nhost = "0.0.0.0"\nport = 8080\n')
    with pytest.raises(ConfigError, match="beyond loopback, without authentication"):
        load_config(f)


def test_a_server_beyond_loopback_with_credentials_serves(tmp_path: Path) -> None:
    node = Node.compose(auth_config(tmp_path / "var"), session_models())
    node.start(preload=False)
    http = HttpServer(node, "0.0.0.0", free_port())
    http.start()
    try:
        url = f"http://{LOOPBACK}:{http.port}"
        assert httpx.get(f"{url}/api/health", timeout=30).status_code == 401
        assert httpx.get(f"{url}/api/health", auth=(USER, PASSWORD), timeout=30).status_code == 200
    finally:
        http.stop()
        node.stop()


def test_serve_refuses_to_start_beyond_loopback_without_credentials(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "dicom_node.cli", "serve", "--data-dir", str(tmp_path), "--port", str(free_port())]
    cmd += ["--http-port", str(free_port()), "--http-host", "0.0.0.0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert proc.returncode == 2
    assert "beyond loopback, without authentication" in proc.stderr


def test_credentials_from_toml_and_their_errors(tmp_path: Path) -> None:
    f = tmp_path / "n.toml"
    digest = token_sha256(TOKEN)
    hashed = hash_password(PASSWORD)
    f.write_text(
        f'[http]\nhost = "0.0.0.0"\nport = 8080\nsession_hours = 1\n'
        f'[[http.users]]\nname = "{USER}"\npassword_hash = "{hashed}"\n'
        f'[[http.tokens]]\nname = "{TOKEN_NAME}"\nsha256 = "{digest}"\n'
    )
    cfg = load_config(f)
    assert cfg.http_auth_required and cfg.http_session_s == 3600
    assert cfg.http_users[0].name == USER and cfg.http_users[0].password_hash.matches(PASSWORD)
    assert cfg.http_tokens == (HttpToken(TOKEN_NAME, digest),)
    assert PASSWORD not in repr(cfg) and digest not in repr(cfg)
    for text, message in (
        ('[[http.users]]\nname = "a"\npassword_hash = "plain"\n', "scrypt"),
        ('[[http.users]]\nname = "a"\npassword_hash = "scrypt$3$8$1$AAAA$AAAA"\n', "out of range"),
        ('[[http.tokens]]\nname = "a"\nsha256 = "abc"\n', "64 hex digits"),
        (2 * f'[[http.tokens]]\nname = "a"\nsha256 = "{digest}"\n', "unique"),
        ('[[http.tokens]]\nname = 5\nsha256 = "abc"\n', "name must be str, not int"),
        ('[http]\nport = "8080"\n', r"\[http\] port must be int, not str"),
        ("[http]\nhost = true\n", "must be str, not a boolean"),
        ('[http]\npassword = "x"\n', r"unknown \[http\] keys: password"),
    ):
        f.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_config(f)


def test_password_and_token_helpers() -> None:
    hashed = ScryptHash.parse(hash_password(PASSWORD))
    assert hashed.matches(PASSWORD) and not hashed.matches(PASSWORD.upper())
    assert hash_password(PASSWORD) != hash_password(PASSWORD)  # salted
    run = [sys.executable, "-m", "dicom_node.http.passwords"]
    made = subprocess.run([*run, "hash-password"], input="s3cret\n", capture_output=True, text=True, cwd=PROJECT)
    assert made.returncode == 0 and ScryptHash.parse(made.stdout.strip()).matches("s3cret")
    token = subprocess.run([*run, "new-token"], capture_output=True, text=True, cwd=PROJECT)
    lines = dict(line.split(": ", 1) for line in token.stdout.strip().splitlines())
    assert token_sha256(lines["token"].strip()) == lines["sha256"].strip()
