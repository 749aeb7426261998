-- The node registry. Credentials are stored as given: `${VAR}` references stay
-- references; their values live only in the checker's environment.
CREATE TABLE nodes (
    id          BIGSERIAL PRIMARY KEY,
    node_hash   TEXT        NOT NULL,
    type        TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    url         TEXT        NOT NULL,
    auth        JSONB,
    headers     JSONB       NOT NULL DEFAULT '{}',
    enabled     BOOLEAN     NOT NULL DEFAULT TRUE,
    priority    SMALLINT    NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    weight      INTEGER     NOT NULL DEFAULT 100 CHECK (weight BETWEEN 1 AND 10000),
    labels      JSONB       NOT NULL DEFAULT '{}',
    transport   TEXT        NOT NULL DEFAULT 'direct',
    timeout_ms  INTEGER,
    max_lag     BIGINT,
    source      TEXT        NOT NULL DEFAULT 'api',
    revision    BIGINT      NOT NULL DEFAULT 1,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT nodes_node_hash_key UNIQUE (node_hash),
    CONSTRAINT nodes_name_key UNIQUE (name)
);

CREATE INDEX nodes_type_idx ON nodes (type, id);
CREATE INDEX nodes_labels_idx ON nodes USING GIN (labels);
