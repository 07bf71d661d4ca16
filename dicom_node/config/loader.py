"""Reading the configuration: the TOML file, the environment (only here and at the CLI) and flags."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from dicom_node.config.defaults import AUTO, CONFIG_ENV, DB_URL_ENV, DEFAULT_CONFIG_FILE, DEFAULT_WORKERS, cores
from dicom_node.config.types import Destination, NodeConfig, Route, check_ae, parse_destination
from dicom_node.config.validation import validated
from dicom_node.config.web import ConfigError, HttpToken, HttpUser, StowSettings, check_keys, typed


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
    return validated(cfg)


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
        out["allowed_calling_aes"] = tuple(check_ae(a) for a in _strings(node, "allowed_calling_aes", "[node]"))
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
