// What a test does to play the provisioner and the workspace agent: move a provisioner job through its
// states (the derived `job_status` follows), connect and disconnect agents and move their lifecycle. Every
// change raises the notifications workers wait on. Inserting rows is src/cli/fixtures.ts (the seed uses it).
import type { Queryable } from '../../src/shared/postgres.js';
import type { AgentLifecycleState, QuotaUsage } from '../../src/worker/ports.js';

/** The provisioner claimed the job: `running`. */
export async function startJob(db: Queryable, jobId: string): Promise<void> {
  await db.query(
    `UPDATE provisioner_jobs SET started_at = COALESCE(started_at, now()), updated_at = now() WHERE id = $1`,
    [jobId],
  );
}

/** The job finished: `succeeded`, or `failed` with an error (and the error code and quota a provisioner gave). */
export async function completeJob(
  db: Queryable,
  jobId: string,
  options: { error?: string; errorCode?: string; quota?: QuotaUsage } = {},
): Promise<void> {
  await db.query(
    `UPDATE provisioner_jobs
        SET started_at = COALESCE(started_at, now()), completed_at = now(), error = $2, error_code = $3,
            quota_credits_consumed = $4, quota_budget = $5, updated_at = now()
      WHERE id = $1`,
    [
      jobId,
      options.error ?? null,
      options.errorCode ?? null,
      options.quota?.creditsConsumed ?? null,
      options.quota?.budget ?? null,
    ],
  );
}

/**
 * Cancels the job: `canceled` (default), or `canceling` with `{ completed: false }` (cancellation requested,
 * the provisioner has not stopped yet).
 */
export async function cancelJob(
  db: Queryable,
  jobId: string,
  options: { completed?: boolean } = {},
): Promise<void> {
  await db.query(
    `UPDATE provisioner_jobs
        SET canceled_at = COALESCE(canceled_at, now()),
            completed_at = CASE WHEN $2::boolean THEN now() ELSE completed_at END,
            updated_at = now()
      WHERE id = $1`,
    [jobId, options.completed ?? true],
  );
}

/** The agent (re)connects: connected until it disconnects. */
export async function connectAgent(db: Queryable, agentId: string): Promise<void> {
  await db.query(
    `UPDATE workspace_agents
        SET first_connected_at = COALESCE(first_connected_at, now()), last_connected_at = now(),
            disconnected_at = NULL, updated_at = now()
      WHERE id = $1`,
    [agentId],
  );
}

export async function disconnectAgent(db: Queryable, agentId: string): Promise<void> {
  await db.query(`UPDATE workspace_agents SET disconnected_at = now(), updated_at = now() WHERE id = $1`, [
    agentId,
  ]);
}

export async function setAgentLifecycle(
  db: Queryable,
  agentId: string,
  state: AgentLifecycleState,
): Promise<void> {
  await db.query(
    `UPDATE workspace_agents
        SET lifecycle_state = $2::workspace_agent_lifecycle_state,
            started_at = CASE WHEN $2::text <> 'created' THEN COALESCE(started_at, now()) END,
            ready_at = CASE WHEN $2::text = 'ready' THEN COALESCE(ready_at, now()) ELSE ready_at END,
            updated_at = now()
      WHERE id = $1`,
    [agentId, state],
  );
}
