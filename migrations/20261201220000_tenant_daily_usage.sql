-- What tenant tokens asked for, per tenant, kind and UTC day: the cost limits of
-- --tenant-backups-per-day and --tenant-restores-per-day. One row per (tenant, kind, day),
-- incremented atomically only while under the limit.
CREATE TABLE tenant_daily_usage (
    tenant TEXT    NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('backup', 'restore')),
    day    DATE    NOT NULL,
    used   INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant, kind, day)
);
