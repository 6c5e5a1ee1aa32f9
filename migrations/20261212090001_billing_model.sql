-- Billing follows Stripe's whole model (issue 34).

-- Events with no price a Platform lists and no known subscription: acknowledged and kept
-- (replayable by hand), never retried when Platforms change.
ALTER TABLE stripe_events DROP CONSTRAINT IF EXISTS stripe_events_state_check;
ALTER TABLE stripe_events ADD CONSTRAINT stripe_events_state_check
    CHECK (state IN ('pending', 'applied', 'skipped', 'failed', 'ignored'));

-- When the api first saw each Platform list each price: a price two Platforms list stays with
-- the one that listed it first (Platforms first seen together: creation time, then name), so
-- adding a price to an older Platform never takes customers from a younger one. A listing the
-- Platforms no longer have is forgotten.
CREATE TABLE platform_prices (
    price_id      TEXT        NOT NULL,
    platform      TEXT        NOT NULL,
    first_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (price_id, platform)
);
