// Rows the provisioner tests need, inserted with plain SQL, and small bounded waits.
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { expect, vi } from 'vitest';
import type { Pool } from '../../src/shared/postgres.js';
import { withTransaction } from '../../src/shared/postgres.js';
import type {
  BuildJob,
  CommittedAgent,
  Executor,
  ExecutorContext,
  ExecutorResult,
} from '../../src/provisioner/executor.js';

export const silentLog = pino({ level: 'silent' });

/** The session's synchronous_commit, as a transaction on `client` sees it (a local setting included). */
export async function synchronousCommit(client: Pick<Pool, 'query'>): Promise<string> {
  const { rows } = await client.query<{ synchronous_commit: string }>('SHOW synchronous_commit');
  return rows[0]!.synchronous_commit;
}

export interface Fixture {
  userId: string;
  templateId: string;
  versionId: string;
}

/** A user and a template with an active version. */
export async function createFixture(pool: Pool): Promise<Fixture> {
  const suffix = randomBytes(4).toString('hex');
  return withTransaction(pool, async (c) => {
    const user = await c.query<{ id: string }>(
      `INSERT INTO users (username, email) VALUES ($1, $1 || '@example.com') RETURNING id`,
      [`user-${suffix}`],
    );
    const template = await c.query<{ id: string }>(`INSERT INTO templates (name) VALUES ($1) RETURNING id`, [
      `template-${suffix}`,
    ]);
    const version = await c.query<{ id: string }>(
      `INSERT INTO template_versions (template_id, name) VALUES ($1, 'v1') RETURNING id`,
      [template.rows[0]!.id],
    );
    // active_version_id is a DEFERRABLE foreign key: fine to set inside the same transaction.
    await c.query(`UPDATE templates SET active_version_id = $2 WHERE id = $1`, [
      template.rows[0]!.id,
      version.rows[0]!.id,
    ]);
    return { userId: user.rows[0]!.id, templateId: template.rows[0]!.id, versionId: version.rows[0]!.id };
  });
}

export async function createWorkspace(pool: Pool, fixture: Fixture, name?: string): Promise<string> {
  const { rows } = await pool.query<{ id: string }>(
    `INSERT INTO workspaces (owner_id, template_id, name) VALUES ($1, $2, $3) RETURNING id`,
    [fixture.userId, fixture.templateId, name ?? `ws-${randomBytes(4).toString('hex')}`],
  );
  return rows[0]!.id;
}

export interface InsertBuildOptions {
  transition?: 'start' | 'stop' | 'delete';
  parameters?: Record<string, string>;
  /** Inserts the job already canceled (still pending). */
  canceled?: boolean;
}

export interface InsertedBuild {
  jobId: string;
  buildId: string;
  buildNumber: number;
}

/** A pending provisioner job and its build (next build number) with parameters, as a worker inserts them. */
export async function insertBuild(
  pool: Pool,
  fixture: Fixture,
  workspaceId: string,
  options: InsertBuildOptions = {},
): Promise<InsertedBuild> {
  return withTransaction(pool, async (c) => {
    const job = await c.query<{ id: string }>(
      `INSERT INTO provisioner_jobs (canceled_at) VALUES (CASE WHEN $1 THEN now() END) RETURNING id`,
      [options.canceled ?? false],
    );
    const jobId = job.rows[0]!.id;
    const build = await c.query<{ id: string; build_number: number }>(
      `INSERT INTO workspace_builds (workspace_id, template_version_id, build_number, transition, initiator_id, job_id)
       VALUES ($1, $2,
               (SELECT coalesce(max(build_number), 0) + 1 FROM workspace_builds WHERE workspace_id = $1),
               $3, $4, $5)
       RETURNING id, build_number`,
      [workspaceId, fixture.versionId, options.transition ?? 'start', fixture.userId, jobId],
    );
    const buildId = build.rows[0]!.id;
    for (const [name, value] of Object.entries(options.parameters ?? {})) {
      await c.query(
        `INSERT INTO workspace_build_parameters (workspace_build_id, name, value) VALUES ($1, $2, $3)`,
        [buildId, name, value],
      );
    }
    return { jobId, buildId, buildNumber: build.rows[0]!.build_number };
  });
}

export interface JobRow {
  job_status: string;
  error: string | null;
  error_code: string | null;
  quota_credits_consumed: number | null;
  quota_budget: number | null;
  worker_id: string | null;
  started_at: Date | null;
  completed_at: Date | null;
  canceled_at: Date | null;
}

export async function getJob(pool: Pool, jobId: string): Promise<JobRow> {
  const { rows } = await pool.query<JobRow>(
    `SELECT job_status, error, error_code, quota_credits_consumed, quota_budget, worker_id, started_at,
            completed_at, canceled_at
     FROM provisioner_jobs WHERE id = $1`,
    [jobId],
  );
  return rows[0]!;
}

/** Whether a process of that pid exists (signal 0 checks without sending anything). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** vi.waitFor / expect.poll options of the provisioner tests: up to 10 s, every 20 ms. */
export const POLL = { timeout: 10_000, interval: 20 };

const FINAL = ['succeeded', 'failed', 'canceled'];

/** Waits until the job is completed (succeeded, failed or canceled) and returns its row. */
export function waitForCompletion(pool: Pool, jobId: string, timeoutMs = POLL.timeout): Promise<JobRow> {
  return vi.waitFor(
    async () => {
      const job = await getJob(pool, jobId);
      expect(FINAL, `job ${jobId} to complete`).toContain(job.job_status);
      return job;
    },
    { ...POLL, timeout: timeoutMs },
  );
}

export function waitForStatus(pool: Pool, jobId: string, status: string): Promise<JobRow> {
  return vi.waitFor(async () => {
    const job = await getJob(pool, jobId);
    expect(job.job_status, `job ${jobId}`).toBe(status);
    return job;
  }, POLL);
}

export interface LogRow {
  source: string;
  level: string;
  stage: string;
  output: string;
}

export async function getLogs(pool: Pool, jobId: string): Promise<LogRow[]> {
  const { rows } = await pool.query<LogRow>(
    `SELECT source, level, stage, output FROM provisioner_job_logs WHERE job_id = $1 ORDER BY id`,
    [jobId],
  );
  return rows;
}

export interface AgentRow {
  id: string;
  name: string;
  display_order: number;
  lifecycle_state: string;
  first_connected_at: Date | null;
  last_connected_at: Date | null;
  disconnected_at: Date | null;
  started_at: Date | null;
  ready_at: Date | null;
  resource_type: string;
  resource_name: string;
  resource_transition: string;
}

export async function getAgents(pool: Pool, jobId: string): Promise<AgentRow[]> {
  const { rows } = await pool.query<AgentRow>(
    `SELECT a.id, a.name, a.display_order, a.lifecycle_state, a.first_connected_at, a.last_connected_at,
            a.disconnected_at, a.started_at, a.ready_at,
            r.type AS resource_type, r.name AS resource_name, r.transition AS resource_transition
     FROM workspace_agents a JOIN workspace_resources r ON r.id = a.resource_id
     WHERE r.job_id = $1 ORDER BY a.display_order`,
    [jobId],
  );
  return rows;
}

export async function countResources(pool: Pool, jobId: string): Promise<number> {
  const { rows } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM workspace_resources WHERE job_id = $1`,
    [jobId],
  );
  return rows[0]!.n;
}

/**
 * An executor for daemon tests: records every run, how many ran at once, and lets a test hold runs
 * until it releases them (or the daemon aborts them).
 */
export class RecordingExecutor implements Executor {
  readonly runs: string[] = [];
  readonly aborted: string[] = [];
  /** Every afterCommit call: job id and agent names. */
  readonly afterCommits: [string, string[]][] = [];
  running = 0;
  maxRunning = 0;
  private readonly gates = new Map<string, () => void>();
  private readonly started = new Map<string, () => void>();
  private readonly startedPromises = new Map<string, Promise<void>>();

  constructor(
    private readonly options: {
      /** Hold every run until release(jobId) (or abort). */
      hold?: boolean;
      delayMs?: () => number;
      agents?: string[];
      fail?: string;
    } = {},
  ) {}

  /** Resolves when a run of `jobId` has started. */
  whenStarted(jobId: string): Promise<void> {
    let promise = this.startedPromises.get(jobId);
    if (!promise) {
      promise = new Promise<void>((resolve) => this.started.set(jobId, resolve));
      this.startedPromises.set(jobId, promise);
    }
    return promise;
  }

  release(jobId: string): void {
    this.gates.get(jobId)?.();
  }

  async run(job: BuildJob, ctx: ExecutorContext): Promise<ExecutorResult> {
    this.runs.push(job.jobId);
    this.running++;
    this.maxRunning = Math.max(this.maxRunning, this.running);
    void this.whenStarted(job.jobId);
    this.started.get(job.jobId)?.();
    try {
      void ctx.log('info', `recording ${job.transition}`, 'Test');
      await new Promise<void>((resolve, reject) => {
        const onAbort = () => {
          this.aborted.push(job.jobId);
          reject(ctx.signal.reason);
        };
        if (ctx.signal.aborted) return onAbort();
        ctx.signal.addEventListener('abort', onAbort, { once: true });
        if (this.options.hold) this.gates.set(job.jobId, resolve);
        else setTimeout(resolve, this.options.delayMs?.() ?? 0);
      });
      if (this.options.fail) throw new Error(this.options.fail);
      return { agents: this.options.agents ?? [], resourceType: 'test' };
    } finally {
      this.running--;
    }
  }

  afterCommit(job: BuildJob, agents: CommittedAgent[]): void {
    this.afterCommits.push([job.jobId, agents.map((a) => a.name)]);
  }
}

/**
 * A daemon's view of the database that can be frozen: while paused, its queries (and transactions) wait
 * and reach Postgres only on resume(), in order — what a daemon stopped with SIGSTOP and continued later
 * looks like from the database. Paused for one statement, only that one waits: a write still on its way.
 */
export class PausablePool {
  readonly pool: Pool;
  private gate: Promise<void> = Promise.resolve();
  private open: () => void = () => {};
  /** The prepared statement's name that waits, if only one does. */
  private held: string | undefined;

  constructor(target: Pool) {
    const waitForGate =
      (method: 'query' | 'connect') =>
      (...args: unknown[]) => {
        const send = () => (target[method] as (...a: unknown[]) => Promise<unknown>).apply(target, args);
        const waits =
          this.held === undefined ||
          (method === 'query' && (args[0] as { name?: string }).name === this.held);
        return waits ? this.gate.then(send) : send();
      };
    this.pool = new Proxy(target, {
      get(pool, property) {
        if (property === 'query' || property === 'connect') return waitForGate(property);
        const value: unknown = Reflect.get(pool, property);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(pool) : value;
      },
    });
  }

  /** Holds every query and transaction, or with `statement` only the queries of that prepared statement. */
  pause(statement?: string): void {
    this.held = statement;
    this.gate = new Promise<void>((resolve) => (this.open = resolve));
  }

  resume(): void {
    this.open();
  }
}

/** A job's re-run bookkeeping (migration 0002). */
export async function getClaims(pool: Pool, jobId: string): Promise<{ claims: number; reruns: number }> {
  const { rows } = await pool.query<{ claims: number; reruns: number }>(
    `SELECT claims, reruns FROM provisioner_jobs WHERE id = $1`,
    [jobId],
  );
  return rows[0]!;
}

/**
 * A daemon's pool that counts the named statements it runs (the daemon's, src/shared/postgres.ts prepared)
 * and, when given `afterAnswer`, runs it once such a statement answered, before the daemon sees the answer.
 */
export class CountingPool {
  readonly pool: Pool;
  private readonly counts = new Map<string, number>();

  constructor(target: Pool, afterAnswer?: (name: string, rows: Record<string, unknown>[]) => Promise<void>) {
    const counts = this.counts;
    const query = async (...args: Parameters<Pool['query']>) => {
      const name = (args[0] as { name?: string } | undefined)?.name;
      if (name) counts.set(name, (counts.get(name) ?? 0) + 1);
      const result = await (
        target.query as (...a: unknown[]) => Promise<{ rows: Record<string, unknown>[] }>
      )(...args);
      if (name) await afterAnswer?.(name, result.rows);
      return result;
    };
    this.pool = new Proxy(target, {
      get(pool, property) {
        if (property === 'query') return query;
        const value: unknown = Reflect.get(pool, property);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(pool) : value;
      },
    });
  }

  /** How often the statement `name` was sent. */
  count(name: string): number {
    return this.counts.get(name) ?? 0;
  }
}
