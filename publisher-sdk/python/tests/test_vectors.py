"""The golden vectors of publisher-sdk/vectors/, which the Rust SDK's tests read too."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import vwed_publisher
from vwed_publisher import (
    HybridClock,
    LocationsRemove,
    LocationStatus,
    LocationsUpsert,
    SceneEvent,
    SceneSnapshot,
    StatusAction,
    StatusChange,
    StorageLocation,
    Subjects,
    TaskAppend,
    TaskEvent,
    TaskReplace,
    TaskResult,
    TaskSnapshot,
    TaskStatus,
    decode_key,
    encode_key,
    format_timestamp,
    timestamp_now,
    validate_id,
)
from vwed_publisher.wire import (
    NOT_FOUND,
    chained_event_json,
    scene_tip_json,
    task_tip_json,
    to_json,
)

VECTORS = Path(__file__).resolve().parents[2] / "vectors"


def load(name: str) -> Any:
    return json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))


KEYS = load("keys")


@pytest.mark.parametrize("vector", KEYS["valid"], ids=lambda v: v["why"])
def test_valid_ids_map_to_their_keys_and_subjects(vector: dict[str, str]) -> None:
    validate_id(vector["id"])
    assert encode_key(vector["id"]) == vector["key"]
    assert decode_key(vector["key"]) == vector["id"]
    subjects = Subjects(KEYS["prefix"])
    assert subjects.task_events(vector["id"]) == vector["task_events"]
    assert subjects.scene_events(vector["id"]) == vector["scene_events"]
    assert subjects.task_snapshot(vector["id"]) == vector["task_snapshot"]
    assert subjects.scene_snapshot(vector["id"]) == vector["scene_snapshot"]
    assert subjects.snapshot_key(vector["task_snapshot"]) == vector["id"]
    assert subjects.snapshot_key(vector["scene_snapshot"]) == vector["id"]


REASONS = {
    "empty": "must not be empty",
    "too_long": "at most 256 bytes",
    "control_character": "control character",
}


@pytest.mark.parametrize("vector", KEYS["invalid"], ids=lambda v: v["reason"] + repr(v["id"][:8]))
def test_invalid_ids_are_refused_with_their_reason(vector: dict[str, str]) -> None:
    with pytest.raises(ValueError, match=REASONS[vector["reason"]]):
        validate_id(vector["id"])
    with pytest.raises(ValueError, match=REASONS[vector["reason"]]):
        Subjects().task_events(vector["id"])


def test_tokens_that_are_not_encodings_decode_to_nothing() -> None:
    for token in ["", "~!!", "~YS5", "~A", "~_w"]:
        assert decode_key(token) is None, token
    assert Subjects().snapshot_key("vwed.snapshot.task.a.b") is None
    assert Subjects().snapshot_key("other.snapshot.task.a") is None
    assert Subjects().snapshot_key("vwed.snapshot.job.a") is None


def results(items: list[dict[str, Any]]) -> list[TaskResult]:
    return [TaskResult(**item) for item in items]


def locations(items: list[dict[str, Any]]) -> list[StorageLocation]:
    return [StorageLocation(**item) for item in items]


def build_event(kind: str, value: dict[str, Any]) -> TaskEvent | SceneEvent | None:
    """A vector's typed event, with its ``prev_rev`` if it has one; ``None`` for other types."""
    v = value
    prev_rev = v.get("prev_rev")
    if kind == "task_append":
        return TaskAppend(
            v["task_record_id"], v["rev"], v["index"], results(v["results"]), prev_rev=prev_rev
        )
    if kind == "task_replace":
        return TaskReplace(v["task_record_id"], v["rev"], results(v["results"]), prev_rev=prev_rev)
    if kind == "scene_status_change":
        return StatusChange(
            v["scene_id"],
            v["rev"],
            v["layer_name"],
            v["action"],
            LocationStatus(**v["new_status"]),
            v["timestamp"],
            prev_rev=prev_rev,
        )
    if kind == "scene_upsert":
        return LocationsUpsert(
            v["scene_id"], v["rev"], locations(v["storage_locations"]), prev_rev=prev_rev
        )
    if kind == "scene_remove":
        return LocationsRemove(v["scene_id"], v["rev"], v["ids"], prev_rev=prev_rev)
    return None


def build(kind: str, value: dict[str, Any]) -> bytes:
    """The SDK's bytes for a vector's typed value."""
    v = dict(value)
    event = build_event(kind, v)
    if event is not None:
        return to_json(event)
    if kind == "task_tip":
        return task_tip_json(v["task_record_id"], v["rev"])
    if kind == "scene_tip":
        return scene_tip_json(v["scene_id"], v["rev"])
    if kind == "task_snapshot":
        return to_json(TaskSnapshot(v["task_record_id"], v["rev"], results(v["results"])))
    if kind == "scene_snapshot":
        snapshot = SceneSnapshot(v["scene_id"], v["rev"], locations(v["storage_locations"]))
        return to_json(snapshot)
    if kind == "not_found":
        return NOT_FOUND
    raise AssertionError(f"unknown vector type {kind}")


CHAINED = [case for case in load("payloads")["cases"] if "prev_rev" in case["value"]]
"""The events whose vectors name a ``prev_rev``."""


def test_some_vectors_of_each_key_kind_name_a_prev_rev() -> None:
    assert {case["type"].split("_")[0] for case in CHAINED} == {"task", "scene"}


@pytest.mark.parametrize("case", CHAINED, ids=lambda c: f"{c['type']}: {c['why']}")
def test_a_prev_rev_filled_in_by_the_publisher_writes_the_same_json(case: dict[str, Any]) -> None:
    # The publisher does not set prev_rev on the caller's event: it writes the event chained
    # to the rev it remembers. Those bytes are the vector's too.
    value = dict(case["value"])
    prev_rev = value.pop("prev_rev")
    event = build_event(case["type"], value)
    assert event is not None
    assert chained_event_json(event, prev_rev).decode() == case["json"]
    assert event.prev_rev is None
    # Without a remembered rev, or with one not below the event's, it is left out.
    unchained = to_json(event).decode()
    assert '"prev_rev"' not in unchained
    assert chained_event_json(event, None).decode() == unchained
    assert chained_event_json(event, event.rev).decode() == unchained
    # An event's own prev_rev is kept, whatever the publisher remembers.
    event.prev_rev = prev_rev
    assert chained_event_json(event, prev_rev - 1).decode() == case["json"]
    assert chained_event_json(event, None).decode() == case["json"]


@pytest.mark.parametrize(
    "case", load("payloads")["cases"], ids=lambda c: f"{c['type']}: {c['why']}"
)
def test_typed_values_write_exactly_the_vectors_json(case: dict[str, Any]) -> None:
    assert build(case["type"], case["value"]).decode() == case["json"]


@pytest.mark.parametrize(
    "case", load("payloads")["cases"], ids=lambda c: f"{c['type']}: {c['why']}"
)
def test_the_fast_encoder_writes_what_the_documented_one_does(case: dict[str, Any]) -> None:
    # to_json builds CPython's C encoder once; json.dumps with the same settings is the
    # documented way, and the fallback where the C encoder cannot be had.
    sdk_bytes = build(case["type"], case["value"])
    parsed = json.loads(sdk_bytes)
    documented = json.dumps(parsed, ensure_ascii=False, separators=(",", ":"))
    assert sdk_bytes.decode() == documented


@pytest.mark.parametrize(
    "case", load("payloads")["cases"], ids=lambda c: f"{c['type']}: {c['why']}"
)
def test_known_actions_become_members(case: dict[str, Any]) -> None:
    if case["type"] == "scene_status_change":
        action = case["value"]["action"]
        assert (action in StatusAction.__members__) == (action != "MOVE_TRAY")


def test_the_hybrid_clock_follows_its_steps() -> None:
    clock = HybridClock()
    for step in load("clock")["steps"]:
        if "observe" in step:
            clock.observe(step["observe"])
        else:
            assert clock.next_at(step["now"]) == step["rev"], step


@pytest.mark.parametrize("case", load("timestamps")["cases"], ids=lambda c: c["timestamp"])
def test_timestamps(case: dict[str, Any]) -> None:
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=case["unix_micros"])
    assert format_timestamp(moment) == case["timestamp"]
    naive = moment.replace(tzinfo=None)
    assert format_timestamp(naive) == case["timestamp"]
    east = moment.astimezone(timezone(timedelta(hours=8)))
    assert format_timestamp(east) == case["timestamp"]


def test_timestamp_now_is_now_in_the_apis_format() -> None:
    for _ in range(3):
        before = format_timestamp(datetime.now(timezone.utc))
        now = timestamp_now()
        after = format_timestamp(datetime.now(timezone.utc))
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", now)
        assert before <= now <= after


def test_enums_name_every_status_and_action() -> None:
    enums = load("enums")
    assert [s.value for s in TaskStatus] == enums["task_statuses"]
    assert [a.value for a in StatusAction] == enums["status_actions"]


def test_the_version_is_the_rust_crates() -> None:
    cargo = (VECTORS.parent / "Cargo.toml").read_text()
    match = re.search(r'^version = "([^"]+)"', cargo, re.M)
    assert match is not None
    assert vwed_publisher.__version__ == match.group(1)
    pyproject = (VECTORS.parent / "python" / "pyproject.toml").read_text()
    assert f'version = "{match.group(1)}"' in pyproject
