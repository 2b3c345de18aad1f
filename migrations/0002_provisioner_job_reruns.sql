-- A running job whose daemon stopped heart-beating is handed back to pending for another daemon, up to
-- PROVISIONER_MAX_RERUNS times, before it fails as stale: reruns counts those hand-backs.
ALTER TABLE provisioner_jobs ADD COLUMN reruns integer NOT NULL DEFAULT 0 CHECK (reruns >= 0);

-- Incremented by every claim. A daemon's heartbeats, log lines and completion name the claim they belong
-- to (worker_id and claims), so a run that was handed back — its daemon was only paused — can no longer
-- write to the job once another claim exists.
ALTER TABLE provisioner_jobs ADD COLUMN claims integer NOT NULL DEFAULT 0 CHECK (claims >= 0);
