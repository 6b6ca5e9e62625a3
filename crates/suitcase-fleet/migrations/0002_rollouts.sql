-- Rollouts: the rollout (its plan as JSON, its progress in columns) and one row per device
-- it targets. Same types as 0001 (TEXT, BIGINT; Unix milliseconds).
CREATE TABLE rollouts (
    id BIGINT PRIMARY KEY NOT NULL,
    name TEXT,
    publish_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    seq BIGINT,
    semver TEXT,
    baseline BIGINT,
    plan TEXT NOT NULL,
    coap_base TEXT,
    http_base TEXT,
    state TEXT NOT NULL,
    reason TEXT,
    wave BIGINT NOT NULL,
    wave_ends TEXT NOT NULL,
    wave_started TEXT NOT NULL,
    wave_finished TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    start_at BIGINT NOT NULL,
    ended_at BIGINT
);
CREATE INDEX rollouts_publish_id ON rollouts (publish_id);
CREATE TABLE rollout_devices (
    rollout BIGINT NOT NULL,
    device TEXT NOT NULL,
    position BIGINT NOT NULL,
    wave BIGINT NOT NULL,
    status TEXT NOT NULL,
    triggered_at BIGINT,
    done_at BIGINT,
    detail TEXT,
    PRIMARY KEY (rollout, device)
);
