"""``vwed-bridge-site-demo``: engines that write the reference schema, to watch the bridge work.

It creates the reference tables if they are missing, seeds one scene of storage locations, then
changes them and appends task results as VWED's engines would: plain SQL, no events. With the
bridge and a hub running, open a panel on the scene (``warehouse-demo``) or a task
(``demo-task-1``...) and watch the database's changes arrive.

    vwed-bridge-site-demo --db-url mysql+aiomysql://root@127.0.0.1:3306/vwed
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
from itertools import count
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("vwed_bridge.site_demo")

SCENE = "warehouse-demo"
"""The scene the demo writes."""
STATIONS = 10
"""Stations of the scene, four layers each."""
BLOCKS = ("[取货] 前往货架", "[取货] 取货完成", "[运输] 前往站点", "[放货] 放货完成")
"""The results of a demo task, in order; the last one is a success."""


def _schema(name: str) -> str:
    # In the installed package (see pyproject's force-include), else beside src/ in a checkout.
    here = Path(__file__).resolve().parent
    path = here / name if (here / name).exists() else here.parents[1] / name
    return path.read_text(encoding="utf-8")


async def _create_tables(engine: AsyncEngine) -> None:
    dialect = engine.dialect.name
    if dialect == "postgresql":
        # schema.postgres.sql holds a function body, which asyncpg's statements cannot carry
        # through SQLAlchemy: the site creates its tables with psql first.
        return
    script = _schema("schema.sqlite.sql" if dialect == "sqlite" else "schema.sql")
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    body = "\n".join(lines)
    # SQLite's trigger holds semicolons of its own: its script is one executescript.
    async with engine.begin() as connection:
        if dialect == "sqlite":
            raw = await connection.get_raw_connection()
            await raw.driver_connection.executescript(body)  # type: ignore[union-attr]
        else:
            for statement in (s.strip() for s in body.split(";")):
                if statement:
                    await connection.execute(text(statement))


async def _seed(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        existing = (
            await connection.execute(
                text("SELECT COUNT(*) FROM vwed_storage_location WHERE scene_id = :s"), {"s": SCENE}
            )
        ).scalar()
        if existing:
            return
        for station in range(1, STATIONS + 1):
            for layer in range(1, 5):
                await connection.execute(
                    text(
                        "INSERT INTO vwed_storage_location (id, layer_index, layer_name, "
                        "station_name, scene_id, storage_area_id, area_name) VALUES "
                        "(:id, :layer, :name, :station, :scene, 'area-1', '一号库区')"
                    ),
                    {
                        "id": f"ST{station}-{layer}",
                        "layer": layer,
                        "name": f"ST{station}-L{layer}",
                        "station": f"ST{station}",
                        "scene": SCENE,
                    },
                )
    log.info("seeded scene %s with %d locations", SCENE, STATIONS * 4)


async def _change_a_location(engine: AsyncEngine) -> None:
    id = f"ST{random.randint(1, STATIONS)}-{random.randint(1, 4)}"
    flag = random.choice(["is_occupied", "is_locked", "is_disabled", "is_empty_tray"])
    async with engine.begin() as connection:
        await connection.execute(
            text(
                f"UPDATE vwed_storage_location SET {flag} = NOT {flag} "
                "WHERE scene_id = :s AND id = :id"
            ),
            {"s": SCENE, "id": id},
        )


async def _append_a_result(engine: AsyncEngine, task: str, step: int) -> None:
    status = "SUCCESS" if step == len(BLOCKS) - 1 else "RUNNING"
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO vwed_task_result (task_record_id, context, status) VALUES (:t, :c, :s)"
            ),
            {"t": task, "c": BLOCKS[step], "s": status},
        )


async def run(db_url: str, every: float) -> None:
    """Write for ever: a location change and a task step every ``every`` seconds."""
    engine = create_async_engine(db_url)
    while True:
        try:
            await _create_tables(engine)
            await _seed(engine)
            break
        except Exception as error:  # the database is still starting
            log.warning("waiting for the database: %s", str(error).splitlines()[0])
            await asyncio.sleep(2)
    tasks = count(1)
    task, step = f"demo-task-{next(tasks)}", 0
    while True:
        try:
            await _change_a_location(engine)
            await _append_a_result(engine, task, step)
            step += 1
            if step == len(BLOCKS):
                task, step = f"demo-task-{next(tasks)}", 0
        except Exception as error:
            log.warning("writing failed: %s", str(error).splitlines()[0])
        await asyncio.sleep(every)


def main() -> None:
    """The ``vwed-bridge-site-demo`` command."""
    parser = argparse.ArgumentParser(prog="vwed-bridge-site-demo", description=__doc__)
    parser.add_argument(
        "--db-url",
        default=os.environ.get("VWED_BRIDGE_DB_URL"),
        required="VWED_BRIDGE_DB_URL" not in os.environ,
        help="the database (SQLAlchemy URL) [env VWED_BRIDGE_DB_URL]",
    )
    parser.add_argument("--every", type=float, default=1.0, help="seconds between writes")
    args = parser.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args.db_url, args.every))
