-- Blobs marked for collection (suitcase-store-shared's gc): referenced by no version when
-- marked; deleted by a later run if still unreferenced then. A publish about to use a blob
-- deletes its mark first (a "claim"), so a blob it found present is never deleted under it.
CREATE TABLE IF NOT EXISTS store_blob_doomed (
    sha256 TEXT PRIMARY KEY,
    marked_at BIGINT NOT NULL
);
