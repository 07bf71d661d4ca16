"""The HTTP side of the configuration: DICOMweb (STOW-RS) destinations and the HTTP server's credentials.

``dicom_node.config`` reads these from the TOML file (``[[dicomweb.destinations]]``, ``[[http.users]]``,
``[[http.tokens]]``) into the typed dataclasses below; :class:`ConfigError` is shared with it.

A STOW-RS destination is named ``stow+https://HOST[:PORT]/PATH`` (the DICOMweb service root; instances go
to ``<root>/studies``) wherever a DIMSE destination ``AE@HOST:PORT`` may stand. Its credentials, CA and
timeout come from a ``[[dicomweb.destinations]]`` entry with the same ``url``; secrets from the
environment (``password_env``, ``token_env``) or the file (``password``, ``token``). Credentials are
never sent over plain ``http`` except to a loopback address.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.http.passwords import SHA256_HEX, BadHash, ScryptHash

STOW_PREFIX = "stow+"
MAX_DESTINATION_CHARS = 128  # the width of deliveries.destination in the audit database
STOW_TIMEOUT_S = 60.0  # connect/read/write timeout of one STOW-RS request
STOW_AUTH_KINDS = ("none", "basic", "bearer")
HTTP_SESSION_S = 8 * 3600.0  # a login to the web page lasts a working day
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})
NAME_MAX_CHARS = 64  # user and token names (they appear in the audit)


class ConfigError(ValueError):
    """A configuration value that cannot be used."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address literal) is this machine only."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def typed(table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = None) -> Any:
    """``table[key]`` checked to be of ``kind`` (``default`` when absent); a wrong type is a ConfigError."""
    if key not in table:
        return default
    value = table[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:  # TOML true is not a number
        raise ConfigError(f"{where} {key} must be {' or '.join(k.__name__ for k in kinds)}, not a boolean")
    if not isinstance(value, kinds):
        names = " or ".join(k.__name__ for k in kinds)
        raise ConfigError(f"{where} {key} must be {names}, not {type(value).__name__} ({value!r})")
    return value


def check_keys(table: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table")
    unknown = set(table) - allowed
    if unknown:
        raise ConfigError(f"unknown {where} keys: {', '.join(sorted(unknown))}")
    return table


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb STOW-RS service: ``url`` is its root (``https://host/dicom-web``)."""

    url: str

    @classmethod
    def parse(cls, spec: str) -> StowDestination:
        spec = spec.strip()
        if not spec.startswith(STOW_PREFIX):
            raise ConfigError(f"STOW-RS destination {spec!r} does not start with {STOW_PREFIX}")
        if len(spec) > MAX_DESTINATION_CHARS:
            raise ConfigError(f"destination {spec!r} is longer than {MAX_DESTINATION_CHARS} characters")
        url = spec[len(STOW_PREFIX) :]
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"STOW-RS destination {spec!r} is not stow+https://HOST[:PORT]/PATH")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                f"STOW-RS destination {parts.hostname}: credentials belong in [[dicomweb.destinations]], not the URL"
            )
        if parts.query or parts.fragment:
            raise ConfigError(f"STOW-RS destination {spec!r}: no query or fragment")
        try:
            parts.port  # noqa: B018 - raises for a port out of range
        except ValueError as exc:
            raise ConfigError(f"STOW-RS destination {spec!r}: {exc}") from exc
        return cls(url.rstrip("/"))

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or ""

    @property
    def is_https(self) -> bool:
        return self.url.startswith("https://")

    @property
    def studies_url(self) -> str:
        return f"{self.url}/studies"

    def __str__(self) -> str:
        return f"{STOW_PREFIX}{self.url}"


@dataclass(frozen=True)
class StowSettings:
    """How to reach one STOW-RS destination: authentication, TLS verification, timeout."""

    destination: StowDestination
    auth: str = "none"  # none, basic (username + password) or bearer (token)
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    ca: Path | None = None  # CA bundle (PEM) for the server's certificate; None: the system's CAs
    verify_tls: bool = True  # False only for a test set-up: the certificate is then not checked
    timeout_s: float = STOW_TIMEOUT_S

    @classmethod
    def from_toml(cls, table: Any, index: int) -> StowSettings:
        where = f"[[dicomweb.destinations]] #{index + 1}"
        allowed = {"url", "auth", "username", "password", "password_env", "token", "token_env", "ca", "verify_tls"}
        t = check_keys(table, allowed | {"timeout_s"}, where)
        url = typed(t, "url", str, where)
        if url is None:
            raise ConfigError(f"{where}: url is required (stow+https://HOST/PATH)")
        dest = StowDestination.parse(url)
        auth = typed(t, "auth", str, where, "none")
        if auth not in STOW_AUTH_KINDS:
            raise ConfigError(f"{where} auth must be one of {', '.join(STOW_AUTH_KINDS)}, not {auth!r}")
        password = _secret(t, "password", where)
        token = _secret(t, "token", where)
        username = typed(t, "username", str, where, "")
        if auth == "basic" and (not username or not password):
            raise ConfigError(f"{where}: basic authentication needs username and password (or password_env)")
        if auth == "bearer" and not token:
            raise ConfigError(f"{where}: bearer authentication needs token (or token_env)")
        if auth != "none" and not dest.is_https and not is_loopback(dest.host):
            raise ConfigError(f"{where}: credentials are sent over https only (plain http only to loopback)")
        ca = typed(t, "ca", str, where)
        if ca and not Path(ca).is_file():
            raise ConfigError(f"{where}: CA file not found: {ca}")
        timeout = float(typed(t, "timeout_s", (int, float), where, STOW_TIMEOUT_S))
        if timeout <= 0:
            raise ConfigError(f"{where} timeout_s must be positive")
        verify = typed(t, "verify_tls", bool, where, True)
        return cls(dest, auth, username, password, token, Path(ca) if ca else None, verify, timeout)


def _secret(t: dict[str, Any], key: str, where: str) -> str:
    """``key`` from the file or from the environment variable named by ``key_env`` (not both)."""
    literal = typed(t, key, str, where)
    env = typed(t, f"{key}_env", str, where)
    if literal is not None and env is not None:
        raise ConfigError(f"{where}: give {key} or {key}_env, not both")
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(f"{where}: the environment variable {env} ({key}_env) is not set")
        return value
    return literal or ""


@dataclass(frozen=True)
class HttpUser:
    """A person who may log in to the web page (and use the API with basic authentication)."""

    name: str
    password_hash: ScryptHash = field(repr=False)

    @classmethod
    def from_toml(cls, table: Any, index: int) -> HttpUser:
        where = f"[[http.users]] #{index + 1}"
        t = check_keys(table, {"name", "password_hash"}, where)
        name, hashed = _name(t, where), typed(t, "password_hash", str, where)
        if not hashed:
            raise ConfigError(f"{where}: password_hash is required (python -m dicom_node.http.passwords hash-password)")
        try:
            return cls(name, ScryptHash.parse(hashed))
        except BadHash as exc:
            raise ConfigError(f"{where} ({name}): {exc}") from exc


@dataclass(frozen=True)
class HttpToken:
    """An API token (``Authorization: Bearer <token>``), kept as its SHA-256 only."""

    name: str
    sha256: str = field(repr=False)

    @classmethod
    def from_toml(cls, table: Any, index: int) -> HttpToken:
        where = f"[[http.tokens]] #{index + 1}"
        t = check_keys(table, {"name", "sha256"}, where)
        name, digest = _name(t, where), typed(t, "sha256", str, where, "")
        if not SHA256_HEX.match(digest.lower()):
            hint = "python -m dicom_node.http.passwords new-token"
            raise ConfigError(f"{where} ({name}): sha256 must be 64 hex digits ({hint})")
        return cls(name, digest.lower())


def _name(t: dict[str, Any], where: str) -> str:
    name = typed(t, "name", str, where, "").strip()
    if not name or len(name) > NAME_MAX_CHARS or not name.isprintable() or ":" in name:
        raise ConfigError(f"{where}: name must be 1-{NAME_MAX_CHARS} printable characters without ':'")
    return name


def unique_names(items: tuple[HttpUser, ...] | tuple[HttpToken, ...], what: str) -> None:
    names = [i.name for i in items]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{what}: names must be unique ({', '.join(duplicates)})")


__all__ = [
    "ConfigError",
    "HttpToken",
    "HttpUser",
    "StowDestination",
    "StowSettings",
    "is_loopback",
    "typed",
]
