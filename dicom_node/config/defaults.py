"""The node's defaults, each documented beside its constant (and repeated in ``config/node.toml``)."""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_ENV = "SPINENODE_CONFIG"
DB_URL_ENV = "SPINENODE_DB_URL"  # the database URL (see dicom_node.audit.database)
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "node.toml"

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


def cores() -> int:
    """This machine's cores: how many worker processes ``auto`` means."""
    return max(1, os.cpu_count() or 1)
