-- The dashboard's instance list, fast on a large store: one status or one orchestration name,
-- newest (or oldest) first, resuming after the last row of the previous page. The status index
-- also carries parent_instance_id, so counting per status with sub-orchestrations left out
-- reads the index alone.
CREATE INDEX instances_by_status ON instances (status, created_at, instance_id, parent_instance_id);
CREATE INDEX instances_by_name ON instances (name, created_at, instance_id);
