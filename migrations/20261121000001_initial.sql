-- The initial schema of stackplane's Postgres database. Kubernetes holds desired and observed
-- tenant state; Postgres holds what Kubernetes should not: the Stripe event log and billing work
-- queue, status history (for uptime), backup records that outlive their CRs, API tokens and the
-- audit log.

-- Every Stripe event received, keyed by Stripe's event id so redelivery is a no-op
-- (INSERT ... ON CONFLICT (id) DO NOTHING). Also the billing work queue: the worker claims rows
-- whose state is pending or failed and whose next_attempt_at has come, with FOR UPDATE SKIP LOCKED.
CREATE TABLE stripe_events (
    id              TEXT PRIMARY KEY,
    event_type      TEXT        NOT NULL,
    -- event.created: when Stripe created the event; orders events of one subscription.
    created         TIMESTAMPTZ NOT NULL,
    livemode        BOOLEAN     NOT NULL DEFAULT false,
    -- The subscription the event concerns, when there is one.
    subscription_id TEXT,
    payload         JSONB       NOT NULL,
    state           TEXT        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'applied', 'skipped', 'failed')),
    attempts        INTEGER     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    processed_at    TIMESTAMPTZ
);

CREATE INDEX stripe_events_due ON stripe_events (next_attempt_at)
    WHERE state IN ('pending', 'failed');
CREATE INDEX stripe_events_by_subscription ON stripe_events (subscription_id, created);
CREATE INDEX stripe_events_by_type ON stripe_events (event_type, received_at);

-- Per subscription, the newest state the billing worker applied, so an older event delivered
-- late never overwrites a newer one.
CREATE TABLE subscription_state (
    subscription_id TEXT PRIMARY KEY,
    tenant          TEXT        NOT NULL,
    customer_id     TEXT        NOT NULL,
    status          TEXT        NOT NULL,
    event_id        TEXT        NOT NULL REFERENCES stripe_events (id),
    event_created   TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per phase transition of a tenant, recorded by the api; uptime is computed from it.
CREATE TABLE tenant_status_history (
    id             BIGSERIAL PRIMARY KEY,
    tenant         TEXT        NOT NULL,
    platform       TEXT        NOT NULL,
    phase          TEXT        NOT NULL,
    previous_phase TEXT,
    reason         TEXT,
    observed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX tenant_status_history_by_tenant ON tenant_status_history (tenant, observed_at);

-- Backups and restores, kept after their TenantBackup objects are gone.
CREATE TABLE backup_records (
    name         TEXT PRIMARY KEY,
    tenant       TEXT        NOT NULL,
    platform     TEXT,
    reason       TEXT        NOT NULL CHECK (reason IN ('manual', 'scheduled', 'pre-delete')),
    restore_from TEXT,
    phase        TEXT        NOT NULL
                 CHECK (phase IN ('Pending', 'InProgress', 'Completed', 'PartiallyFailed', 'Failed')),
    -- status.parts of the TenantBackup: kind, id, source, state, message of each part.
    parts        JSONB       NOT NULL DEFAULT '[]'::jsonb,
    started_at   TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ,
    -- Set when retention removed the backup and its snapshots.
    deleted_at   TIMESTAMPTZ,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX backup_records_by_tenant ON backup_records (tenant, created_at DESC);

-- Bearer tokens. Only a SHA-256 hash of each token is stored; the token is shown once.
CREATE TABLE api_tokens (
    id           UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash   BYTEA       NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    -- The first characters of the token, to tell tokens apart in listings and logs.
    prefix       TEXT        NOT NULL,
    scope        TEXT        NOT NULL CHECK (scope IN ('tenant', 'admin')),
    tenant       TEXT,
    description  TEXT,
    created_by   TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    CHECK ((scope = 'tenant') = (tenant IS NOT NULL))
);

CREATE INDEX api_tokens_by_tenant ON api_tokens (tenant) WHERE revoked_at IS NULL;

-- Who did what, when, and how it ended: one row per state-changing call.
CREATE TABLE audit_log (
    id         BIGSERIAL PRIMARY KEY,
    at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 'admin', 'token:<id>', 'stripe' or 'system'.
    actor      TEXT        NOT NULL,
    -- What was done, e.g. 'backup.create', 'token.issue', 'billing.replay'.
    action     TEXT        NOT NULL,
    -- What it was done to, e.g. a tenant or event id.
    target     TEXT,
    outcome    TEXT        NOT NULL CHECK (outcome IN ('success', 'denied', 'failed')),
    request_id TEXT,
    details    JSONB       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_log_by_target ON audit_log (target, at DESC);
CREATE INDEX audit_log_by_time ON audit_log (at DESC);
