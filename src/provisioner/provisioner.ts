// A provisioner daemon: claims pending workspace-build jobs from Postgres, runs them with an executor and
// settles them. Any number of daemons may share one database: a job is claimed with
// FOR UPDATE SKIP LOCKED (exactly one daemon gets it, nobody blocks), and every write of a run is fenced
// by its claim (worker_id plus the claim's own id, provisioner_jobs.claim_id). A daemon that dies mid-job
// is detected by its missing heartbeat: whichever daemon notices first hands a start or stop build back to
// pending for another run (builds are safe to repeat), at most maxReruns times, and only then fails it as
// stale. A daemon that was only paused finds its claim gone when it wakes: its heartbeat, logs and
// completion are refused, so the re-run's outcome stands.
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { topics, type QuotaUsage } from '../worker/ports.js';
import type { Logger } from '../shared/logger.js';
import { PENDING_JOB_TOPIC, type PgNotificationHub } from '../shared/notifications.js';
import { prepared, runPrepared, type Pool } from '../shared/postgres.js';
import { cancelProvisionerJobsSql } from '../shared/provisioner-cancel.js';
import { JobCanceledError, JobLostError, ProvisionerShutdownError } from './abort-reasons.js';
import { recordBuildOutcome, traceBuild } from './build-span.js';
import {
  BuildFailure,
  type BuildJob,
  type CommittedAgent,
  type Executor,
  type ExecutorContext,
  type ExecutorResult,
} from './executor.js';
import { JobLogWriter, type JobState, type LogColumns } from './job-log-writer.js';

export interface ProvisionerOptions {
  pool: Pool;
  /**
   * Wakes the daemon when a job becomes pending and tells it about cancellations; the caller starts and
   * stops it.
   */
  hub: Pick<PgNotificationHub, 'on'>;
  executor: Executor;
  /** Written to provisioner_jobs.worker_id of every job this daemon claims. Default a random uuid. */
  id?: string;
  /** Jobs run at once. Default 4. */
  concurrency?: number;
  /**
   * Safety poll: claims, reaps stale jobs and settles jobs canceled while pending even without a
   * notification (notifications are lost while the LISTEN connection is down). Default 5000.
   */
  pollIntervalMs?: number;
  /** How often the updated_at of this daemon's running jobs is refreshed. Default DEFAULT_HEARTBEAT_MS (2000). */
  heartbeatMs?: number;
  /**
   * A running job whose updated_at is older than this is taken from its daemon (it crashed or hangs) by
   * any daemon: handed back to pending, or failed with STALE_JOB_ERROR once it was re-run maxReruns
   * times. At least minStaleAfterMs(heartbeatMs). Default DEFAULT_STALE_AFTER_MS (10000).
   */
  staleAfterMs?: number;
  /**
   * How often a stale start or stop build is handed back for another run before it fails. Default
   * DEFAULT_MAX_RERUNS (2). Delete builds and jobs with a cancellation pending are never re-run.
   */
  maxReruns?: number;
  log?: Logger;
}

export interface StopOptions {
  /** How long running jobs may keep going before they are aborted and failed. Default 30000. */
  graceMs?: number;
}

/** The error written to a job whose daemon stopped heart-beating (after its re-runs, if it had any). */
export const STALE_JOB_ERROR = 'provisioner stopped responding';

/** How often a daemon refreshes the updated_at of its running jobs unless told otherwise. */
export const DEFAULT_HEARTBEAT_MS = 2_000;

/**
 * Five missed heartbeats: a dead daemon's build is picked up again within about 10-15 s (this plus up to
 * one poll interval), while a live daemon stalled for a few seconds (GC, a slow query) keeps its jobs.
 */
export const DEFAULT_STALE_AFTER_MS = 10_000;

export const DEFAULT_MAX_RERUNS = 2;

/** The shortest staleAfterMs for a heartbeat: two missed heartbeats must not declare a live daemon dead. */
export function minStaleAfterMs(heartbeatMs = DEFAULT_HEARTBEAT_MS): number {
  return 3 * heartbeatMs;
}

/** How a job fails: the error, and what a BuildFailure adds to it. */
interface Failure {
  message: string;
  errorCode?: string;
  quota?: QuotaUsage;
}

type Outcome =
  | { kind: 'succeeded'; result: ExecutorResult }
  | ({ kind: 'failed' } & Failure)
  | { kind: 'aborted'; reason: unknown };

/**
 * One claim of a job: the provisioner_jobs.claim_id it set fences every write of the run. Unique per claim:
 * a daemon that claims a job again after Postgres lost its claim (and rolled back `claims`) gets a new one.
 */
interface Claim {
  job: BuildJob;
  claimId: string;
  /** How often the job was handed back before this claim. */
  reruns: number;
}

interface RunningJob {
  claim: Claim;
  controller: AbortController;
  done: Promise<void>;
}

interface ClaimRow {
  job_id: string;
  claim_id: string;
  reruns: number;
  build_id: string | null;
  workspace_id: string;
  workspace_name: string;
  owner_id: string;
  template_version_id: string;
  build_number: number;
  transition: BuildJob['transition'];
  parameters: Record<string, string>;
  /** The span context of the job attempt that created the build (provisioner_jobs.trace_context). */
  trace_context: unknown;
}

const MAX_ERROR_LENGTH = 4000;

/** A completion without log lines of its own (a job failed before it ran). */
const NO_LINES: LogColumns = { sources: [], levels: [], stages: [], outputs: [] };

// The daemon's statements, each run by name (prepared, src/shared/postgres.ts). Those of every claim,
// completion, heartbeat and poll are exported so bench/plans.ts can EXPLAIN exactly these (a plan that
// scans a table would grow with the job history).

/**
 * Claims the oldest pending build job: $1 this daemon's id, $2 the ids of its own runs still winding down.
 * The claim of a start or stop build commits without waiting for its WAL flush (synchronous_commit off for
 * its own transaction): it notifies `provisioner_job_changed` (the job is `running`), and a notifying
 * transaction holds Postgres's notify lock until its commit is flushed, so every notifying commit of the
 * server waits for the one before it. A claim a Postgres crash loses leaves the job pending, as though never
 * claimed: the run finds it lost at its next write or heartbeat and drops its outcome, and the job is built
 * again, as a stale start or stop build is (they are safe to repeat). A delete build is never re-run: its
 * claim is flushed. The crash rolls `claims` back too, so each claim sets an id of its own (claim_id) that
 * its run's writes are fenced by: when this daemon claims the job again, its lost run's late writes (a log
 * batch still on its way) do not pass the new claim's fence.
 */
export const CLAIM = prepared(
  'provisioner.claim',
  `WITH claimed AS (
     UPDATE provisioner_jobs SET started_at = now(), updated_at = now(), worker_id = $1, claims = claims + 1,
            claim_id = gen_random_uuid()
     WHERE id = (
       SELECT id FROM provisioner_jobs
       WHERE started_at IS NULL AND canceled_at IS NULL AND completed_at IS NULL
         AND type = 'workspace_build'
         -- A run of ours that was handed back while we were paused may still be winding down here.
         AND id <> ALL($2::uuid[])
       ORDER BY created_at
       LIMIT 1
       FOR UPDATE SKIP LOCKED)
     RETURNING id, claim_id, reruns, trace_context
   )
   SELECT c.id AS job_id, c.claim_id, c.reruns, c.trace_context, b.id AS build_id, b.workspace_id,
          w.name AS workspace_name, w.owner_id,
          b.template_version_id, b.build_number, b.transition,
          coalesce((SELECT jsonb_object_agg(p.name, p.value) FROM workspace_build_parameters p
                    WHERE p.workspace_build_id = b.id), '{}'::jsonb) AS parameters,
          set_config('synchronous_commit',
                     CASE WHEN b.transition IN ('start', 'stop') THEN 'off'
                          ELSE current_setting('synchronous_commit') END,
                     true) AS synchronous_commit
   FROM claimed c
   LEFT JOIN workspace_builds b ON b.job_id = c.id
   LEFT JOIN workspaces w ON w.id = b.workspace_id`,
);

const RELEASE = prepared(
  'provisioner.release',
  `UPDATE provisioner_jobs SET started_at = NULL, worker_id = NULL, updated_at = now()
   WHERE id = $1 AND worker_id = $2 AND claim_id = $3 AND completed_at IS NULL`,
);

/**
 * Completes a job under its claim, in one statement and so one transaction: $1 the job, $2 this daemon's id,
 * $3 the claim; $4-$7 the error, its code and quota (all NULL: succeeded, or canceled when canceled_at is
 * set); $8 a succeeded start build's resource type (NULL: no resource) and $9 its agents' names in display
 * order; $10-$13 the job's last log lines (JobLogWriter.close), stored with its end. No row when the job is no
 * longer this claim's: then nothing is written. A job canceled meanwhile reads canceled (failed, if it failed:
 * the error wins) and gets no resource; `agents` are the committed ones, in display order.
 */
export const COMPLETE = prepared(
  'provisioner.complete',
  `WITH done AS (
     UPDATE provisioner_jobs SET completed_at = now(), updated_at = now(), error = $4, error_code = $5,
            quota_credits_consumed = $6, quota_budget = $7
     WHERE id = $1 AND worker_id = $2 AND claim_id = $3 AND completed_at IS NULL
     RETURNING id, canceled_at IS NOT NULL AS canceled
   ), logged AS (
     INSERT INTO provisioner_job_logs (job_id, source, level, stage, output)
     SELECT d.id, t.source::log_source, t.level::log_level, t.stage, t.output
     FROM done d, unnest($10::text[], $11::text[], $12::text[], $13::text[]) WITH ORDINALITY
       AS t(source, level, stage, output, n)
     ORDER BY t.n
   ), resource AS (
     INSERT INTO workspace_resources (job_id, transition, type, name)
     SELECT id, 'start', $8, 'dev' FROM done WHERE $8::text IS NOT NULL AND NOT canceled
     RETURNING id
   ), agents AS (
     INSERT INTO workspace_agents (resource_id, name, display_order)
     SELECT r.id, t.name, t.n - 1 FROM resource r, unnest($9::text[]) WITH ORDINALITY AS t(name, n)
     RETURNING id, name, display_order
   )
   SELECT d.canceled,
          coalesce((SELECT json_agg(json_build_object('id', a.id, 'name', a.name) ORDER BY a.display_order)
                    FROM agents a), '[]') AS agents
   FROM done d`,
);

const CHECK_JOB = prepared(
  'provisioner.check_job',
  `SELECT canceled_at IS NOT NULL AS canceled,
          (completed_at IS NULL AND worker_id IS NOT DISTINCT FROM $2::uuid AND claim_id = $3) AS ours
   FROM provisioner_jobs WHERE id = $1`,
);

/** Refreshes this daemon's running jobs: $1 job ids, $2 this daemon's id, $3 each job's claim id. */
export const HEARTBEAT = prepared(
  'provisioner.heartbeat',
  `UPDATE provisioner_jobs j SET updated_at = now()
   FROM unnest($1::uuid[], $3::uuid[]) AS mine(id, claim_id)
   WHERE j.id = mine.id AND j.claim_id = mine.claim_id AND j.worker_id = $2 AND j.completed_at IS NULL
   RETURNING j.id, j.canceled_at IS NOT NULL AS canceled`,
);

/**
 * Takes running jobs of daemons that stopped heart-beating: $1 stale after (ms), $2 the stale error, $3 this
 * daemon's id, $4 max re-runs, $5 the ids of this daemon's own runs.
 */
export const REAP_STALE = prepared(
  'provisioner.reap_stale',
  `WITH stale AS (
     SELECT j.id, j.worker_id, j.canceled_at IS NOT NULL AS canceled,
            (j.canceled_at IS NULL AND j.reruns < $4 AND b.transition IN ('start', 'stop')) IS TRUE AS rerun
     FROM provisioner_jobs j
     LEFT JOIN workspace_builds b ON b.job_id = j.id
     WHERE j.started_at IS NOT NULL AND j.completed_at IS NULL AND j.type = 'workspace_build'
       AND j.updated_at < now() - $1::float8 * interval '1 millisecond'
       -- Our own runs are alive (we are): a late heartbeat of ours must not re-run our own build.
       AND j.id <> ALL($5::uuid[])
     FOR UPDATE OF j SKIP LOCKED
   ), settled AS (
     UPDATE provisioner_jobs j
     SET updated_at = now(),
         started_at = CASE WHEN s.rerun THEN NULL ELSE j.started_at END,
         worker_id = CASE WHEN s.rerun THEN NULL ELSE j.worker_id END,
         reruns = j.reruns + CASE WHEN s.rerun THEN 1 ELSE 0 END,
         completed_at = CASE WHEN s.rerun THEN NULL ELSE now() END,
         error = CASE WHEN s.rerun OR s.canceled THEN NULL ELSE $2 END
     FROM stale s
     WHERE j.id = s.id
     RETURNING j.id, s.worker_id AS dead_worker_id, s.rerun, j.reruns, s.canceled
   ), logged AS (
     INSERT INTO provisioner_job_logs (job_id, source, level, stage, output)
     SELECT id, 'provisioner_daemon', CASE WHEN rerun THEN 'warn' ELSE 'error' END::log_level, 'Cleaning Up',
            format('Provisioner %s stopped responding; %s by provisioner %s',
                   coalesce(dead_worker_id::text, '(unknown)'),
                   CASE WHEN rerun THEN format('job handed back for re-run %s of %s', reruns, $4::int)
                        WHEN canceled THEN 'job canceled'
                        WHEN reruns > 0 THEN format('job failed after %s re-run(s)', reruns)
                        ELSE 'job failed' END,
                   $3::text)
     FROM settled
   )
   SELECT id, dead_worker_id, rerun, reruns, canceled FROM settled`,
);

/** Completes the jobs canceled before any daemon claimed them (provisioner_jobs_canceled_pending_idx). */
export const SETTLE_CANCELED_PENDING = prepared(
  'provisioner.settle_canceled_pending',
  cancelProvisionerJobsSql(
    `SELECT id FROM provisioner_jobs
     WHERE started_at IS NULL AND canceled_at IS NOT NULL AND completed_at IS NULL
       AND type = 'workspace_build'
     FOR UPDATE SKIP LOCKED`,
  ),
);

export class Provisioner {
  readonly id: string;
  private readonly pool: Pool;
  private readonly executor: Executor;
  private readonly concurrency: number;
  private readonly pollIntervalMs: number;
  private readonly heartbeatMs: number;
  private readonly staleAfterMs: number;
  private readonly maxReruns: number;
  private readonly log: Logger;

  private state: 'new' | 'running' | 'stopping' = 'new';
  private readonly running = new Map<string, RunningJob>();
  private pollTimer: NodeJS.Timeout | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private offWake: (() => void) | undefined;
  private pumping: Promise<void> | undefined;
  private pumpAgain = false;
  private ticking: Promise<void> | undefined;
  private heartbeating: Promise<void> | undefined;
  private stopped: Promise<void> | undefined;

  constructor(private readonly options: ProvisionerOptions) {
    this.id = options.id ?? randomUUID();
    this.pool = options.pool;
    this.executor = options.executor;
    this.concurrency = options.concurrency ?? 4;
    this.pollIntervalMs = options.pollIntervalMs ?? 5_000;
    this.heartbeatMs = options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS;
    this.staleAfterMs = options.staleAfterMs ?? DEFAULT_STALE_AFTER_MS;
    this.maxReruns = options.maxReruns ?? DEFAULT_MAX_RERUNS;
    this.log = (options.log ?? pino({ level: 'silent' })).child({ provisionerId: this.id });
    if (!Number.isInteger(this.concurrency) || this.concurrency < 1) {
      throw new RangeError(`concurrency must be a whole number of at least 1, got ${this.concurrency}`);
    }
    if (!Number.isInteger(this.maxReruns) || this.maxReruns < 0) {
      throw new RangeError(`maxReruns must be a whole number of at least 0, got ${this.maxReruns}`);
    }
    const minStale = minStaleAfterMs(this.heartbeatMs);
    if (this.staleAfterMs < minStale) {
      throw new RangeError(
        `staleAfterMs (${this.staleAfterMs}) must be at least three heartbeats (${minStale})`,
      );
    }
  }

  /** Jobs this daemon is running now. */
  get runningJobs(): number {
    return this.running.size;
  }

  /** Starts claiming jobs. Database errors do not stop the daemon; they are logged and retried. */
  start(): void {
    if (this.state !== 'new') throw new Error('a Provisioner can only be started once');
    this.state = 'running';
    // Only a job becoming pending (inserted, or handed back) can give work; the poll covers lost ones.
    this.offWake = this.options.hub.on(PENDING_JOB_TOPIC, () => this.wake());
    this.pollTimer = setInterval(() => this.tick(), this.pollIntervalMs);
    this.heartbeatTimer = setInterval(() => this.heartbeat(), this.heartbeatMs);
    this.log.info({ concurrency: this.concurrency }, 'provisioner started');
    this.tick();
  }

  /**
   * Stops claiming, lets running jobs finish for `graceMs`, then aborts the rest and fails them with
   * 'provisioner shut down' (when the database is unreachable they are left to the stale reaper).
   * Resolves when nothing runs any more and the executor's background work has ended.
   */
  stop(options: StopOptions = {}): Promise<void> {
    this.stopped ??= this.shutdown(options.graceMs ?? 30_000);
    return this.stopped;
  }

  private async shutdown(graceMs: number): Promise<void> {
    const wasRunning = this.state === 'running';
    this.state = 'stopping';
    this.offWake?.();
    clearInterval(this.pollTimer);
    // A claim in flight completes (and hands its job back) before we count what is running.
    await Promise.allSettled([this.pumping, this.ticking]);
    if (this.running.size > 0) {
      this.log.info({ jobs: this.running.size, graceMs }, 'waiting for running jobs before shutting down');
      const timer = setTimeout(() => {
        for (const { controller } of this.running.values()) controller.abort(new ProvisionerShutdownError());
      }, graceMs);
      // Jobs settle promptly once aborted: the daemon does not wait for the executor to wind down.
      while (this.running.size > 0) {
        await Promise.allSettled([...this.running.values()].map((r) => r.done));
      }
      clearTimeout(timer);
    }
    // Heartbeats continue during the grace period; only now is there nothing left to keep alive.
    clearInterval(this.heartbeatTimer);
    await this.heartbeating;
    await this.executor.stop?.().catch((error: unknown) => {
      this.log.warn({ err: error }, 'executor did not stop cleanly');
    });
    if (wasRunning) this.log.info('provisioner stopped');
  }

  // -------------------------------------------------------------------------------------------------
  // Claiming

  /** Claims jobs until the slots are full or none is pending. Calls while a pump runs coalesce into one more. */
  private wake(): void {
    if (this.state !== 'running') return;
    if (this.pumping) {
      this.pumpAgain = true;
      return;
    }
    this.pumping = this.pump()
      .catch((error: unknown) => this.log.warn({ err: error }, 'claiming provisioner jobs failed'))
      .finally(() => {
        this.pumping = undefined;
        if (this.pumpAgain) {
          this.pumpAgain = false;
          this.wake();
        }
      });
  }

  private async pump(): Promise<void> {
    while (this.state === 'running' && this.running.size < this.concurrency) {
      const row = await this.claim();
      if (!row) return;
      if (row.build_id === null) {
        // A job without a build cannot be built; failing it beats leaving it for the reaper.
        await this.settle(row.job_id, row.claim_id, NO_LINES, {
          message: 'workspace build not found for provisioner job',
        });
        continue;
      }
      const claim: Claim = { job: toBuildJob(row), claimId: row.claim_id, reruns: row.reruns };
      if (this.state !== 'running') {
        await this.release(claim);
        return;
      }
      this.launch(claim, row.trace_context);
    }
  }

  private async claim(): Promise<ClaimRow | undefined> {
    const { rows } = await runPrepared<ClaimRow>(this.pool, CLAIM, [this.id, [...this.running.keys()]]);
    return rows[0];
  }

  /** Hands a job claimed during shutdown back, so another daemon starts it at once. */
  private async release({ job, claimId }: Claim): Promise<void> {
    await runPrepared(this.pool, RELEASE, [job.jobId, this.id, claimId]);
  }

  // -------------------------------------------------------------------------------------------------
  // Running one job

  private launch(claim: Claim, traceContext: unknown): void {
    const { job } = claim;
    const controller = new AbortController();
    const entry = { claim, controller } as RunningJob;
    this.running.set(job.jobId, entry);
    entry.done = traceBuild(this.id, job, traceContext, () => this.execute(claim, controller))
      .catch((error: unknown) => this.log.error({ err: error, jobId: job.jobId }, 'provisioner job crashed'))
      .finally(() => {
        this.running.delete(job.jobId);
        this.wake();
      });
  }

  private async execute(claim: Claim, controller: AbortController): Promise<void> {
    const { job, claimId, reruns } = claim;
    const log = this.log.child({ jobId: job.jobId, buildId: job.buildId, transition: job.transition });
    const logs = new JobLogWriter({
      pool: this.pool,
      jobId: job.jobId,
      claim: { workerId: this.id, claimId },
      // Every batch of lines reads the job under this claim, so it is a check of the job too.
      onJobState: (state) => abortFor(controller, state),
      log,
    });
    // Our own claim made the job 'running', and its notification reaches us here, usually after this
    // subscription: checking on it would be a query per job for nothing. The payload's job_status tells it
    // apart, whichever daemon or pool connection sent it (a notification's processId is one backend of a
    // pool, and another daemon's claim could reuse a pid of ours): only a claim makes a job 'running', and
    // another daemon can claim ours only after it was handed back, whose 'pending' we check on. No payload
    // (after a reconnect) is checked.
    const off = this.options.hub.on(topics.provisionerJob(job.jobId), (payload) => {
      if (payload?.job_status !== 'running') this.checkJob(claim, controller);
    });
    try {
      log.info({ reruns }, 'running provisioner job');
      const rerun = reruns > 0 ? `, re-run ${reruns} of ${this.maxReruns}` : '';
      // Written at once, after the subscription above: its INSERT's check (onJobState) catches a
      // cancellation between the claim and the subscription, whose notification reached nobody.
      void logs.append(
        'provisioner_daemon',
        'info',
        `Provisioner ${this.id} acquired the job: ${job.transition} of workspace ${job.workspaceName} (build #${job.buildNumber}${rerun})`,
        'Setting up',
      );
      const ctx: ExecutorContext = {
        signal: controller.signal,
        log: (level, output, stage) => logs.append('provisioner', level, output, stage),
      };
      const outcome = await this.runExecutor(job, ctx);
      recordBuildOutcome(outcome);
      // Our own completion notifies too; it must not abort anything.
      off();

      if (outcome.kind === 'aborted') {
        const { reason } = outcome;
        if (reason instanceof JobLostError) {
          log.warn(
            'job is no longer this claim’s (handed back or settled by a stale reaper, or the claim lost in a Postgres crash); dropping its outcome',
          );
          return;
        }
        if (reason instanceof JobCanceledError) {
          void logs.append('provisioner_daemon', 'warn', 'Job canceled', 'Cleaning Up');
          await this.settle(job.jobId, claimId, await logs.close(), null);
          log.info('job canceled');
          return;
        }
        const message = reason instanceof Error ? reason.message : 'provisioner job aborted';
        void logs.append('provisioner_daemon', 'error', message, 'Cleaning Up');
        await this.settle(job.jobId, claimId, await logs.close(), { message });
        log.warn({ error: message }, 'job aborted');
        return;
      }
      if (outcome.kind === 'failed') {
        void logs.append('provisioner_daemon', 'error', `Build failed: ${outcome.message}`, 'Cleaning Up');
        await this.settle(job.jobId, claimId, await logs.close(), outcome);
        log.info({ error: outcome.message, errorCode: outcome.errorCode }, 'job failed');
        return;
      }
      void logs.append('provisioner_daemon', 'info', 'Build succeeded', 'Cleaning Up');
      const agents = await this.succeed(claim, await logs.close(), outcome.result);
      if (agents !== undefined) log.info({ agents: agents.length }, 'job succeeded');
      // Also when nothing was committed, so the executor can let go of what run() kept for the job.
      this.afterCommit(job, agents ?? []);
    } finally {
      off();
      // Drops what a run that was not completed here still had queued (another claim's job now).
      void logs.close();
    }
  }

  /**
   * Runs the executor; an abort settles the outcome at once, without waiting for the executor to notice.
   * A run that still resolves after that gets its afterCommit call (with no agents) then.
   */
  private runExecutor(job: BuildJob, ctx: ExecutorContext): Promise<Outcome> {
    const { signal } = ctx;
    return new Promise<Outcome>((resolve) => {
      let aborted = false;
      const onAbort = () => {
        aborted = true;
        resolve({ kind: 'aborted', reason: signal.reason });
      };
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      new Promise<ExecutorResult | void>((res) => res(this.executor.run(job, ctx)))
        .then(
          (result) => {
            if (aborted) this.afterCommit(job, []);
            else resolve({ kind: 'succeeded', result: result ?? {} });
          },
          (error: unknown) => resolve({ kind: 'failed', ...failureOf(error) }),
        )
        .finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  /** Tells the executor a resolved run is over; see Executor.afterCommit. */
  private afterCommit(job: BuildJob, agents: CommittedAgent[]): void {
    try {
      this.executor.afterCommit?.(job, agents);
    } catch (error) {
      this.log.warn({ err: error, jobId: job.jobId }, 'executor afterCommit failed');
    }
  }

  /**
   * Completes a succeeded job and, for a start build, writes its resource and agents in the same
   * statement, so a succeeded start build always has its agents. Returns the agents, or undefined
   * when the job was no longer ours or was canceled meanwhile (then no resource is written).
   */
  private async succeed(
    { job, claimId }: Claim,
    lines: LogColumns,
    result: ExecutorResult,
  ): Promise<CommittedAgent[] | undefined> {
    const start = job.transition === 'start';
    try {
      const row = await this.complete(job.jobId, claimId, lines, null, {
        type: start ? (result.resourceType ?? 'workspace') : null,
        agents: start ? [...new Set(result.agents ?? [])] : [],
      });
      if (!row) {
        this.log.warn({ jobId: job.jobId }, 'job was settled elsewhere before it could complete');
        return undefined;
      }
      // Canceled while the executor finished: the job now reads 'canceled'; a canceled build has no agents.
      if (row.canceled) {
        this.log.info({ jobId: job.jobId }, 'job was canceled as it finished; completed as canceled');
        return undefined;
      }
      return row.agents;
    } catch (error) {
      // Fail the job rather than leave it running; if the database is gone this fails too, and the
      // stale reaper settles the job once it is back. Without the last log lines: one of them may be what
      // made the completion fail, and then the job would stay running until the reaper hands it back.
      this.log.error(
        { err: error, jobId: job.jobId, linesDropped: lines.outputs.length },
        'could not complete provisioner job',
      );
      await this.settle(job.jobId, claimId, NO_LINES, {
        message: `could not record the build's results: ${errorMessage(error)}`,
      });
      return undefined;
    }
  }

  /**
   * Completes a job as failed (with its error, code and quota) or canceled (null), with its last log lines,
   * if it is still this claim's.
   */
  private async settle(
    jobId: string,
    claimId: string,
    lines: LogColumns,
    failure: Failure | null,
  ): Promise<void> {
    try {
      await this.complete(jobId, claimId, lines, failure, { type: null, agents: [] });
    } catch (err) {
      this.log.error({ err, jobId }, 'could not settle provisioner job; the stale reaper will');
    }
  }

  /** Runs COMPLETE; undefined when the job is no longer this claim's. */
  private async complete(
    jobId: string,
    claimId: string,
    lines: LogColumns,
    failure: Failure | null,
    resource: { type: string | null; agents: string[] },
  ): Promise<{ canceled: boolean; agents: CommittedAgent[] } | undefined> {
    const { rows } = await runPrepared<{ canceled: boolean; agents: CommittedAgent[] }>(this.pool, COMPLETE, [
      jobId,
      this.id,
      claimId,
      failure?.message ?? null,
      failure?.errorCode ?? null,
      failure?.quota?.creditsConsumed ?? null,
      failure?.quota?.budget ?? null,
      resource.type,
      resource.agents,
      lines.sources,
      lines.levels,
      lines.stages,
      lines.outputs,
    ]);
    return rows[0];
  }

  /** Aborts the executor when the job was canceled or is no longer this claim's. */
  private checkJob({ job, claimId }: Claim, controller: AbortController): void {
    if (controller.signal.aborted) return;
    const { jobId } = job;
    runPrepared<{ canceled: boolean; ours: boolean }>(this.pool, CHECK_JOB, [jobId, this.id, claimId])
      .then(({ rows }) => {
        const row = rows[0];
        abortFor(controller, !row?.ours ? 'lost' : row.canceled ? 'canceled' : undefined);
      })
      // The heartbeat checks again; a failed check must not abort a healthy job.
      .catch((error: unknown) => this.log.debug({ err: error, jobId }, 'job check failed'));
  }

  // -------------------------------------------------------------------------------------------------
  // Heartbeat, stale reaper, jobs canceled while pending

  /** Keeps this daemon's jobs fresh for the reaper, and notices cancellations a lost notification hid. */
  private heartbeat(): void {
    if (this.heartbeating || this.running.size === 0) return;
    const entries = new Map(this.running);
    const claims = [...entries.values()].map(({ claim }) => claim);
    this.heartbeating = runPrepared<{ id: string; canceled: boolean }>(this.pool, HEARTBEAT, [
      claims.map((c) => c.job.jobId),
      this.id,
      claims.map((c) => c.claimId),
    ])
      .then(({ rows }) => {
        const alive = new Map(rows.map((r) => [r.id, r.canceled]));
        for (const [jobId, { controller }] of entries) {
          if (controller.signal.aborted) continue;
          const canceled = alive.get(jobId);
          abortFor(controller, canceled === undefined ? 'lost' : canceled ? 'canceled' : undefined);
        }
      })
      .catch((error: unknown) => this.log.warn({ err: error }, 'provisioner heartbeat failed'))
      .finally(() => {
        this.heartbeating = undefined;
      });
  }

  private tick(): void {
    if (this.state !== 'running' || this.ticking) return;
    this.ticking = (async () => {
      await this.reapStale().catch((error: unknown) =>
        this.log.warn({ err: error }, 'stale job reaper failed'),
      );
      await this.settleCanceledPending().catch((error: unknown) =>
        this.log.warn({ err: error }, 'settling canceled pending jobs failed'),
      );
    })().finally(() => {
      this.ticking = undefined;
      this.wake();
    });
  }

  /**
   * Takes running jobs from daemons that stopped heart-beating. A start or stop build without a pending
   * cancellation is handed back to pending (reruns + 1) while it has re-runs left; any other is completed:
   * failed with STALE_JOB_ERROR, or canceled when a cancellation was asked for. SKIP LOCKED: daemons
   * reaping at the same moment split the work.
   */
  private async reapStale(): Promise<void> {
    const { rows } = await runPrepared<{
      id: string;
      dead_worker_id: string | null;
      rerun: boolean;
      reruns: number;
      canceled: boolean;
    }>(this.pool, REAP_STALE, [
      this.staleAfterMs,
      STALE_JOB_ERROR,
      this.id,
      this.maxReruns,
      [...this.running.keys()],
    ]);
    for (const row of rows) {
      const fields = { jobId: row.id, deadProvisionerId: row.dead_worker_id, reruns: row.reruns };
      if (row.rerun) {
        this.log.warn(
          { ...fields, maxReruns: this.maxReruns },
          `provisioner stopped responding; handed its job back for re-run ${row.reruns} of ${this.maxReruns}`,
        );
      } else {
        this.log.warn(
          fields,
          row.canceled
            ? 'provisioner stopped responding; its job was being canceled and is completed as canceled'
            : `provisioner stopped responding; failed its job after ${row.reruns} re-run(s)`,
        );
      }
    }
  }

  /** A job canceled before any daemon claimed it completes as canceled without running. */
  private async settleCanceledPending(): Promise<void> {
    const { rows } = await runPrepared<{ id: string }>(this.pool, SETTLE_CANCELED_PENDING, []);
    for (const row of rows) this.log.info({ jobId: row.id }, 'settled a job canceled while pending');
  }
}

function toBuildJob(row: ClaimRow): BuildJob {
  return {
    jobId: row.job_id,
    buildId: row.build_id!,
    workspaceId: row.workspace_id,
    workspaceName: row.workspace_name,
    ownerId: row.owner_id,
    templateVersionId: row.template_version_id,
    buildNumber: row.build_number,
    transition: row.transition,
    parameters: row.parameters,
  };
}

function failureOf(error: unknown): Failure {
  const message = errorMessage(error);
  if (!(error instanceof BuildFailure)) return { message };
  return { message, errorCode: error.errorCode, quota: error.quota };
}

function errorMessage(error: unknown): string {
  const message = (error instanceof Error ? error.message : String(error)).trim();
  // An empty error would make job_status read 'succeeded' (nullif(error, '')).
  if (message === '') return 'build failed';
  return message.length > MAX_ERROR_LENGTH ? `${message.slice(0, MAX_ERROR_LENGTH)}…` : message;
}

/** Stops a run the database says is no longer this claim's, or canceled (once: a later reason is ignored). */
function abortFor(controller: AbortController, state: JobState | undefined): void {
  if (state === undefined || controller.signal.aborted) return;
  controller.abort(state === 'lost' ? new JobLostError() : new JobCanceledError());
}
