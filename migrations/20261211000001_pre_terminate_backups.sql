-- Pre-terminate backups (issue 33): the EBS snapshots of a dedicated instance's volumes, taken
-- before the controller terminates it, are recorded like every other backup.
ALTER TABLE backup_records DROP CONSTRAINT backup_records_reason_check;
ALTER TABLE backup_records ADD CONSTRAINT backup_records_reason_check
    CHECK (reason IN ('manual', 'scheduled', 'pre-delete', 'pre-terminate'));
