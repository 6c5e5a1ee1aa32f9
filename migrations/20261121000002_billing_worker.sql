-- The billing worker's bookkeeping, added to the tables of the initial schema.

-- Why an event ended as it did, and the category of its last error (a stable metric label such
-- as 'unknown_price'), so failures of one kind can be retried together (e.g. when a Platform
-- starts listing a price).
ALTER TABLE stripe_events
    ADD COLUMN outcome    TEXT,
    ADD COLUMN error_kind TEXT;

CREATE INDEX stripe_events_failed_by_kind ON stripe_events (error_kind) WHERE state = 'failed';

-- The merged state of a subscription the worker last applied (platform, tier, customer, status,
-- period end, cancellation) and the status precedence of the event that set it: events are
-- ordered by (event_created, status_rank, event_id).
ALTER TABLE subscription_state
    ADD COLUMN status_rank INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN snapshot    JSONB   NOT NULL DEFAULT '{}'::jsonb;
