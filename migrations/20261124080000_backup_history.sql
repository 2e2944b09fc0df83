-- Backup history: one row per Backup run (keyed by the object's uid), updated when the run
-- ends and when a restore drill verifies it. Kept after the Backup object is deleted by
-- retention, so sizes, durations, checksums and verification results stay queryable.
CREATE TABLE backup_runs (
    uid              text PRIMARY KEY,
    namespace        text NOT NULL,
    name             text NOT NULL,
    policy           text NOT NULL,
    phase            text NOT NULL,
    reason           text,
    message          text,
    object_key       text,
    source_bytes     bigint,
    encrypted_bytes  bigint,
    sha256           text,
    started_at       timestamptz,
    completed_at     timestamptz,
    duration_seconds double precision,
    verified         boolean NOT NULL DEFAULT false,
    verified_at      timestamptz,
    checks           jsonb NOT NULL DEFAULT '[]',
    deleted_at       timestamptz,
    recorded_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX backup_runs_policy ON backup_runs (namespace, policy, completed_at DESC);
