-- Connect: the connected account a queued customer re-read must be made on (its `Stripe-Account`
-- header), NULL for the platform account's own customers.
ALTER TABLE billing_resync ADD COLUMN account TEXT;
