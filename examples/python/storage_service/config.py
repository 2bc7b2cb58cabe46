"""The service's settings, read from environment variables so it runs the same under uvicorn."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Where the service finds NATS and its database, and which demo scene it seeds."""

    nats_url: str = "nats://127.0.0.1:4222"
    """The NATS server the hubs listen on (``VWED_NATS_URL``)."""
    subject_prefix: str = "vwed"
    """The hubs' ``--subject-prefix`` (``VWED_SUBJECT_PREFIX``)."""
    database_url: str = "sqlite+aiosqlite:///./storage.db"
    """A SQLAlchemy async URL (``VWED_STORAGE_DATABASE_URL``)."""
    demo_scene: str = "scene-1"
    """Scene seeded with demo locations when the database holds no scene at all
    (``VWED_DEMO_SCENE``; empty: seed nothing)."""

    @classmethod
    def from_env(cls) -> Settings:
        """The settings from the environment, with the defaults above for what is not set."""
        defaults = cls()
        return cls(
            nats_url=os.environ.get("VWED_NATS_URL", defaults.nats_url),
            subject_prefix=os.environ.get("VWED_SUBJECT_PREFIX", defaults.subject_prefix),
            database_url=os.environ.get("VWED_STORAGE_DATABASE_URL", defaults.database_url),
            demo_scene=os.environ.get("VWED_DEMO_SCENE", defaults.demo_scene),
        )
