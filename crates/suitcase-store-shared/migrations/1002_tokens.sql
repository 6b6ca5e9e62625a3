-- Tokens and DTLS credentials every node honours (suitcase token … --database postgres://…):
-- one suitcase-auth TokenEntry (JSON) per name.
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY,
    entry TEXT NOT NULL
);
