// Canceling provisioner jobs with Coder's semantics, in one statement: shared by the worker's store (a job
// that is canceled cancels the build it created) and the provisioner daemon (settling jobs canceled while
// pending, e.g. by hand).

/**
 * SQL of one statement that marks the provisioner jobs `selection` names (a SELECT of ids, or one id
 * parameter) canceled, keeping the time of an earlier request, and completes at once, with a log line, those
 * no daemon has started; a running one is left to its daemon (it reads `canceling` and aborts), a completed
 * one is not touched. Rows: `id`, `completed` (true = completed as canceled by this statement) of each job
 * it marked.
 */
export function cancelProvisionerJobsSql(selection: string): string {
  return `WITH canceled AS (
      UPDATE provisioner_jobs j
      SET canceled_at = coalesce(j.canceled_at, now()),
          completed_at = CASE WHEN j.started_at IS NULL THEN now() END,
          updated_at = now()
      WHERE j.id IN (${selection}) AND j.completed_at IS NULL
      RETURNING j.id, j.started_at IS NULL AS completed
    ), logged AS (
      INSERT INTO provisioner_job_logs (job_id, source, level, stage, output)
      SELECT id, 'provisioner_daemon', 'warn', 'Cleaning Up', 'Job canceled before it started'
      FROM canceled WHERE completed
    )
    SELECT id, completed FROM canceled`;
}

/** How long the command executor waits between SIGTERM and SIGKILL of a command it kills (killGraceMs). */
export const DEFAULT_KILL_GRACE_MS = 5_000;
