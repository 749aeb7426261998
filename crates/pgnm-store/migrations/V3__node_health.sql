-- The latest health of every node (one row per node) and the check history.
CREATE TABLE node_state (
    node_id          BIGINT PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    status           TEXT        NOT NULL,
    raw_status       TEXT        NOT NULL,
    reason           TEXT        NOT NULL,
    eligible         BOOLEAN     NOT NULL,
    height           BIGINT,
    head_hash        TEXT,
    head_time        BIGINT,
    group_head       BIGINT,
    latency_ms       INTEGER,
    latency_ewma_ms  DOUBLE PRECISION NOT NULL DEFAULT 0,
    error_rate       DOUBLE PRECISION NOT NULL DEFAULT 0,
    consecutive_ok   INTEGER     NOT NULL DEFAULT 0,
    consecutive_bad  INTEGER     NOT NULL DEFAULT 0,
    height_since     TIMESTAMPTZ,
    cooldown_until   TIMESTAMPTZ,
    checked_at       TIMESTAMPTZ NOT NULL,
    changed_at       TIMESTAMPTZ NOT NULL
);

CREATE TABLE node_checks (
    id          BIGSERIAL PRIMARY KEY,
    node_id     BIGINT      NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    checked_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    status      TEXT        NOT NULL,
    reason      TEXT        NOT NULL,
    height      BIGINT,
    latency_ms  INTEGER
);
CREATE INDEX node_checks_node_idx ON node_checks (node_id, id);
CREATE INDEX node_checks_time_idx ON node_checks (checked_at);
