-- A claim's own id, made by the claim (gen_random_uuid()), which fences every write of the claim's run
-- (heartbeat, log lines, completion, release) with worker_id instead of `claims`. The counter could repeat: a
-- start or stop build's claim commits without waiting for its WAL flush, a Postgres crash that loses it rolls
-- `claims` back with it, and the daemon that made it, alive and reconnected, could claim the job again with
-- the same worker_id and `claims`, so that its lost run's late log lines or completion passed the new claim's
-- fence. No two claims share an id, lost or not. `claims` still counts the job's claims.
ALTER TABLE provisioner_jobs ADD COLUMN claim_id uuid;
