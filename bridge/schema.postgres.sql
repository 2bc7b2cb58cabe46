-- The reference schema for PostgreSQL: the same tables and columns as schema.sql. PostgreSQL has
-- no ON UPDATE, so a trigger stamps updated_at on every update, with clock_timestamp() (the
-- moment of the write, not of the transaction's start, so that every write moves it).

CREATE TABLE IF NOT EXISTS vwed_storage_location (
    id                     TEXT         NOT NULL,
    layer_index            INTEGER      NOT NULL,
    layer_name             TEXT         NOT NULL,
    operate_point_id       TEXT,
    station_name           TEXT         NOT NULL,
    storage_location_name  TEXT,
    scene_id               TEXT         NOT NULL,
    storage_area_id        TEXT         NOT NULL,
    area_name              TEXT,
    is_occupied            BOOLEAN      NOT NULL DEFAULT FALSE,
    is_locked              BOOLEAN      NOT NULL DEFAULT FALSE,
    is_disabled            BOOLEAN      NOT NULL DEFAULT FALSE,
    is_empty_tray          BOOLEAN      NOT NULL DEFAULT FALSE,
    locked_by              TEXT,
    goods_content          TEXT,
    goods_weight           BIGINT,
    goods_volume           BIGINT,
    goods_stored_at        TIMESTAMP(3),
    goods_retrieved_at     TIMESTAMP(3),
    last_access_at         TIMESTAMP(3),
    max_weight             BIGINT,
    max_volume             BIGINT,
    layer_height           BIGINT,
    tags                   TEXT,
    description            TEXT,
    created_at             TIMESTAMP(3) NOT NULL DEFAULT now(),
    updated_at             TIMESTAMP(6) NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (scene_id, id)
);
CREATE INDEX IF NOT EXISTS vwed_storage_location_changed ON vwed_storage_location (updated_at);

CREATE OR REPLACE FUNCTION vwed_storage_location_stamp() RETURNS trigger AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS vwed_storage_location_stamp ON vwed_storage_location;
CREATE TRIGGER vwed_storage_location_stamp BEFORE UPDATE ON vwed_storage_location
    FOR EACH ROW EXECUTE FUNCTION vwed_storage_location_stamp();

CREATE TABLE IF NOT EXISTS vwed_task_result (
    id              BIGSERIAL    PRIMARY KEY,
    task_record_id  TEXT         NOT NULL,
    created_at      TIMESTAMP(3) NOT NULL DEFAULT now(),
    context         TEXT         NOT NULL,
    status          TEXT         NOT NULL
);
CREATE INDEX IF NOT EXISTS vwed_task_result_task ON vwed_task_result (task_record_id, id);
