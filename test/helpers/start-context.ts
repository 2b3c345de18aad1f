// A JobContext for start/create-workspace tests: the real PgWorkspaceStore on the test database, a real
// PgNotificationHub (fast reconnects), the queue's shared reads over both (QueuePositions), a recording
// progress reporter, short timeouts and an AbortController. The waiter is wrapped so a test can tell when
// the job is *actually* waiting on a provisioner job or an agent (its first check found nothing), and play
// the provisioner only then, the way Coder's tests complete the job after the tool's first read.
import { afterEach, beforeEach, expect, vi } from 'vitest';
import type { AgentInput } from '../../src/cli/fixtures.js';
import { PgNotificationHub } from '../../src/shared/notifications.js';
import {
  isFailure,
  type JobFailure,
  type StartWorkspaceResult,
  type StartWorkspaceSuccess,
  type ProgressStage,
} from '../../src/shared/contract.js';
import type { ChangeWaiter, JobContext, WaitTimeouts, WorkspaceStore } from '../../src/worker/ports.js';
import { PgWorkspaceStore } from '../../src/worker/pg-store.js';
import { QueuePositions } from '../../src/worker/queue-positions.js';
import { createTestDatabase, type TestDatabase } from './database.js';

export interface RecordedProgress {
  stage: ProgressStage;
  message: string;
  data: Record<string, unknown> | undefined;
  workspaceId: string | undefined;
}

export interface RecordedWait {
  topics: string[];
  timeoutMs: number;
  /** The first check found nothing: the job is now waiting for a change. */
  blocked: boolean;
  /** How the wait ended: undefined while still waiting. */
  outcome?: 'resolved' | 'rejected';
}

export interface StartContextOptions {
  timeouts?: Partial<WaitTimeouts>;
  accessUrl?: string;
  /** Wraps the real store, e.g. to make two jobs meet at a point. */
  wrapStore?: (store: WorkspaceStore) => WorkspaceStore;
}

export interface StartContext {
  ctx: JobContext;
  /** Every progress event, in order. */
  events: RecordedProgress[];
  /** Every ChangeWaiter.waitFor call, in order. */
  waits: RecordedWait[];
  store: PgWorkspaceStore;
  hub: PgNotificationHub;
  abort: AbortController;
  stages(): ProgressStage[];
  /** Resolves once an event of `stage` has been recorded (at once if it already has). */
  waitForStage(stage: ProgressStage): Promise<RecordedProgress>;
  /** Resolves once a waitFor on `topic` is blocked (its first check found nothing). */
  waitingOn(topic: string): Promise<RecordedWait>;
  close(): Promise<void>;
}

export const DEFAULT_TEST_TIMEOUTS: WaitTimeouts = {
  buildTimeoutMs: 10_000,
  agentConnectTimeoutMs: 5_000,
  startupScriptTimeoutMs: 5_000,
};

/**
 * A suite of domain tests' set-up: each test gets a database of its own and, when it asks, a start context
 * over it (`context()`); both are closed after the test. `db` stands for the running test's database.
 */
export function useStartContext() {
  let current: TestDatabase | undefined;
  let tc: StartContext | undefined;
  beforeEach(async () => {
    current = await createTestDatabase();
    tc = undefined;
  });
  afterEach(async () => {
    await tc?.close();
    await current?.drop();
  });
  const running = (): TestDatabase => {
    if (!current) throw new Error('useStartContext: its database exists only while a test runs');
    return current;
  };
  const db: TestDatabase = {
    get url() {
      return running().url;
    },
    get name() {
      return running().name;
    },
    get pool() {
      return running().pool;
    },
    drop: () => running().drop(),
  };
  return {
    db,
    async context(options?: StartContextOptions): Promise<StartContext> {
      tc = await createStartContext(running(), options);
      return tc;
    },
  };
}

/** vi.waitFor options of the waits below: a job's next step is milliseconds away, 5 s is a hang. */
const POLL = { timeout: 5_000, interval: 10 };

export async function createStartContext(
  db: TestDatabase,
  options: StartContextOptions = {},
): Promise<StartContext> {
  const hub = new PgNotificationHub(db.url, { reconnectDelayMs: 50 });
  await hub.start();
  const store = new PgWorkspaceStore(db.pool);
  const events: RecordedProgress[] = [];
  const waits: RecordedWait[] = [];
  const abort = new AbortController();

  const waiter: ChangeWaiter = {
    waitFor(topics, check, waitOptions) {
      const wait: RecordedWait = { topics: [...topics], timeoutMs: waitOptions.timeoutMs, blocked: false };
      waits.push(wait);
      let first = true;
      const recordingCheck: typeof check = async (notice) => {
        const result = await check(notice);
        if (first) {
          first = false;
          if (result === undefined) wait.blocked = true;
        }
        return result;
      };
      return hub.waitFor(topics, recordingCheck, waitOptions).then(
        (value) => {
          wait.outcome = 'resolved';
          return value;
        },
        (error: unknown) => {
          wait.outcome = 'rejected';
          throw error;
        },
      );
    },
  };

  const ctxStore = options.wrapStore ? options.wrapStore(store) : store;
  const queue = new QueuePositions(ctxStore, waiter);
  const ctx: JobContext = {
    store: ctxStore,
    waiter,
    queue,
    progress: async (stage, message, data, workspaceId) => {
      events.push({ stage, message, data, workspaceId });
    },
    timeouts: { ...DEFAULT_TEST_TIMEOUTS, ...options.timeouts },
    signal: abort.signal,
    accessUrl: options.accessUrl,
    // A first attempt: no earlier one made a build (the processor keeps it in the job's progress).
    recordBuild: async () => {},
  };

  return {
    ctx,
    events,
    waits,
    store,
    hub,
    abort,
    stages: () => events.map((e) => e.stage),
    waitForStage: (stage) =>
      vi.waitFor(() => {
        const found = events.find((e) => e.stage === stage);
        expect(
          found,
          `progress stage ${stage} (seen: ${events.map((e) => e.stage).join(', ')})`,
        ).toBeDefined();
        return found!;
      }, POLL),
    waitingOn: (topic) =>
      vi.waitFor(() => {
        const found = waits.find((w) => w.blocked && w.outcome === undefined && w.topics.includes(topic));
        expect(found, `a blocked wait on ${topic}`).toBeDefined();
        return found!;
      }, POLL),
    async close() {
      abort.abort(new Error('test finished'));
      await queue.close();
      await hub.stop();
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Reading back what a job did.

export interface BuildRow {
  id: string;
  build_number: number;
  transition: string;
  template_version_id: string;
  initiator_id: string;
  job_id: string;
  job_status: string;
}

export async function listBuilds(db: TestDatabase, workspaceId: string): Promise<BuildRow[]> {
  const { rows } = await db.pool.query<BuildRow>(
    `SELECT b.id, b.build_number, b.transition, b.template_version_id, b.initiator_id, b.job_id, j.job_status
       FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
      WHERE b.workspace_id = $1 ORDER BY b.build_number`,
    [workspaceId],
  );
  return rows;
}

/** Waits until the workspace has a build with this number (the job inserted it) and returns it. */
export function awaitBuild(db: TestDatabase, workspaceId: string, buildNumber: number): Promise<BuildRow> {
  return vi.waitFor(async () => {
    const found = (await listBuilds(db, workspaceId)).find((b) => b.build_number === buildNumber);
    expect(found, `build #${buildNumber} of workspace ${workspaceId}`).toBeDefined();
    return found!;
  }, POLL);
}

export async function chatBinding(
  db: TestDatabase,
  chatId: string,
): Promise<{ workspace_id: string | null; build_id: string | null; agent_id: string | null }> {
  const { rows } = await db.pool.query<{
    workspace_id: string | null;
    build_id: string | null;
    agent_id: string | null;
  }>('SELECT workspace_id, build_id, agent_id FROM chats WHERE id = $1', [chatId]);
  expect(rows).toHaveLength(1);
  return rows[0]!;
}

export async function buildParameters(db: TestDatabase, buildId: string): Promise<Record<string, string>> {
  const { rows } = await db.pool.query<{ name: string; value: string }>(
    'SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = $1 ORDER BY name',
    [buildId],
  );
  return Object.fromEntries(rows.map((r) => [r.name, r.value]));
}

/** Row counts of everything a start may write; equal before and after = nothing persisted. */
export async function rowCounts(
  db: TestDatabase,
): Promise<{ builds: number; jobs: number; parameters: number }> {
  const { rows } = await db.pool.query<{ builds: number; jobs: number; parameters: number }>(
    `SELECT (SELECT count(*)::int FROM workspace_builds) AS builds,
            (SELECT count(*)::int FROM provisioner_jobs) AS jobs,
            (SELECT count(*)::int FROM workspace_build_parameters) AS parameters`,
  );
  return rows[0]!;
}

/** The result as a success, or a test failure that shows what came back instead. */
export function success(result: StartWorkspaceResult): StartWorkspaceSuccess {
  if (isFailure(result)) throw new Error(`expected success, got ${JSON.stringify(result)}`);
  return result;
}

/** The result as a failure, or a test failure that shows what came back instead. */
export function failure(result: StartWorkspaceResult): JobFailure {
  if (!isFailure(result)) throw new Error(`expected failure, got ${JSON.stringify(result)}`);
  return result;
}

/** One connected, ready root agent: a running workspace the chat can use at once. */
export const READY_AGENT: AgentInput[] = [{ name: 'dev', connected: true, lifecycleState: 'ready' }];
