// Everything a worker integration test runs on: a private Postgres database, a unique Redis prefix, the
// producer, any number of WorkspaceWorker instances, and an SQL "provisioner" that plays the provisioner
// daemon and the workspace agent (claims pending build jobs, completes them, connects their agent and moves
// it to ready). close() tears all of it down: workers, connections, Redis keys and the database.
import { randomUUID } from 'node:crypto';
import { Queue } from 'bullmq';
import { afterEach, beforeEach, vi } from 'vitest';
import {
  insertAgents,
  insertBuild,
  insertChat,
  insertTemplate,
  insertUser,
  insertWorkspace,
} from '../../src/cli/fixtures.js';
import { completeJob, connectAgent, setAgentLifecycle } from './fixtures.js';
import { WorkspaceJobsProducer } from '../../src/producer/producer.js';
import {
  loadProvisionerConfig,
  startProvisioner,
  type RunningProvisioner,
} from '../../src/provisioner/index.js';
import { loadConfig, type Config, type Env } from '../../src/shared/config.js';
import { readChatEvents } from '../../src/shared/events.js';
import {
  QUEUE_NAME,
  type JobProgress,
  type ProgressEvent,
  type ProgressStage,
  type ResultEvent,
  type ResultStage,
  type WorkspaceJobEvent,
} from '../../src/shared/contract.js';
import type { WorkspaceStore } from '../../src/worker/ports.js';
import { ChatLocks } from '../../src/shared/lock.js';
import { createLogger, type Logger } from '../../src/shared/logger.js';
import type { Pool } from '../../src/shared/postgres.js';
import { closeRedis, type RedisClient } from '../../src/shared/redis.js';
import { PgWorkspaceStore } from '../../src/worker/pg-store.js';
import { WorkspaceWorker, type WorkspaceWorkerOptions } from '../../src/worker/worker.js';
import { CliProcess } from './cli-process.js';
import { createTestDatabase, type TestDatabase } from './database.js';
import { TEST_REDIS_ENV, deleteKeys, testClient, uniquePrefix } from './redis.js';

/** Upper bound of every wait in the worker tests (well below vitest's 30 s test timeout). */
export const WAIT_MS = 15_000;

/** vi.waitFor / expect.poll options of the worker tests: at most WAIT_MS, every 20 ms. */
export const POLL = { timeout: WAIT_MS, interval: 20 };

/** Races `promise` against a timer: a hung close or call fails the test instead of hanging it. */
export async function bounded<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------------
// The SQL provisioner

export interface SqlProvisionerOptions {
  /** Start paused: pending jobs stay pending until resume(). Default false. */
  paused?: boolean;
  /** Poll interval. Default 20. */
  pollMs?: number;
  /**
   * A job is claimed only once it is this old, so the worker sees it pending first and reports
   * `build_queued` deterministically. Default 100.
   */
  minAgeMs?: number;
}

/**
 * Completes pending provisioner jobs the way the provisioner daemon and the agent would: claim (running),
 * attach one agent `dev` to a start build, complete (succeeded), then connect the agent and move its
 * lifecycle created → starting → ready. Every change fires the NOTIFY triggers the worker waits on.
 */
export class SqlProvisioner {
  /** Provisioner job ids completed so far, in order. */
  readonly completed: string[] = [];
  /** The last error of a poll (a test that drops the database ends it), for debugging. */
  lastError: unknown;
  private paused: boolean;
  private stopped = false;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private readonly pollMs: number;
  private readonly minAgeMs: number;

  constructor(
    private readonly pool: Pool,
    options: SqlProvisionerOptions = {},
  ) {
    this.paused = options.paused ?? false;
    this.pollMs = options.pollMs ?? 20;
    this.minAgeMs = options.minAgeMs ?? 100;
    this.schedule();
  }

  /** Stops claiming jobs (a job already being completed finishes). */
  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.tick()
        .catch((error: unknown) => {
          this.lastError = error;
        })
        .finally(() => {
          this.running = undefined;
          this.schedule();
        });
    }, this.pollMs);
  }

  private async tick(): Promise<void> {
    if (this.paused) return;
    const { rows } = await this.pool.query<{ id: string; transition: string }>(
      `SELECT j.id, b.transition
         FROM provisioner_jobs j JOIN workspace_builds b ON b.job_id = j.id
        WHERE j.job_status = 'pending' AND j.created_at < now() - $1 * interval '1 millisecond'
        ORDER BY j.created_at LIMIT 50`,
      [this.minAgeMs],
    );
    for (const job of rows) {
      if (this.paused || this.stopped) return;
      await this.run(job.id, job.transition);
    }
  }

  private async run(jobId: string, transition: string): Promise<void> {
    const claimed = await this.pool.query(
      `UPDATE provisioner_jobs SET started_at = now(), updated_at = now()
        WHERE id = $1 AND started_at IS NULL AND canceled_at IS NULL RETURNING id`,
      [jobId],
    );
    if (claimed.rowCount === 0) return;
    const agentId =
      transition === 'start'
        ? (await insertAgents(this.pool, jobId, [{ name: 'dev' }])).agentIds[0]
        : undefined;
    await completeJob(this.pool, jobId);
    this.completed.push(jobId);
    if (agentId !== undefined) {
      await connectAgent(this.pool, agentId);
      await setAgentLifecycle(this.pool, agentId, 'starting');
      await setAgentLifecycle(this.pool, agentId, 'ready');
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Seeding

export interface SeededOwner {
  ownerId: string;
  username: string;
  templateId: string;
  versionId: string;
}

export interface SeededWorkspace {
  ownerId: string;
  workspaceId: string;
  workspaceName: string;
  chatId: string;
  /** The stop build (#2) the workspace is left at. */
  stopBuildId: string;
}

// ---------------------------------------------------------------------------------------------------
// The harness

export interface HarnessOptions {
  /** Config overrides (env-style keys), on top of the harness defaults. */
  env?: Env;
  provisioner?: SqlProvisionerOptions;
}

export class WorkerHarness {
  readonly log: Logger = createLogger('silent');
  readonly workers = new Set<WorkspaceWorker>();
  private readonly extraRedis: RedisClient[] = [];
  private readonly cleanups: (() => Promise<unknown>)[] = [];

  private constructor(
    readonly prefix: string,
    readonly db: TestDatabase,
    /** Commands for the test itself (events, keys, CLIENT LIST); also the producer's connection. */
    readonly redis: RedisClient,
    readonly queue: Queue,
    readonly producer: WorkspaceJobsProducer,
    readonly provisioner: SqlProvisioner,
    private readonly env: Env,
  ) {}

  static async create(options: HarnessOptions = {}): Promise<WorkerHarness> {
    const prefix = uniquePrefix('worker');
    const db = await createTestDatabase();
    const redis = testClient();
    const env: Env = {
      ...TEST_REDIS_ENV,
      DATABASE_URL: db.url,
      QUEUE_PREFIX: prefix,
      LOG_LEVEL: 'silent',
      WORKER_CONCURRENCY: '20',
      JOB_ATTEMPTS: '3',
      BUILD_TIMEOUT_MS: '20000',
      AGENT_CONNECT_TIMEOUT_MS: '10000',
      STARTUP_SCRIPT_TIMEOUT_MS: '10000',
      ...options.env,
    };
    const config = loadConfig(env);
    const producer = new WorkspaceJobsProducer({
      connection: redis,
      pool: db.pool,
      prefix,
      attempts: config.jobAttempts,
      resultRecheckMs: 200,
    });
    const queue = new Queue(QUEUE_NAME, { connection: redis, prefix });
    queue.on('error', () => {});
    const provisioner = new SqlProvisioner(db.pool, options.provisioner);
    return new WorkerHarness(prefix, db, redis, queue, producer, provisioner, env);
  }

  config(overrides: Env = {}): Config {
    return loadConfig({ ...this.env, ...overrides });
  }

  /** A WorkspaceWorker on this harness's database and prefix; closed by close() unless closed before. */
  async startWorker(options: WorkspaceWorkerOptions = {}, env: Env = {}): Promise<WorkspaceWorker> {
    const worker = await WorkspaceWorker.start(this.config(env), this.log, {
      ...options,
      processor: { lockRetryMinMs: 50, lockRetryMaxMs: 200, ...options.processor },
    });
    this.workers.add(worker);
    return worker;
  }

  /** Closes one worker (bounded) and forgets it. */
  async closeWorker(worker: WorkspaceWorker, graceMs = 1_000): Promise<void> {
    this.workers.delete(worker);
    await bounded(worker.close(graceMs), graceMs + 15_000, 'WorkspaceWorker.close');
  }

  /**
   * A long-running CLI command (`worker`, `provisioner`, …) as a real process on this harness's database
   * and prefix, logging at info; `env` adds or overrides settings. The caller stops it (killAll() kills
   * whatever is left).
   */
  cliProcess(command: string, env: Record<string, string> = {}): CliProcess {
    return new CliProcess(command, [command], {
      ...TEST_REDIS_ENV,
      DATABASE_URL: this.db.url,
      QUEUE_PREFIX: this.prefix,
      LOG_LEVEL: 'info',
      BUILD_TIMEOUT_MS: '60000',
      AGENT_CONNECT_TIMEOUT_MS: '10000',
      STARTUP_SCRIPT_TIMEOUT_MS: '10000',
      ...env,
    });
  }

  /** A Redis connection of the test's own, closed by close(). */
  connection(name = 'workspace-jobs-test'): RedisClient {
    const client = testClient({ name });
    this.extraRedis.push(client);
    return client;
  }

  /** Chat locks on this prefix with their own connection, e.g. with a short TTL. */
  locks(options: { lockTimeoutMs?: number } = {}): ChatLocks {
    return new ChatLocks([this.connection('workspace-jobs-test-lock')], this.prefix, {
      lockTimeoutMs: options.lockTimeoutMs,
      log: this.log,
    });
  }

  /**
   * The real provisioner daemon (simulated executor: 200 ms builds, an agent ready 150 ms later) instead of
   * the SQL stand-in, which is paused; stopped by close(). `env` adds or overrides its settings (e.g. a
   * quota, or the command executor).
   */
  async startProvisionerDaemon(env: Env = {}): Promise<RunningProvisioner> {
    this.provisioner.pause();
    const daemon = await startProvisioner(
      this.config(),
      loadProvisionerConfig({
        SIM_BUILD_MS: '200',
        SIM_AGENT_CONNECT_MS: '50',
        SIM_STARTUP_MS: '100',
        ...env,
      }),
      this.log,
    );
    this.onClose(() => daemon.stop(1_000));
    return daemon;
  }

  /** Runs `fn` on close (before the connections and the database go). */
  onClose(fn: () => Promise<unknown>): void {
    this.cleanups.push(fn);
  }

  async seedOwner(): Promise<SeededOwner> {
    const { userId, username } = await insertUser(this.db.pool);
    const template = await insertTemplate(this.db.pool, { versions: [{}] });
    return {
      ownerId: userId,
      username,
      templateId: template.templateId,
      versionId: template.activeVersionId,
    };
  }

  /** A workspace that was started (#1) and stopped (#2), and a chat bound to it. */
  async seedStoppedWorkspace(owner?: SeededOwner): Promise<SeededWorkspace> {
    const o = owner ?? (await this.seedOwner());
    const { workspaceId, name } = await insertWorkspace(this.db.pool, {
      ownerId: o.ownerId,
      templateId: o.templateId,
    });
    const build = {
      workspaceId,
      templateVersionId: o.versionId,
      status: 'succeeded' as const,
      initiatorId: o.ownerId,
    };
    await insertBuild(this.db.pool, { ...build, transition: 'start', agents: [{ name: 'dev' }] });
    const stop = await insertBuild(this.db.pool, { ...build, transition: 'stop' });
    const { chatId } = await insertChat(this.db.pool, {
      ownerId: o.ownerId,
      workspaceId,
      buildId: stop.buildId,
    });
    return { ownerId: o.ownerId, workspaceId, workspaceName: name, chatId, stopBuildId: stop.buildId };
  }

  /**
   * The worker's store, except that its chat reads (getChat, getChatWithOwner) always fail: an attempt that
   * throws, whatever the job.
   */
  brokenStore(): WorkspaceStore {
    return new Proxy(new PgWorkspaceStore(this.db.pool), {
      get(target, property, receiver) {
        if (property === 'getChat' || property === 'getChatWithOwner') {
          return () => Promise.reject(new Error('connection reset (simulated by the test)'));
        }
        const value: unknown = Reflect.get(target, property, receiver);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  }

  /** Every event still in the chat's replay stream, oldest first. */
  events(chatId: string): Promise<WorkspaceJobEvent[]> {
    return readChatEvents(this.redis, this.prefix, chatId, '0');
  }

  /** The events of one job on the chat's stream. */
  async jobEvents(chatId: string, jobId: string): Promise<WorkspaceJobEvent[]> {
    return (await this.events(chatId)).filter((e) => e.job.id === jobId);
  }

  /** Waits for an event of `stage` (optionally of one job) on the chat's stream and returns it. */
  async waitForEvent<S extends ProgressStage | ResultStage>(
    chatId: string,
    stage: S,
    filter: (event: WorkspaceJobEvent) => boolean = () => true,
  ): Promise<S extends ProgressStage ? ProgressEvent : ResultEvent> {
    return vi.waitFor(async () => {
      const found = (await this.events(chatId)).find((e) => e.stage === stage && filter(e));
      if (!found) throw new Error(`no ${stage} event on chat ${chatId} yet`);
      return found as S extends ProgressStage ? ProgressEvent : ResultEvent;
    }, POLL);
  }

  /** Waits until the job is in one of `states`; returns the job as it was then. */
  async waitForState(jobId: string, states: string[]) {
    return vi.waitFor(async () => {
      const state = await this.queue.getJobState(jobId);
      if (!states.includes(state))
        throw new Error(`job ${jobId} is ${state}, waiting for ${states.join('|')}`);
      const job = await this.queue.getJob(jobId);
      if (!job) throw new Error(`job ${jobId} is gone`);
      return job;
    }, POLL);
  }

  /** The job's BullMQ progress (the last event it published, lock waits, the final result). */
  async progressOf(jobId: string): Promise<Partial<JobProgress>> {
    const job = await this.queue.getJob(jobId);
    return (job?.progress ?? {}) as Partial<JobProgress>;
  }

  /** Start builds a workspace got after its seeded builds #1 and #2. */
  async newStartBuilds(workspaceId?: string): Promise<{ id: string; workspace_id: string }[]> {
    const { rows } = await this.db.pool.query<{ id: string; workspace_id: string }>(
      `SELECT id, workspace_id FROM workspace_builds
        WHERE transition = 'start' AND build_number > 2 AND ($1::uuid IS NULL OR workspace_id = $1)
        ORDER BY build_number`,
      [workspaceId ?? null],
    );
    return rows;
  }

  /** The statuses of the workspace's builds whose provisioner job has not ended (pending, running, canceling). */
  async activeBuilds(workspaceId: string): Promise<string[]> {
    const { rows } = await this.db.pool.query<{ job_status: string }>(
      `SELECT j.job_status FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
        WHERE b.workspace_id = $1 AND j.job_status IN ('pending', 'running', 'canceling')`,
      [workspaceId],
    );
    return rows.map((r) => r.job_status);
  }

  /** A job id for queue.add (the producer uses UUIDs too). */
  static jobId(): string {
    return randomUUID();
  }

  async close(): Promise<void> {
    const errors: unknown[] = [];
    const step = async (fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (error) {
        errors.push(error);
      }
    };
    for (const fn of this.cleanups.splice(0).reverse()) await step(fn);
    await Promise.all([...this.workers].map((w) => step(() => this.closeWorker(w))));
    await step(() => this.provisioner.stop());
    await step(() => bounded(this.producer.close(), 5_000, 'producer.close'));
    await step(() => bounded(this.queue.close(), 5_000, 'queue.close'));
    await Promise.all(this.extraRedis.map((r) => step(() => closeRedis(r))));
    await step(() => deleteKeys(this.redis, this.prefix));
    await step(() => closeRedis(this.redis));
    await step(() => this.db.drop());
    if (errors.length > 0) throw new AggregateError(errors, 'worker harness cleanup failed');
  }
}

/**
 * For a suite: a new harness and a stopped workspace (with its chat) for each test, closed after it. Read
 * `h` and `ws` inside the tests (they change per test).
 */
export function useWorkspaceHarness(): { readonly h: WorkerHarness; readonly ws: SeededWorkspace } {
  let h: WorkerHarness | undefined;
  let ws: SeededWorkspace | undefined;
  beforeEach(async () => {
    h = await WorkerHarness.create();
    ws = await h.seedStoppedWorkspace();
  });
  afterEach(async () => {
    await h?.close();
  });
  const current = <T>(value: T | undefined): T => {
    if (value === undefined)
      throw new Error('useWorkspaceHarness: the harness exists only while a test runs');
    return value;
  };
  return {
    get h() {
      return current(h);
    },
    get ws() {
      return current(ws);
    },
  };
}

/** Progress stages of the events, in stream order. */
export function stagesOf(events: WorkspaceJobEvent[]): string[] {
  return events.map((e) => e.stage);
}
