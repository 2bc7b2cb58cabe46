-- The reference schema the bridge reads with its default configuration (MySQL 8 / MariaDB 10.5
-- and later). Its columns are the fields of the client API document, with the same names; a site
-- whose tables differ maps them in a TOML file instead (see example.toml).
--
-- What change detection needs, and nothing more:
--   * vwed_storage_location.updated_at changes on every write, by the database itself
--     (ON UPDATE), so the bridge finds changed rows whatever program wrote them;
--   * vwed_task_result.id is AUTO_INCREMENT: results are appended, never changed, and their
--     order in a task's list is the order of their ids.
-- The indexes serve exactly the bridge's queries: changed rows by updated_at, a scene's
-- locations, a task's results, and the position of a result within its task.

CREATE TABLE IF NOT EXISTS vwed_storage_location (
    id                     VARCHAR(128)  NOT NULL,  -- layer id, unique within a scene
    layer_index            INT           NOT NULL,
    layer_name             VARCHAR(128)  NOT NULL,
    operate_point_id       VARCHAR(128)  NULL,
    station_name           VARCHAR(128)  NOT NULL,
    storage_location_name  VARCHAR(128)  NULL,
    scene_id               VARCHAR(128)  NOT NULL,
    storage_area_id        VARCHAR(128)  NOT NULL,
    area_name              VARCHAR(128)  NULL,
    is_occupied            BOOLEAN       NOT NULL DEFAULT FALSE,
    is_locked              BOOLEAN       NOT NULL DEFAULT FALSE,
    is_disabled            BOOLEAN       NOT NULL DEFAULT FALSE,
    is_empty_tray          BOOLEAN       NOT NULL DEFAULT FALSE,
    locked_by              VARCHAR(128)  NULL,
    goods_content          VARCHAR(512)  NULL,
    goods_weight           BIGINT        NULL,      -- grams
    goods_volume           BIGINT        NULL,      -- cubic centimetres
    goods_stored_at        DATETIME(3)   NULL,
    goods_retrieved_at     DATETIME(3)   NULL,
    last_access_at         DATETIME(3)   NULL,
    max_weight             BIGINT        NULL,
    max_volume             BIGINT        NULL,
    layer_height           BIGINT        NULL,      -- millimetres
    tags                   VARCHAR(512)  NULL,
    description            VARCHAR(1024) NULL,
    created_at             DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    -- Microseconds, so that two writes within one millisecond still differ.
    updated_at             DATETIME(6)   NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
                                         ON UPDATE CURRENT_TIMESTAMP(6),
    PRIMARY KEY (scene_id, id),
    KEY vwed_storage_location_changed (updated_at)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS vwed_task_result (
    id              BIGINT        NOT NULL AUTO_INCREMENT,
    task_record_id  VARCHAR(256)  NOT NULL,
    created_at      DATETIME(3)   NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    context         TEXT          NOT NULL,
    status          VARCHAR(16)   NOT NULL,         -- SUCCESS, FAILED or RUNNING
    PRIMARY KEY (id),
    KEY vwed_task_result_task (task_record_id, id)
) DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
