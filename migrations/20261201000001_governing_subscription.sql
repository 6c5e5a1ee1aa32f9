-- Billing truth: a Tenant (platform, customer) follows one governing subscription, Stripe's API is
-- read after each event and by a periodic sweep.

-- States read from the Stripe API (and by the sweep) have no event behind them: their event_id is
-- 'stripe-api:<millis>', which is no row of stripe_events.
ALTER TABLE subscription_state DROP CONSTRAINT IF EXISTS subscription_state_event_id_fkey;

-- The platform each subscription is on, to find a customer's subscriptions of one platform.
ALTER TABLE subscription_state ADD COLUMN platform TEXT;
UPDATE subscription_state SET platform = snapshot->>'platform' WHERE snapshot ? 'platform';

-- "The newest subscription" needs each subscription's creation time; rows written before this
-- migration did not keep it: the first event Stripe sent about the subscription stands in.
UPDATE subscription_state s
SET snapshot = s.snapshot || jsonb_build_object('created', extract(epoch FROM coalesce(
        (SELECT min(e.created) FROM stripe_events e WHERE e.subscription_id = s.subscription_id),
        s.event_created))::bigint)
WHERE NOT s.snapshot ? 'created' AND s.snapshot ? 'platform';

CREATE INDEX subscription_state_by_customer ON subscription_state (customer_id, platform);

-- One row per Tenant billing applied: which subscription governs it, the governing state applied
-- (so a Tenant whose subscription moved to another platform is still known and can be cancelled),
-- what was last written (to skip writes that change nothing), and when Stripe was last read.
CREATE TABLE billing_tenants (
    tenant          TEXT PRIMARY KEY,
    platform        TEXT        NOT NULL,
    customer_id     TEXT        NOT NULL,
    subscription_id TEXT        NOT NULL,
    snapshot        JSONB       NOT NULL,
    -- Fingerprint of the last written spec and conditions, and the conditions as written.
    written         JSONB       NOT NULL DEFAULT '{}'::jsonb,
    written_at      TIMESTAMPTZ,
    -- The last successful read of the customer's subscriptions from Stripe.
    synced_at       TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX billing_tenants_by_customer ON billing_tenants (customer_id);

-- Existing Tenants: the subscription that governs each by the new rule (the newest live one, else
-- the one that ended last). `written` stays empty, so the next read of the customer rewrites spec.subscription.id.
INSERT INTO billing_tenants (tenant, platform, customer_id, subscription_id, snapshot)
SELECT DISTINCT ON (tenant) tenant, platform, customer_id, subscription_id, snapshot
FROM subscription_state
WHERE platform IS NOT NULL
ORDER BY tenant,
         (status NOT IN ('canceled', 'incomplete_expired')) DESC,
         (CASE WHEN status NOT IN ('canceled', 'incomplete_expired')
               THEN snapshot->>'created' ELSE snapshot->>'cancelled_at' END)::bigint DESC NULLS LAST,
         subscription_id DESC;

-- Customers whose Stripe read failed (Stripe unreachable): read again when due.
CREATE TABLE billing_resync (
    customer_id TEXT PRIMARY KEY,
    due_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    attempts    INTEGER     NOT NULL DEFAULT 0,
    last_error  TEXT
);

CREATE INDEX billing_resync_due ON billing_resync (due_at);
