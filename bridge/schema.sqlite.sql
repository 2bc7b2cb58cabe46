-- The reference schema for SQLite (small sites, and the bridge's own tests). The same tables
-- and columns as schema.sql; SQLite has no ON UPDATE, so a trigger stamps updated_at.

CREATE TABLE IF NOT EXISTS vwed_storage_location (
    id                     TEXT    NOT NULL,
    layer_index            INTEGER NOT NULL,
    layer_name             TEXT    NOT NULL,
    operate_point_id       TEXT,
    station_name           TEXT    NOT NULL,
    storage_location_name  TEXT,
    scene_id               TEXT    NOT NULL,
    storage_area_id        TEXT    NOT NULL,
    area_name              TEXT,
    is_occupied            BOOLEAN NOT NULL DEFAULT 0,
    is_locked              BOOLEAN NOT NULL DEFAULT 0,
    is_disabled            BOOLEAN NOT NULL DEFAULT 0,
    is_empty_tray          BOOLEAN NOT NULL DEFAULT 0,
    locked_by              TEXT,
    goods_content          TEXT,
    goods_weight           INTEGER,
    goods_volume           INTEGER,
    goods_stored_at        TEXT,
    goods_retrieved_at     TEXT,
    last_access_at         TEXT,
    max_weight             INTEGER,
    max_volume             INTEGER,
    layer_height           INTEGER,
    tags                   TEXT,
    description            TEXT,
    created_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    -- Written by the trigger below on every update, as text that sorts in time order.
    updated_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    PRIMARY KEY (scene_id, id)
);
CREATE INDEX IF NOT EXISTS vwed_storage_location_changed ON vwed_storage_location (updated_at);

-- Stamps every update that did not set updated_at itself (recursive triggers are off, so the
-- trigger's own UPDATE does not fire it again). SQLite's clock has milliseconds.
CREATE TRIGGER IF NOT EXISTS vwed_storage_location_stamp
AFTER UPDATE ON vwed_storage_location
FOR EACH ROW WHEN NEW.updated_at IS OLD.updated_at
BEGIN
    UPDATE vwed_storage_location
       SET updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
     WHERE scene_id = NEW.scene_id AND id = NEW.id;
END;

CREATE TABLE IF NOT EXISTS vwed_task_result (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    task_record_id  TEXT    NOT NULL,
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    context         TEXT    NOT NULL,
    status          TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS vwed_task_result_task ON vwed_task_result (task_record_id, id);
