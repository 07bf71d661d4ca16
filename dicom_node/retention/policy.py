"""The retention policy: how long delivered data stays in the data directory (``[retention]``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetentionPolicy:
    """How long delivered data stays (days; fractions allowed). ``enabled`` runs it in the background."""

    instances_days: float
    outputs_days: float
    enabled: bool = True
    interval_s: float = 3600.0
    warn_free_disk_mb: float = 2000.0

    def with_age(self, days: float) -> RetentionPolicy:
        """The same policy with one age for everything (``spinenode prune --older-than``)."""
        return RetentionPolicy(days, days, self.enabled, self.interval_s, self.warn_free_disk_mb)
