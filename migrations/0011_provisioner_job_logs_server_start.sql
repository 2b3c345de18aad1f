-- Log line ids stay above every id a reader has seen, across a Postgres crash. A log batch commits without
-- waiting for its WAL flush (src/provisioner/job-log-writer.ts), and so does the sequence advance its
-- nextval WAL-logs (one record per 32 ids): a crash that loses the last batches, which followers may have
-- read already, can take the sequence back with them, and the next lines then get ids a follower has seen.
-- Resuming after its cursor (Last-Event-ID, a build_log event's last_log_id), it would skip those lines,
-- though they are stored (bench/log-crash.ts reproduces it). So the first statement that inserts lines after
-- each start of the server moves the sequence on by 10^9 ids, far more than a crash can lose (what the WAL
-- writer has not flushed, every 200 ms: at 10^9 lines that is over 50 GB of WAL), and commits flushed: a
-- jump the next crash lost would be made again from the same place. 10^9 per start leaves room for 9·10^9
-- starts. A failover promotes a server with another start time, so it jumps too.
CREATE TABLE provisioner_job_logs_server_start (
  only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
  -- pg_postmaster_start_time() of the server the last jump was made on.
  started_at timestamptz NOT NULL
);
INSERT INTO provisioner_job_logs_server_start (started_at) VALUES (pg_postmaster_start_time());

CREATE FUNCTION provisioner_job_logs_after_server_start() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  -- Once per start this matches the row; otherwise it matches none and locks none. A statement that comes
  -- while the first one's jump is not committed waits on the row lock, then finds the row updated and goes
  -- on: no line takes an id before the jump is committed.
  UPDATE provisioner_job_logs_server_start SET started_at = pg_postmaster_start_time()
  WHERE started_at IS DISTINCT FROM pg_postmaster_start_time();
  IF FOUND THEN
    PERFORM setval('provisioner_job_logs_id_seq', nextval('provisioner_job_logs_id_seq') + 1000000000);
    -- Wins over the log writer's `off`, which its statement sets before the insert runs.
    PERFORM set_config('synchronous_commit', 'on', true);
  END IF;
  RETURN NULL;
END;
$$;

CREATE TRIGGER provisioner_job_logs_server_start_insert
  BEFORE INSERT ON provisioner_job_logs
  FOR EACH STATEMENT EXECUTE FUNCTION provisioner_job_logs_after_server_start();
