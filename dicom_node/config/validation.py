"""Validation of a ``NodeConfig``: every setting's type and range, with the setting's name in the error."""

from __future__ import annotations

import types
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydicom.charset import python_encoding

from dicom_node.config.types import NodeConfig, check_ae
from dicom_node.config.web import ConfigError, is_loopback, unique_names


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


def validated(cfg: NodeConfig) -> NodeConfig:
    cfg = _typed_fields(cfg)
    check_ae(cfg.ae_title)
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
