"""The node's typed configuration: read from TOML, overridden by command-line flags.

The file is ``config/node.toml`` of the project unless ``SPINENODE_CONFIG`` or ``--config`` names
another. Every default is documented beside its constant in ``defaults`` and repeated in
``config/node.toml``; ``types`` holds the settings, ``loader`` reads them, ``validation`` checks them.
"""

from dicom_node.config.defaults import (
    ACCURACY_ALERT_BELOW,
    ACCURACY_RECENT,
    AUTO,
    DEFAULT_CHARACTER_SET,
    DEFAULT_MODEL,
    DEFAULT_WORKERS,
    LEASE_S,
    cores,
)
from dicom_node.config.loader import load_config
from dicom_node.config.types import AnyDestination, Destination, NodeConfig, Route, parse_destination
from dicom_node.config.web import ConfigError, StowDestination

__all__ = [
    "ACCURACY_ALERT_BELOW",
    "ACCURACY_RECENT",
    "AUTO",
    "DEFAULT_CHARACTER_SET",
    "DEFAULT_MODEL",
    "DEFAULT_WORKERS",
    "LEASE_S",
    "AnyDestination",
    "ConfigError",
    "Destination",
    "NodeConfig",
    "Route",
    "StowDestination",
    "cores",
    "load_config",
    "parse_destination",
]
