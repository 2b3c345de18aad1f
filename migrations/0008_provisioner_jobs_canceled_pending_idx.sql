-- The provisioner's sweep of jobs canceled before any daemon claimed them (settleCanceledPending in
-- src/provisioner/provisioner.ts, on every poll, 5 s by default) read every provisioner job: about 100 ms on
-- 1M jobs, growing with the history. This partial index holds only the jobs it looks for (almost always
-- none). Its predicate is the query's (the query adds only the job type), so the planner can use it; if
-- either changes alone, test/provisioner/sweep-plan.test.ts fails.
--
-- The other hot and periodic queries (claim, heartbeat, stale reaper, log writes, the worker's reads, queue
-- position and estimate, log reads, the chat list and its search) already had their indexes: bench/plans.ts
-- EXPLAINs every one on 1M jobs, 100k builds, 1M log lines and 10k chats and fails on a Seq Scan of a big
-- table. The chat list's Seq Scans were the query's, fixed there (src/dashboard/chats.ts). A plain CREATE
-- INDEX: migrate() runs each migration in a transaction, where CONCURRENTLY is refused.
CREATE INDEX provisioner_jobs_canceled_pending_idx ON provisioner_jobs (created_at)
  WHERE started_at IS NULL AND canceled_at IS NOT NULL AND completed_at IS NULL;
