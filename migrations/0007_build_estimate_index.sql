-- Build estimates (src/worker/pg-store.ts getBuildEstimate): a template's last 20 succeeded builds are read
-- newest first down this index, so the query stops after a few rows for a template that builds often rather
-- than sorting every finished job. The predicate is the query's, spelled the same way, so the planner uses it.
-- (Queue positions use provisioner_jobs_pending_idx from 0001.)
CREATE INDEX provisioner_jobs_succeeded_idx ON provisioner_jobs (completed_at DESC)
  WHERE completed_at IS NOT NULL AND canceled_at IS NULL AND nullif(error, '') IS NULL;
