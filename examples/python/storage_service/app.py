"""The HTTP API a warehouse system calls, and the start and end of the service (FastAPI lifespan).

Run it with ``uvicorn storage_service.app:app`` or ``python -m storage_service``; the settings
come from environment variables (see :mod:`storage_service.config`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, field_validator
from sqlalchemy.ext.asyncio import async_sessionmaker
from vwed_publisher import Publisher, SceneSnapshot, StatusAction, StorageLocation

from .config import Settings
from .db import create_tables, make_engine
from .demo import demo_locations
from .service import Invalid, NotFound, StorageService

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Open the database and NATS, serve snapshots while the app runs, close both after."""
    settings = Settings.from_env()
    engine = make_engine(settings.database_url)
    await create_tables(engine)
    publisher = await Publisher.connect(settings.nats_url, prefix=settings.subject_prefix)
    try:
        service = StorageService(async_sessionmaker(engine, expire_on_commit=False), publisher)
        await service.start()
        if settings.demo_scene and not await service.scenes():
            # Through the service, like any other change: the rev is stored and published.
            await service.upsert(settings.demo_scene, demo_locations(settings.demo_scene))
            log.info("seeded the demo scene %s", settings.demo_scene)
        await publisher.serve_scene_snapshots(service.snapshot)
        app.state.service = service
        log.info("storage service on %s (prefix %s)", settings.nats_url, settings.subject_prefix)
        yield
    finally:
        # Stops the snapshot responder and the tips, and flushes what was published.
        await publisher.close()
        await engine.dispose()


app = FastAPI(title="VWED storage service (example)", lifespan=lifespan)


def _service(request: Request) -> StorageService:
    service: StorageService = request.app.state.service
    return service


Service = Annotated[StorageService, Depends(_service)]


# --- request and response bodies ----------------------------------------------------------------


class StatusPatch(BaseModel):
    """Status fields to set; a field left out stays as it is."""

    model_config = ConfigDict(extra="forbid", strict=True)

    is_occupied: bool | None = None
    """Goods are put in (``true``) or taken out (``false``)."""
    is_locked: bool | None = None
    """Locked, usually by a task, or unlocked."""
    locked_by: str | None = None
    """Who holds the lock (``null`` clears it)."""
    is_disabled: bool | None = None
    """Taken out of service, or back in."""
    is_empty_tray: bool | None = None
    """An empty tray stands there, or not."""
    goods_content: str | None = None
    """What the goods are (``null`` clears it)."""

    @field_validator("is_occupied", "is_locked", "is_disabled", "is_empty_tray")
    @classmethod
    def _flags_are_never_null(cls, value: bool | None) -> bool:
        # Runs only on fields the request gives: a flag is true or false, or left out.
        if value is None:
            raise ValueError("a flag is true or false; leave it out to keep it")
        return value


class LocationRecord(StorageLocation):
    """A full storage location record, as ``PUT`` takes it: the SDK's 27 fields.

    A field the service does not know (a misspelt one) is refused rather than ignored, since a
    full record replaces the stored one.
    """

    __pydantic_config__ = ConfigDict(extra="forbid")


class SceneSummary(BaseModel):
    """One scene of ``GET /scenes``."""

    scene_id: str
    rev: int
    locations: int


class SceneChanged(BaseModel):
    """The answer to a change: the scene's rev after it."""

    scene_id: str
    rev: int


class StatusChanged(SceneChanged):
    """The answer to a status change: the rev, the action panels see, and the location now."""

    action: StatusAction
    storage_location: StorageLocation


# --- endpoints ----------------------------------------------------------------------------------


@app.exception_handler(NotFound)
async def _not_found(_request: Request, error: NotFound) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=404)


@app.exception_handler(Invalid)
async def _invalid(_request: Request, error: Invalid) -> JSONResponse:
    return JSONResponse({"detail": str(error)}, status_code=422)


@app.get("/scenes")
async def list_scenes(service: Service) -> list[SceneSummary]:
    """Every scene, with its rev and its number of locations."""
    return [
        SceneSummary(scene_id=id, rev=rev, locations=count)
        for id, rev, count in await service.scenes()
    ]


@app.get("/scenes/{scene_id}")
async def get_scene(scene_id: str, service: Service) -> SceneSnapshot:
    """The scene's rev and locations: exactly what a hub gets when it asks for a snapshot."""
    snapshot = await service.snapshot(scene_id)
    if snapshot is None:
        raise HTTPException(404, f"no scene {scene_id!r}")
    return snapshot


@app.get("/scenes/{scene_id}/locations/{location_id}")
async def get_location(scene_id: str, location_id: str, service: Service) -> StorageLocation:
    """One storage location."""
    return await service.location(scene_id, location_id)


@app.patch("/scenes/{scene_id}/locations/{location_id}/status")
async def change_status(
    scene_id: str, location_id: str, patch: StatusPatch, service: Service
) -> StatusChanged:
    """Occupy, release, lock, unlock, disable, enable, or mark an empty tray.

    Panels see a ``storage_location_status_change`` whose action names the flag that changed
    (``UPDATE`` when none or several did).
    """
    rev, action, location = await service.change_status(
        scene_id, location_id, patch.model_dump(exclude_unset=True)
    )
    return StatusChanged(scene_id=scene_id, rev=rev, action=action, storage_location=location)


@app.put("/scenes/{scene_id}/locations")
async def upsert_locations(
    scene_id: str, locations: list[LocationRecord], service: Service
) -> SceneChanged:
    """Add or replace full records by id; the scene is created by its first records."""
    return SceneChanged(scene_id=scene_id, rev=await service.upsert(scene_id, locations))


@app.delete("/scenes/{scene_id}/locations/{location_id}")
async def remove_location(scene_id: str, location_id: str, service: Service) -> SceneChanged:
    """Remove a storage location."""
    return SceneChanged(scene_id=scene_id, rev=await service.remove(scene_id, location_id))
