"""Where agentrl keeps caches (converted models, downloaded datasets, built indexes)."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir


def cache_dir() -> Path:
    """Root cache directory: `$AGENTRL_CACHE_DIR`, else the platform's user cache dir (~/.cache/agentrl)."""
    env = os.environ.get("AGENTRL_CACHE_DIR")
    return Path(env).expanduser() if env else Path(user_cache_dir("agentrl"))


def models_cache_dir() -> Path:
    return cache_dir() / "models"
