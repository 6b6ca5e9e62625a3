-- The shared store (suitcase-store-shared). Version numbers from 1001 keep clear of the
-- fleet's migrations, which share sqlx's migration table in the same database.

-- One row per publish-id: its high-water marks, locked (FOR UPDATE) by a publish so that
-- version numbers and manifest sequence numbers grow across every node.
CREATE TABLE store_ids (
    publish_id TEXT PRIMARY KEY,
    max_seq BIGINT NOT NULL,
    max_sequence_number BIGINT
);

-- Every change gets the next number; a node reads the changes after the last it saw.
CREATE SEQUENCE store_changes;

CREATE TABLE store_versions (
    publish_id TEXT NOT NULL REFERENCES store_ids (publish_id),
    seq BIGINT NOT NULL,
    -- The version record (suitcase_store::version_to_json).
    record TEXT NOT NULL,
    semver TEXT,
    removed BOOLEAN NOT NULL DEFAULT FALSE,
    changed BIGINT NOT NULL,
    PRIMARY KEY (publish_id, seq)
);

CREATE INDEX store_versions_changed ON store_versions (changed);
