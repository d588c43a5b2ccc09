"""Live scoring profiles: ``application.conf [anomaly_likelihood] profile``.

A profile fixes two things of a metric monitored without min/max: which of its rows the model's
encoder range is computed from (read by the custom adapter when it creates the model) and how the
anomaly service turns raw scores into anomaly scores (``AnomalyLikelihoodHelper.from_config``).
Kept apart from the helper so that the adapter (imported by the storer and the CLI) does not import
the likelihood's numerical code.
"""

from __future__ import annotations

from dataclasses import dataclass

from htmengine.config import Config, ConfigError

# Rows a model's range is computed from in every profile but htmengine: the metric's first day of
# 5-minute samples, the same rows whenever and however they arrived (a backfill, a live stream, a
# replay). A metric monitored with a longer history also takes its first (oldest) 288 rows.
RANGE_ROWS = 288


@dataclass(frozen=True)
class Profile:
    """`range_rows`: the metric's first rows (rowid order) its encoder range is computed from;
    None means every row stored when the model is created (the original's rule, which depends
    on timing: two replays of the same data can get different models)."""

    name: str
    range_rows: int | None


PROFILES: dict[str, Profile] = {
    "htmengine": Profile("htmengine", range_rows=None),
    "numenta": Profile("numenta", range_rows=RANGE_ROWS),
}
# The profile of an application whose config names none: the original's scores, exactly.
DEFAULT_PROFILE = "htmengine"


def profile_from_config(config: Config) -> Profile:
    """``[anomaly_likelihood] profile`` (absent: `DEFAULT_PROFILE`); an unknown name is an error."""
    name = DEFAULT_PROFILE
    if config.has_option("anomaly_likelihood", "profile"):
        name = config.get("anomaly_likelihood", "profile").strip()
    if name not in PROFILES:
        raise ConfigError(
            f"{config.path}: [anomaly_likelihood] profile = {name!r} is unknown; "
            f"expected one of {', '.join(sorted(PROFILES))}"
        )
    return PROFILES[name]
