-- The device inventory. One schema for SQLite and PostgreSQL: only types both read the same
-- way (TEXT, BIGINT), times in Unix milliseconds, groups as ",a,b," (filtered with LIKE).
CREATE TABLE devices (
    id TEXT PRIMARY KEY NOT NULL,
    registered BIGINT NOT NULL,
    coap TEXT,
    http_id TEXT,
    class TEXT,
    publish_id TEXT,
    groups TEXT NOT NULL DEFAULT '',
    running_seq BIGINT,
    running_semver TEXT,
    target_version BIGINT,
    target_seq BIGINT,
    target_semver TEXT,
    state TEXT NOT NULL DEFAULT 'idle',
    reason TEXT,
    bytes_done BIGINT NOT NULL DEFAULT 0,
    bytes_total BIGINT NOT NULL DEFAULT 0,
    peer TEXT,
    slot_before TEXT,
    first_seen BIGINT,
    last_seen BIGINT,
    state_at BIGINT,
    report_at BIGINT,
    report TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX devices_state ON devices (state);
CREATE INDEX devices_publish_id ON devices (publish_id);
CREATE INDEX devices_http_id ON devices (http_id);
