-- The dedicated instance's state beside the phase: a row is written when either changes, so the
-- hours an instance ran (what EC2 bills) come from the same history as uptime. NULL: the tenant
-- has no instance (a shared tier), or the row predates this column.
ALTER TABLE tenant_status_history ADD COLUMN instance_state TEXT;
