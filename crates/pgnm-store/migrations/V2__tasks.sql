-- The scheduler's tasks and their run history.
CREATE TABLE tasks (
    id            BIGSERIAL PRIMARY KEY,
    name          TEXT        NOT NULL,
    command       TEXT        NOT NULL,
    role          TEXT,
    args          JSONB,
    interval_ms   BIGINT,
    cron          TEXT,
    enabled       BOOLEAN     NOT NULL DEFAULT TRUE,
    allow_overlap BOOLEAN     NOT NULL DEFAULT FALSE,
    timeout_ms    BIGINT      NOT NULL,
    next_run_at   TIMESTAMPTZ NOT NULL,
    last_run_at   TIMESTAMPTZ,
    last_outcome  TEXT,
    last_error    TEXT,
    run_count     BIGINT      NOT NULL DEFAULT 0,
    source        TEXT        NOT NULL DEFAULT 'api',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT tasks_name_key UNIQUE (name),
    CONSTRAINT tasks_one_schedule CHECK ((interval_ms IS NULL) <> (cron IS NULL))
);
CREATE INDEX tasks_due_idx ON tasks (next_run_at) WHERE enabled;

-- One row per run. A run whose outcome is NULL is in flight, owned by
-- `instance` until `lease_until`; past it another replica takes it over and
-- sends the same request id again (the role answers a repeated id from its
-- stored reply, so a run is never executed twice).
CREATE TABLE task_runs (
    id            BIGSERIAL PRIMARY KEY,
    task_id       BIGINT      NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    request_id    TEXT        NOT NULL,
    scheduled_for TIMESTAMPTZ NOT NULL,
    manual        BOOLEAN     NOT NULL DEFAULT FALSE,
    instance      TEXT        NOT NULL,
    lease_until   TIMESTAMPTZ NOT NULL,
    attempts      INTEGER     NOT NULL DEFAULT 1,
    dispatched_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at   TIMESTAMPTZ,
    outcome       TEXT,
    error         TEXT,
    CONSTRAINT task_runs_request_id_key UNIQUE (request_id),
    CONSTRAINT task_runs_one_per_tick UNIQUE (task_id, scheduled_for, manual)
);
CREATE INDEX task_runs_in_flight_idx ON task_runs (lease_until) WHERE outcome IS NULL;
CREATE INDEX task_runs_task_idx ON task_runs (task_id, id);
