-- Live build logs: every statement that appends log lines notifies `provisioner_job_logs` once per job with
-- the newest line's id, so a follower (src/shared/build-logs.ts) reads right after the commit instead of
-- polling. A statement-level trigger, because the daemon writes lines in batches (one NOTIFY per batch, not
-- per line) and several statements insert them (the log writer, the stale-job and canceled-job sweeps).
-- `last_id` is text: ids are bigint, beyond what a JSON number holds exactly.
CREATE FUNCTION notify_provisioner_job_logs() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('provisioner_job_logs',
    json_build_object('job_id', job_id, 'last_id', max(id)::text)::text)
  FROM new_rows GROUP BY job_id;
  RETURN NULL;
END;
$$;

CREATE TRIGGER provisioner_job_logs_notify_insert
  AFTER INSERT ON provisioner_job_logs
  REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION notify_provisioner_job_logs();
