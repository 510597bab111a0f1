-- ListSnapshots: an audience's snapshots, newest first.
CREATE INDEX snapshots_by_audience ON snapshots (tenant_id, audience_id, create_time DESC, snapshot_id DESC);
