"""Configuration files, and the statements they lead to in each database's dialect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects import mysql, postgresql, sqlite

from vwed_bridge.cli import parser
from vwed_bridge.config import ConfigError, load_sources
from vwed_bridge.source import LocationStatements, TaskStatements

BRIDGE = Path(__file__).resolve().parents[1]


def test_the_example_configuration_maps_what_it_says() -> None:
    sources = load_sources(BRIDGE / "example.toml")
    assert sources.locations is not None
    assert sources.tasks is not None
    assert sources.locations.table == "wms_storage_slot"
    assert sources.locations.column("scene_id") == "warehouse_code"
    assert sources.locations.column("layer_name") == "layer_name"  # not mapped: its own name
    assert sources.tasks.column("id") == "log_id"


@pytest.mark.parametrize("dialect", [mysql, postgresql, sqlite])
def test_every_statement_compiles_for_each_database(dialect: Any) -> None:
    dialect = dialect.dialect()
    sources = load_sources(BRIDGE / "example.toml")
    assert sources.locations is not None
    assert sources.tasks is not None
    locations = LocationStatements(sources.locations)
    tasks = TaskStatements(sources.tasks)
    statements = [
        locations.everything(),
        locations.changed_since("2025-01-01"),
        locations.scene("s"),
        tasks.after(5, [3, 4], 100),
        tasks.highest_id(),
        tasks.ids_since(1),
        tasks.task("t"),
    ]
    for statement in statements:
        sql = str(statement.compile(dialect=dialect))
        assert "wms_storage_slot" in sql or "task_execution_log" in sql
    after = str(tasks.after(5, [3, 4], 100).compile(dialect=dialect))
    # The position counts only earlier results of the same task that the API can carry.
    assert "count(*)" in after.lower()
    assert "upper(" in after.lower()


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[locatons]\n", "unknown sections ['locatons']"),
        ("[tasks]\ntabel = 'x'\n", "unknown keys ['tabel']"),
        ("[tasks.columns]\nid = 3\n", "maps field names to column names"),
        ("[locations]\ntable = ''\n", "table must be a non-empty string"),
        ("[tasks\n", "cannot read the configuration"),
    ],
)
def test_a_wrong_configuration_is_refused_with_what_is_wrong(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "site.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        load_sources(path)


def test_a_table_can_be_switched_off() -> None:
    path = Path(__file__).parent / "off.toml"
    try:
        path.write_text("[tasks]\nenabled = false\n", encoding="utf-8")
        sources = load_sources(path)
    finally:
        path.unlink()
    assert sources.tasks is None
    assert sources.locations is not None


def test_every_flag_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # As docker-compose.yml and the image pass them.
    monkeypatch.setenv("VWED_BRIDGE_DB_URL", "sqlite+aiosqlite:///site.db")
    monkeypatch.setenv("VWED_BRIDGE_POLL_INTERVAL", "0.25")
    monkeypatch.setenv("VWED_BRIDGE_SUBJECT_PREFIX", "site")
    args = parser().parse_args([])
    assert args.db_url == "sqlite+aiosqlite:///site.db"
    assert args.poll_interval == 0.25
    assert args.subject_prefix == "site"
    # A flag wins over the environment.
    assert parser().parse_args(["--subject-prefix", "other"]).subject_prefix == "other"


def test_the_database_is_required_from_a_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("VWED_BRIDGE_DB_URL", raising=False)
    with pytest.raises(SystemExit):
        parser().parse_args([])
    assert "--db-url" in capsys.readouterr().err
