"""The configuration's types: destinations, routes and the node's settings (``NodeConfig``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dicom_node.config.defaults import (
    ACCURACY_ALERT_BELOW,
    ACCURACY_RECENT,
    ACSE_TIMEOUT_S,
    COMMITMENT_TIMEOUT_S,
    DECODE_TIMEOUT_S,
    DEFAULT_AE_TITLE,
    DEFAULT_BIND,
    DEFAULT_CHARACTER_SET,
    DEFAULT_DATA_DIR,
    DEFAULT_HTTP_HOST,
    DEFAULT_HTTP_PORT,
    DEFAULT_MODEL,
    DEFAULT_PORT,
    DEFAULT_WORKERS,
    DIMSE_TIMEOUT_S,
    KEEP_OPEN_S,
    LEASE_S,
    MAX_BACKLOG,
    MAX_PIXELS,
    MIN_FREE_DISK_MB,
    RETENTION_INSTANCES_DAYS,
    RETENTION_INTERVAL_MIN,
    RETENTION_OUTPUTS_DAYS,
    RETRY_INITIAL_S,
    RETRY_MAX_ATTEMPTS,
    RETRY_MAX_S,
    WARN_FREE_DISK_MB,
)
from dicom_node.config.web import (
    HTTP_SESSION_S,
    ConfigError,
    HttpToken,
    HttpUser,
    StowDestination,
    StowSettings,
    is_loopback,
)
from dicom_node.retention.policy import RetentionPolicy

AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")


def check_ae(ae: str) -> str:
    ae = ae.strip()
    if not AE_RE.match(ae) or "\\" in ae:
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
        return cls(check_ae(m.group(1)), m.group(2).strip("[]"), port)

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
