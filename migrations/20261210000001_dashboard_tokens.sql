-- Dashboard tokens (issue 35): a customer dashboard's backend checks out and reads its own
-- customers' tenants without the admin token.

-- A third token scope, next to 'tenant'. Like the admin's, a dashboard token names no tenant.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_scope_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_scope_check
    CHECK (scope IN ('tenant', 'admin', 'dashboard'));

-- The Stripe customer each completed Checkout Session made, with the dashboard user
-- (client_reference_id) it was made for and the dashboard token whose checkout it was (NULL:
-- the admin's, or a session stackplane did not create). Written by the billing worker from
-- checkout.session.completed. It is what a dashboard's reads are checked against ("the
-- customers it checked out"), and the lookup (dashboard, client_reference_id) -> customer that
-- a checkout reusing its user's customer needs.
CREATE TABLE checkout_customers (
    customer_id         TEXT PRIMARY KEY,
    client_reference_id TEXT,
    dashboard_id        UUID REFERENCES api_tokens (id) ON DELETE SET NULL,
    checkout_session_id TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX checkout_customers_by_user ON checkout_customers (dashboard_id, client_reference_id);
