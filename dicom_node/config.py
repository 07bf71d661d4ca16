"""The node's typed configuration: read from TOML, overridden by command-line flags.

The file is ``config/node.toml`` of the project unless ``SPINENODE_CONFIG`` or ``--config`` names
another. Every default is documented beside its constant here and repeated in ``config/node.toml``.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydicom.charset import python_encoding

from dicom_node.config_web import (
    HTTP_SESSION_S,
    ConfigError,
    HttpToken,
    HttpUser,
    StowDestination,
    StowSettings,
    check_keys,
    is_loopback,
    typed,
    unique_names,
)
from dicom_node.retention.policy import RetentionPolicy

CONFIG_ENV = "SPINENODE_CONFIG"
DB_URL_ENV = "SPINENODE_DB_URL"  # the database URL (see dicom_node.audit.database)
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parent.parent / "config" / "node.toml"

DEFAULT_AE_TITLE = "SPINENODE"
# Latin-1: how undeclared non-ASCII text in a source is read by default (Orthanc's DefaultEncoding too)
DEFAULT_CHARACTER_SET = "ISO_IR 100"
DEFAULT_BIND = "0.0.0.0"  # listen on every interface, as a DICOM node normally does
DEFAULT_PORT = 11112  # the registered DICOM port (PS3.8 Annex G) that needs no root
DEFAULT_DATA_DIR = Path("./var")  # instance files, outputs and the SQLite audit database
DEFAULT_MODEL = "spinenode-deeplabv3plus-dense"  # trained on real radiographs; the demo-* models on phantoms
DEFAULT_WORKERS = 1  # inference threads; one suits a 2-core machine (the model uses the cores)
AUTO = "auto"  # workers = "auto" (or worker_processes): one worker process per core beside the receiver
RETRY_INITIAL_S = 5.0  # first delivery retry after this many seconds
RETRY_MAX_S = 60.0  # backoff doubles up to this cap
RETRY_MAX_ATTEMPTS = 30  # then the delivery is marked failed (about 25 minutes of outage at the cap)
MAX_BACKLOG = 500  # jobs waiting; beyond this the SCP answers Out of Resources
MIN_FREE_DISK_MB = 200  # below this free space the SCP answers Out of Resources
MAX_PIXELS = 80_000_000  # rows x columns x frames accepted for decoding (refused before decoding)
DECODE_TIMEOUT_S = 30.0  # compressed pixel data not decoded within this (in a helper process) is refused
ACCURACY_ALERT_BELOW = 0.7  # `spinenode metrics` alerts when a model's recent mean Dice is below this
ACCURACY_RECENT = 20  # ... over this many most recent comparisons (per model and segment)
DEFAULT_HTTP_HOST = "127.0.0.1"  # the web page and REST API: loopback only unless set explicitly
DEFAULT_HTTP_PORT = 0  # 0: no HTTP server (`make run` and --http-port turn it on)
ACSE_TIMEOUT_S = 30.0
DIMSE_TIMEOUT_S = 60.0
LEASE_S = 30.0  # a claimed job/delivery whose worker sent no heartbeat for this long is reclaimed
COMMITMENT_TIMEOUT_S = 600.0  # a storage commitment request unanswered this long is sent again
KEEP_OPEN_S = 5.0  # an association to a destination is released after this long unused (0: per pass)
# [retention]: the data directory is not an archive (dicom_node.retention.prune)
RETENTION_INSTANCES_DAYS = 30.0  # a received image stays this long after all its outputs were delivered
RETENTION_OUTPUTS_DAYS = 30.0  # an output (SEG, SR, SC) stays this long after its last delivery
RETENTION_INTERVAL_MIN = 60.0  # the background pass runs this often
WARN_FREE_DISK_MB = 2000  # below this free space: a warning and /api/health "degraded" (refusal: min_free_disk_mb)

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")


def _check_ae(ae: str) -> str:
    ae = ae.strip()
    if not _AE_RE.match(ae) or "\\" in ae:
        raise ConfigError(f"invalid AE title {ae!r}: 1-16 printable characters, no backslash")
    return ae


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, spec: str) -> Destination:
        """``AE@HOST:PORT``."""
        m = re.match(r"^([^@]+)@(.+):(\d+)$", spec.strip())
        if not m:
            raise ConfigError(f"destination {spec!r} is not AE@HOST:PORT")
        port = int(m.group(3))
        if not 0 < port < 65536:
            raise ConfigError(f"destination port {port} out of range")
        return cls(_check_ae(m.group(1)), m.group(2).strip("[]"), port)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


AnyDestination = Destination | StowDestination


def parse_destination(spec: str) -> AnyDestination:
    """``AE@HOST:PORT`` (C-STORE) or ``stow+https://HOST[:PORT]/PATH`` (DICOMweb STOW-RS)."""
    if spec.strip().startswith("stow+"):
        return StowDestination.parse(spec)
    return Destination.parse(spec)


@dataclass(frozen=True)
class Route:
    """Which model and destinations serve an instance. Empty criteria match anything."""

    model: str
    destinations: tuple[AnyDestination, ...] = ()
    called_ae: str | None = None
    calling_ae: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    flip_agreement: bool | None = None  # the mirror-image pass for this route; None: the node's setting

    def matches(self, called_ae: str, calling_ae: str, modality: str, body_part: str, view: str) -> bool:
        pairs = (
            (self.called_ae, called_ae),
            (self.calling_ae, calling_ae),
            (self.modality, modality),
            (self.body_part, body_part),
            (self.view_position, view),
        )
        return all(want is None or want.strip().upper() == (have or "").strip().upper() for want, have in pairs)


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str = DEFAULT_AE_TITLE
    bind: str = DEFAULT_BIND
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    model: str = DEFAULT_MODEL
    destinations: tuple[AnyDestination, ...] = ()
    routes: tuple[Route, ...] = ()  # extra routes, tried in order before the default route
    allowed_calling_aes: tuple[str, ...] = ()  # empty: any calling AE
    workers: int = DEFAULT_WORKERS
    # worker processes beside the receiver, each with ``workers`` threads; 0: the workers are threads of the
    # receiving process (``--workers auto``: one process per core, ``roles.processes``)
    worker_processes: int = 0
    retry_initial_s: float = RETRY_INITIAL_S
    retry_max_s: float = RETRY_MAX_S
    retry_max_attempts: int = RETRY_MAX_ATTEMPTS
    max_backlog: int = MAX_BACKLOG
    min_free_disk_mb: int = MIN_FREE_DISK_MB
    max_pixels: int = MAX_PIXELS
    decode_timeout_s: float = DECODE_TIMEOUT_S
    acse_timeout_s: float = ACSE_TIMEOUT_S
    dimse_timeout_s: float = DIMSE_TIMEOUT_S
    keep_open_s: float = KEEP_OPEN_S
    flip_agreement: bool = True
    vertebra_segments: bool = True  # the SEG has a segment per vertebra found (models that predict levels)
    retention_enabled: bool = True
    retention_instances_days: float = RETENTION_INSTANCES_DAYS
    retention_outputs_days: float = RETENTION_OUTPUTS_DAYS
    retention_interval_min: float = RETENTION_INTERVAL_MIN
    warn_free_disk_mb: int = WARN_FREE_DISK_MB
    # how text a source sends without Specific Character Set is read when it is not ASCII (a DICOM defined
    # term, as Orthanc's DefaultEncoding; the outputs then declare UTF-8): dicom_node.writers.source
    default_character_set: str = DEFAULT_CHARACTER_SET
    accuracy_alert_below: float = ACCURACY_ALERT_BELOW
    accuracy_recent: int = ACCURACY_RECENT
    # DICOM over TLS ([tls] in the TOML, dicom_node.dimse.tls): certificate and key (PEM) make the SCP TLS-only
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None  # CA bundle (PEM) for peers' certificates: clients', TLS destinations'
    tls_require_client_cert: bool = False  # mutual TLS: clients must present a certificate of tls_ca
    tls_destinations: tuple[str, ...] = ()  # AE@HOST:PORT of the destinations reached over TLS
    # [commitment]: AE@HOST:PORT of the destinations whose deliveries count only once committed (Storage
    # Commitment Push Model, dicom_node.delivery.commitment), and how long a request waits for its report
    commitment_destinations: tuple[str, ...] = ()
    commitment_timeout_s: float = COMMITMENT_TIMEOUT_S
    # [database]: None = SQLite file in data_dir; postgresql+psycopg://... to scale out (dicom_node.audit.database)
    db_url: str | None = None
    lease_s: float = LEASE_S  # job and delivery leases (heartbeat every third of it)
    # the web page and REST API ([http] in the TOML, dicom_node.http) in the same process; port 0: off
    http_host: str = DEFAULT_HTTP_HOST
    http_port: int = DEFAULT_HTTP_PORT
    # who may use it ([[http.users]], [[http.tokens]]): required beyond loopback, optional on loopback
    http_users: tuple[HttpUser, ...] = ()
    http_tokens: tuple[HttpToken, ...] = ()
    http_session_s: float = HTTP_SESSION_S  # a web page login lasts this long
    http_tls_cert: Path | None = None  # PEM certificate and key: the HTTP server speaks HTTPS only
    http_tls_key: Path | None = None
    # [[dicomweb.destinations]]: credentials, CA and timeout of STOW-RS destinations (dicom_node.dicomweb)
    stow_settings: tuple[StowSettings, ...] = ()

    @property
    def http_auth_required(self) -> bool:
        """Whether HTTP requests need credentials: some are configured, or the server is beyond loopback."""
        return bool(self.http_users or self.http_tokens) or not is_loopback(self.http_host)

    def stow(self, dest: StowDestination) -> StowSettings:
        """The settings of a STOW-RS destination (defaults: no authentication, TLS verified)."""
        for settings in self.stow_settings:
            if settings.destination == dest:
                return settings
        return StowSettings(dest)

    @property
    def retention(self) -> RetentionPolicy:
        return RetentionPolicy(
            self.retention_instances_days,
            self.retention_outputs_days,
            self.retention_enabled,
            self.retention_interval_min * 60,
            float(self.warn_free_disk_mb),
        )

    @property
    def db_path(self) -> Path:
        return self.data_dir / "spinenode.db"

    @property
    def database_url(self) -> str:
        """The database to use: ``db_url``, else the SQLite file ``db_path``."""
        return self.db_url or f"sqlite:///{self.db_path}"

    def all_routes(self) -> tuple[Route, ...]:
        """Configured routes, then the default route (our AE title -> default model and destinations)."""
        return (*self.routes, Route(self.model, self.destinations))

    def route_for(self, called_ae: str, calling_ae: str, modality: str, body_part: str, view: str) -> Route:
        for route in self.all_routes():
            if route.matches(called_ae, calling_ae, modality, body_part, view):
                return route
        return self.all_routes()[-1]


def cores() -> int:
    """This machine's cores: how many worker processes ``auto`` means."""
    return max(1, os.cpu_count() or 1)


def load_config(path: Path | None = None, **overrides: Any) -> NodeConfig:
    """Read the TOML file (explicit path, $SPINENODE_CONFIG, or the project default) and apply overrides.

    Overrides whose value is None (flags not given) are ignored.
    """
    if path is None:
        env = os.environ.get(CONFIG_ENV)
        path = Path(env) if env else (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None)
    values: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        values = _from_toml(raw)
    if os.environ.get(DB_URL_ENV):  # the environment overrides the file; --db-url overrides both
        values["db_url"] = os.environ[DB_URL_ENV]
    values.update({k: v for k, v in overrides.items() if v is not None and v != () and v != []})
    if values.get("workers") == AUTO:  # one single-thread worker process per core
        values["workers"], values["worker_processes"] = DEFAULT_WORKERS, AUTO
    if values.get("worker_processes") == AUTO:
        values["worker_processes"] = cores()
    cfg = NodeConfig(**values)
    return _validated(cfg)


def _from_toml(raw: dict[str, Any]) -> dict[str, Any]:
    node = dict(raw.get("node", {}))
    out: dict[str, Any] = {}
    simple = {
        "ae_title",
        "bind",
        "port",
        "model",
        "workers",
        "worker_processes",
        "max_backlog",
        "min_free_disk_mb",
        "max_pixels",
        "decode_timeout_s",
        "acse_timeout_s",
        "dimse_timeout_s",
        "keep_open_s",
        "flip_agreement",
        "vertebra_segments",
        "default_character_set",
    }
    for key in simple & node.keys():
        out[key] = node[key]
    if "data_dir" in node:
        out["data_dir"] = Path(node["data_dir"])
    if "destinations" in node:
        out["destinations"] = tuple(parse_destination(d) for d in _strings(node, "destinations", "[node]"))
    if "allowed_calling_aes" in node:
        out["allowed_calling_aes"] = tuple(_check_ae(a) for a in _strings(node, "allowed_calling_aes", "[node]"))
    retry = raw.get("retry", {})
    for key, name in (
        ("initial_s", "retry_initial_s"),
        ("max_s", "retry_max_s"),
        ("max_attempts", "retry_max_attempts"),
    ):
        if key in retry:
            out[name] = retry[key]
    retention = check_keys(
        raw.get("retention", {}),
        {"enabled", "instances_days", "outputs_days", "interval_min", "warn_free_disk_mb"},
        "[retention]",
    )
    for key in ("enabled", "instances_days", "outputs_days", "interval_min"):
        if key in retention:
            out[f"retention_{key}"] = retention[key]
    if "warn_free_disk_mb" in retention:
        out["warn_free_disk_mb"] = retention["warn_free_disk_mb"]
    metrics = raw.get("metrics", {})
    for key, name in (("alert_below", "accuracy_alert_below"), ("recent", "accuracy_recent")):
        if key in metrics:
            out[name] = metrics[key]
    tls = raw.get("tls", {})
    for key in ("cert", "key", "ca"):
        if tls.get(key):
            out[f"tls_{key}"] = Path(tls[key])
    if "require_client_cert" in tls:
        out["tls_require_client_cert"] = tls["require_client_cert"]
    if "destinations" in tls:
        out["tls_destinations"] = tuple(str(Destination.parse(d)) for d in tls["destinations"])
    unknown_tls = set(tls) - {"cert", "key", "ca", "require_client_cert", "destinations"}
    if unknown_tls:
        raise ConfigError(f"unknown [tls] keys: {', '.join(sorted(unknown_tls))}")
    commitment = check_keys(raw.get("commitment", {}), {"destinations", "timeout_s"}, "[commitment]")
    if "destinations" in commitment:
        named = _strings(commitment, "destinations", "[commitment]")
        out["commitment_destinations"] = tuple(str(Destination.parse(d)) for d in named)
    if "timeout_s" in commitment:
        out["commitment_timeout_s"] = commitment["timeout_s"]
    out |= _http_from_toml(raw.get("http", {}))
    dicomweb = check_keys(raw.get("dicomweb", {}), {"destinations"}, "[dicomweb]")
    stow = typed(dicomweb, "destinations", list, "[dicomweb]", [])
    if stow:
        out["stow_settings"] = tuple(StowSettings.from_toml(t, i) for i, t in enumerate(stow))
    database = raw.get("database", {})
    if database.get("url"):
        out["db_url"] = database["url"]
    if "lease_s" in database:
        out["lease_s"] = database["lease_s"]
    unknown_database = set(database) - {"url", "lease_s"}
    if unknown_database:
        raise ConfigError(f"unknown [database] keys: {', '.join(sorted(unknown_database))}")
    unknown_metrics = set(metrics) - {"alert_below", "recent"}
    if unknown_metrics:
        raise ConfigError(f"unknown [metrics] keys: {', '.join(sorted(unknown_metrics))}")
    routes = []
    match_keys = ("called_ae", "calling_ae", "modality", "body_part", "view_position")
    for i, r in enumerate(typed(raw, "routes", list, "", [])):
        where = f"[[routes]] #{i + 1}"
        check_keys(r, {"model", "destinations", "flip_agreement", *match_keys}, where)
        model = typed(r, "model", str, where)
        if not model:
            raise ConfigError(f"{where}: model is required")
        routes.append(
            Route(
                model=model,
                destinations=tuple(parse_destination(d) for d in _strings(r, "destinations", where)),
                flip_agreement=typed(r, "flip_agreement", bool, where),
                **{k: typed(r, k, str, where) for k in match_keys},
            )
        )
    if routes:
        out["routes"] = tuple(routes)
    unknown = set(node) - simple - {"data_dir", "destinations", "allowed_calling_aes"}
    if unknown:
        raise ConfigError(f"unknown [node] keys: {', '.join(sorted(unknown))}")
    return out


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    values = typed(table, key, list, where, [])
    if not all(isinstance(v, str) for v in values):
        raise ConfigError(f"{where} {key} must be a list of strings")
    return list(values)


def _http_from_toml(http: Any) -> dict[str, Any]:
    """``[http]``: host, port, session_hours, cert, key, and the ``users`` and ``tokens`` arrays."""
    where = "[http]"
    check_keys(http, {"host", "port", "session_hours", "cert", "key", "users", "tokens"}, where)
    out: dict[str, Any] = {}
    if "host" in http:
        out["http_host"] = typed(http, "host", str, where)
    if "port" in http:
        out["http_port"] = typed(http, "port", int, where)
    if "session_hours" in http:
        out["http_session_s"] = float(typed(http, "session_hours", (int, float), where)) * 3600
    for key in ("cert", "key"):
        if typed(http, key, str, where):
            out[f"http_tls_{key}"] = Path(http[key])
    users = typed(http, "users", list, where, [])
    tokens = typed(http, "tokens", list, where, [])
    if users:
        out["http_users"] = tuple(HttpUser.from_toml(t, i) for i, t in enumerate(users))
    if tokens:
        out["http_tokens"] = tuple(HttpToken.from_toml(t, i) for i, t in enumerate(tokens))
    return out


def _check_http(cfg: NodeConfig) -> None:
    if cfg.http_port and not is_loopback(cfg.http_host) and not (cfg.http_users or cfg.http_tokens):
        raise ConfigError(
            f"the HTTP server would listen on {cfg.http_host}, beyond loopback, without authentication: "
            "configure [[http.users]] or [[http.tokens]] (see README), or listen on 127.0.0.1"
        )
    if cfg.http_session_s <= 0:
        raise ConfigError("[http] session_hours must be positive")
    if (cfg.http_tls_cert is None) != (cfg.http_tls_key is None):
        raise ConfigError("[http] give both cert and key, or neither")
    for path in (cfg.http_tls_cert, cfg.http_tls_key):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"[http] TLS file not found: {path}")
    unique_names(cfg.http_users, "[[http.users]]")
    unique_names(cfg.http_tokens, "[[http.tokens]]")
    urls = [str(s.destination) for s in cfg.stow_settings]
    if len(set(urls)) != len(urls):
        raise ConfigError("[[dicomweb.destinations]]: each url once")


# where a setting comes from, for error messages ([node] key unless listed; flags use the same values)
SOURCE_OF: dict[str, str] = {
    "retry_initial_s": "[retry] initial_s",
    "retry_max_s": "[retry] max_s",
    "retry_max_attempts": "[retry] max_attempts",
    "accuracy_alert_below": "[metrics] alert_below",
    "accuracy_recent": "[metrics] recent",
    "tls_require_client_cert": "[tls] require_client_cert",
    "db_url": "[database] url (or $SPINENODE_DB_URL, --db-url)",
    "lease_s": "[database] lease_s",
    "http_host": "[http] host",
    "http_port": "[http] port",
    "retention_enabled": "[retention] enabled",
    "retention_instances_days": "[retention] instances_days",
    "retention_outputs_days": "[retention] outputs_days",
    "retention_interval_min": "[retention] interval_min",
    "warn_free_disk_mb": "[retention] warn_free_disk_mb",
    "commitment_timeout_s": "[commitment] timeout_s",
}
_SCALARS = (bool, int, float, str, Path)


def _typed_fields(cfg: NodeConfig) -> NodeConfig:
    """Every scalar setting checked against its annotation: a wrong type names the setting, the value and
    what is expected (TOML's ``true`` is not a number, ``"11112"`` is not a port). Integers are accepted
    where a float is expected, strings where a path is; tuples are built and checked by their parsers."""
    hints = typing.get_type_hints(NodeConfig)
    fixed: dict[str, Any] = {}
    for name, hint in hints.items():
        value = getattr(cfg, name)
        kinds = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        if value is None and type(None) in kinds:
            continue
        kind = next((k for k in kinds if k in _SCALARS), None)
        if kind is None:
            continue
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, int | float) and not isinstance(value, bool),
            str: isinstance(value, str),
            Path: isinstance(value, str | Path),
        }[kind]
        if not ok:
            where = SOURCE_OF.get(name, f"[node] {name}")
            expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}
            raise ConfigError(f"{where} = {value!r}: expected {expected[kind]}, not {type(value).__name__}")
        if kind in (float, Path):
            fixed[name] = kind(value)
    return replace(cfg, **fixed)


def _validated(cfg: NodeConfig) -> NodeConfig:
    cfg = _typed_fields(cfg)
    _check_ae(cfg.ae_title)
    if not 0 <= cfg.port < 65536:
        raise ConfigError(f"port {cfg.port} out of range")
    if not 0 <= cfg.http_port < 65536:
        raise ConfigError(f"HTTP port {cfg.http_port} out of range")
    if cfg.workers < 0:
        raise ConfigError("workers must be 0 or more")
    if cfg.worker_processes < 0:
        raise ConfigError('worker_processes must be 0 or more (or "auto")')
    if cfg.retry_initial_s <= 0 or cfg.retry_max_s < cfg.retry_initial_s or cfg.retry_max_attempts < 1:
        raise ConfigError("retry settings: need 0 < initial_s <= max_s and max_attempts >= 1")
    if not 0.0 <= cfg.accuracy_alert_below <= 1.0 or cfg.accuracy_recent < 1:
        raise ConfigError("metrics settings: need 0 <= alert_below <= 1 and recent >= 1")
    if cfg.default_character_set not in python_encoding:
        raise ConfigError(
            f"default_character_set {cfg.default_character_set!r} is not a DICOM character set "
            '(a defined term of Specific Character Set, e.g. "ISO_IR 100" for Latin-1, "ISO_IR 192" for UTF-8)'
        )
    if cfg.commitment_timeout_s <= 0:
        raise ConfigError("[commitment] timeout_s must be more than 0")
    if min(cfg.retention_instances_days, cfg.retention_outputs_days) < 0 or cfg.retention_interval_min <= 0:
        raise ConfigError("[retention]: need instances_days >= 0, outputs_days >= 0 and interval_min > 0")
    if cfg.warn_free_disk_mb < cfg.min_free_disk_mb:
        raise ConfigError(
            f"[retention] warn_free_disk_mb ({cfg.warn_free_disk_mb}) is below [node] min_free_disk_mb "
            f"({cfg.min_free_disk_mb}): the warning must come before the refusal"
        )
    _check_tls(cfg)
    _check_http(cfg)
    if cfg.lease_s < 1:
        raise ConfigError("database lease_s must be at least 1 second")
    if cfg.db_url is not None:
        from dicom_node.audit.database import DatabaseURLError, normalized

        try:
            cfg = replace(cfg, db_url=normalized(cfg.db_url))
        except DatabaseURLError as exc:
            raise ConfigError(str(exc)) from exc
    return replace(cfg, data_dir=Path(cfg.data_dir), ae_title=cfg.ae_title.strip())


def _check_tls(cfg: NodeConfig) -> None:
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("TLS: give both the certificate and the key, or neither")
    if cfg.tls_require_client_cert and (cfg.tls_cert is None or cfg.tls_ca is None):
        raise ConfigError("TLS: requiring client certificates needs a certificate, a key and a CA")
    for name in ("tls_cert", "tls_key", "tls_ca"):
        path = getattr(cfg, name)
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"TLS: {name.replace('_', ' ')} file not found: {path}")


__all__ = [
    "AnyDestination",
    "ConfigError",
    "Destination",
    "NodeConfig",
    "Route",
    "StowDestination",
    "field",
    "load_config",
    "parse_destination",
]
