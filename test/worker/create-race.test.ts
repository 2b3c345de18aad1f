// create-workspace and start-workspace racing for one chat (docs/design.md §5; the race suite):
// three producers enqueue creates and starts together, two real worker processes (`workspace-jobs worker`,
// one job slot each) and the real provisioner daemon (`workspace-jobs provisioner`, simulated builds)
// process them. Afterwards: the lock-held intervals never overlap, the chat is bound to exactly one
// workspace, no workspace ever had two active builds, and every job ended with exactly one result event.
//
// How the lock-held intervals are recorded. The processor logs, at debug level and with the job's id and
// attempt, "chat lock acquired" right after Redis granted the lock and "chat lock releasing" right before
// it gives it back. The worker processes run with LOG_LEVEL=debug; their pino JSON lines carry `time`
// (Date.now() of the one host clock every process here shares) and `pid`. [acquired, releasing] is inside
// the real held interval and contains every step the job takes under the lock, so two jobs whose recorded
// intervals overlap did run under the lock at once. Timestamps have millisecond resolution; since the next
// holder can only acquire after the previous one's release has reached Redis, back-to-back intervals may
// share a millisecond but never cross: the check is `previous.releasing <= next.acquired` over every pair.
// The same is checked independently in Redis' own total order: on the chat's event stream, every holder's
// events from lock_acquired to its result (or retrying), all published while it held the lock, form one
// block that no other holder's events enter; each block is matched to one logged interval and its events'
// times lie within it. Events published without the lock (queued, deduplicated, waiting_for_lock) are
// left out of that check.
//
// The race is made certain, not left to timing: the provisioner starts only once a job holding the lock
// waits for its build and another job has found the lock busy. With one slot per worker, that other job
// necessarily ran on the second worker process.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  insertBuild,
  insertChat,
  insertTemplate,
  insertUser,
  insertWorkspace,
} from '../../src/cli/fixtures.js';
import { WorkspaceJobsProducer } from '../../src/producer/producer.js';
import { loadConfig } from '../../src/shared/config.js';
import { readChatEvents } from '../../src/shared/events.js';
import type {
  CreateWorkspacePayload,
  CreateWorkspaceSuccess,
  JobName,
  JobResult,
  StartWorkspaceSuccess,
  WorkspaceJobEvent,
} from '../../src/shared/contract.js';
import { closeRedis, type Redis } from '../../src/shared/redis.js';
import { ValidationError } from '../../src/shared/schemas.js';
import { CliProcess, killAll, type LogLine } from '../helpers/cli-process.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

const RACE_TEST_TIMEOUT_MS = 120_000;
/** Bound of every wait on the processes (start-up, a job's events, all results). */
const WAIT_MS = 60_000;
const POLL = { timeout: WAIT_MS, interval: 20 };
const SHUTDOWN_BOUND_MS = 15_000;
const RUNNING_CONNECTED = 'workspace is already running and recently connected';
/** Stages a job publishes without holding the chat lock. */
const OUTSIDE_LOCK = new Set(['queued', 'deduplicated', 'waiting_for_lock']);

interface Enqueued {
  kind: JobName;
  producer: number;
  jobId: string;
  deduplicated: boolean;
}

interface HeldInterval {
  pid: number;
  jobId: string;
  attempt: number;
  acquired: number;
  releasing: number;
}

describe('create and start racing for one chat across worker processes', () => {
  let db: TestDatabase;
  let redis: Redis;
  let prefix: string;
  let producers: WorkspaceJobsProducer[];
  let stopMonitor: (() => Promise<void>) | undefined;

  beforeEach(async () => {
    db = await createTestDatabase();
    redis = testRedis();
    prefix = uniquePrefix('race');
    producers = [];
    stopMonitor = undefined;
  });

  afterEach(async () => {
    await stopMonitor?.();
    await Promise.all(producers.map((p) => p.close().catch(() => {})));
    await killAll();
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
    await db.drop();
  });

  function env(extra: Record<string, string> = {}): Record<string, string> {
    return {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: db.url,
      QUEUE_PREFIX: prefix,
      LOG_LEVEL: 'debug',
      WORKER_CONCURRENCY: '1',
      JOB_ATTEMPTS: '3',
      BUILD_TIMEOUT_MS: '45000',
      AGENT_CONNECT_TIMEOUT_MS: '15000',
      STARTUP_SCRIPT_TIMEOUT_MS: '15000',
      SHUTDOWN_GRACE_MS: '5000',
      ...extra,
    };
  }

  async function startWorkers(): Promise<CliProcess[]> {
    const workers = [1, 2].map((n) => new CliProcess(`worker ${n}`, ['worker'], env()));
    await Promise.all(workers.map((w) => w.waitForLog('worker started', (l) => l.msg === 'worker started')));
    return workers;
  }

  async function startProvisioner(): Promise<CliProcess> {
    const provisioner = new CliProcess(
      'provisioner',
      ['provisioner'],
      env({
        SIM_BUILD_MS: '200',
        SIM_AGENT_CONNECT_MS: '50',
        SIM_STARTUP_MS: '50',
        PROVISIONER_CONCURRENCY: '4',
      }),
    );
    await provisioner.waitForLog('provisioner started', (l) => l.msg === 'provisioner started');
    return provisioner;
  }

  function startProducers(n = 3): WorkspaceJobsProducer[] {
    const config = loadConfig({
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: db.url,
      QUEUE_PREFIX: prefix,
      JOB_ATTEMPTS: '3',
    });
    producers = Array.from({ length: n }, () => WorkspaceJobsProducer.fromConfig(config));
    return producers;
  }

  /** Samples every 20 ms whether any workspace has two builds whose jobs are active at once. */
  function monitorActiveBuilds(): { violations: unknown[] } {
    const violations: unknown[] = [];
    let stopped = false;
    const loop = (async () => {
      while (!stopped) {
        const { rows } = await db.pool.query(
          `SELECT b.workspace_id, array_agg(b.build_number ORDER BY b.build_number) AS builds
             FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
            WHERE j.job_status IN ('pending', 'running', 'canceling')
            GROUP BY b.workspace_id HAVING count(*) > 1`,
        );
        violations.push(...rows);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    })();
    stopMonitor = async () => {
      stopped = true;
      await loop;
    };
    return { violations };
  }

  /** An owner, a template whose active version has a parameter with a default, and a chat. */
  async function seed(options: { stoppedWorkspace: boolean }) {
    const user = await insertUser(db.pool);
    const template = await insertTemplate(db.pool, {
      versions: [{ parameters: [{ name: 'region', defaultValue: 'eu-west-1' }] }],
    });
    let workspaceId: string | undefined;
    let stopBuildId: string | undefined;
    if (options.stoppedWorkspace) {
      workspaceId = (
        await insertWorkspace(db.pool, { ownerId: user.userId, templateId: template.templateId })
      ).workspaceId;
      const common = {
        workspaceId,
        templateVersionId: template.activeVersionId,
        initiatorId: user.userId,
        status: 'succeeded' as const,
        parameters: { region: 'eu-west-1' },
      };
      await insertBuild(db.pool, { ...common, transition: 'start', agents: [{ name: 'main' }] });
      stopBuildId = (await insertBuild(db.pool, { ...common, transition: 'stop' })).buildId;
    }
    const { chatId } = await insertChat(db.pool, { ownerId: user.userId, workspaceId, buildId: stopBuildId });
    const createPayload: CreateWorkspacePayload = {
      chatId,
      ownerId: user.userId,
      templateId: template.templateId,
    };
    return { ownerId: user.userId, username: user.username, chatId, workspaceId, createPayload };
  }

  /** Enqueues through the producers; every producer calls createWorkspace and startWorkspace at once. */
  function enqueuer(chatId: string, ownerId: string, createPayload: CreateWorkspacePayload) {
    const enqueued: Enqueued[] = [];
    let refusedStarts = 0;
    const round = async () => {
      await Promise.all(
        producers.flatMap((producer, index) => [
          producer.createWorkspace(createPayload).then((r) => {
            enqueued.push({ kind: 'create-workspace', producer: index, ...r });
          }),
          producer.startWorkspace({ chatId, ownerId }).then(
            (r) => enqueued.push({ kind: 'start-workspace', producer: index, ...r }),
            (error: unknown) => {
              // Before the first create has bound the chat, the producer refuses a start (nothing enqueued).
              if (!(error instanceof ValidationError && error.message.includes('has no workspace')))
                throw error;
              refusedStarts++;
            },
          ),
        ]),
      );
    };
    const jobs = (kind: JobName) => [...new Set(enqueued.filter((e) => e.kind === kind).map((e) => e.jobId))];
    return { enqueued, round, jobs, refusedStarts: () => refusedStarts };
  }

  /**
   * Rounds of enqueues until there are `n` distinct jobs of each kind. Each round waits for all of its jobs
   * to finish: until then every further call would only be deduplicated (and a job re-delayed by a busy
   * lock may wait seconds), and a flood of rounds would push early events out of the capped replay stream.
   */
  async function enqueueUntil(q: ReturnType<typeof enqueuer>, n: number): Promise<void> {
    const deadline = Date.now() + WAIT_MS;
    while (q.jobs('create-workspace').length < n || q.jobs('start-workspace').length < n) {
      if (Date.now() > deadline) throw new Error(`no ${n} create and ${n} start jobs within ${WAIT_MS} ms`);
      const before = q.enqueued.length;
      await q.round();
      const jobIds = [...new Set(q.enqueued.slice(before).map((e) => e.jobId))];
      await Promise.all(jobIds.map((id) => producers[0]!.waitForResult(id, { timeoutMs: WAIT_MS })));
    }
  }

  async function events(chatId: string): Promise<WorkspaceJobEvent[]> {
    return readChatEvents(redis, prefix, chatId, '0');
  }

  async function waitForEvent(chatId: string, what: string, match: (e: WorkspaceJobEvent) => boolean) {
    return vi.waitFor(async () => {
      const found = (await events(chatId)).find(match);
      expect(found, what).toBeDefined();
      return found!;
    }, POLL);
  }

  /** The [acquired, releasing] intervals of the chat's lock in the workers' debug logs. */
  function lockIntervals(workers: CliProcess[], chatId: string): HeldInterval[] {
    const intervals: HeldInterval[] = [];
    for (const worker of workers) {
      const open = new Map<string, LogLine>();
      for (const line of worker.logs()) {
        if (line.chatId !== chatId) continue;
        const key = `${String(line.jobId)}#${String(line.attempt)}`;
        if (line.msg === 'chat lock acquired') {
          expect(open.has(key), `${worker.label}: ${key} acquired twice without releasing`).toBe(false);
          open.set(key, line);
        } else if (line.msg === 'chat lock releasing') {
          const acquired = open.get(key);
          expect(acquired, `${worker.label}: ${key} released without acquiring`).toBeDefined();
          open.delete(key);
          intervals.push({
            pid: line.pid,
            jobId: String(line.jobId),
            attempt: Number(line.attempt),
            acquired: acquired!.time,
            releasing: line.time,
          });
        }
      }
      expect([...open.keys()], `${worker.label}: lock still held at exit`).toEqual([]);
    }
    return intervals.sort((a, b) => a.acquired - b.acquired || a.releasing - b.releasing);
  }

  /**
   * Everything the race must guarantee, from the workers' logs, the chat's event stream and the database.
   * Returns the results by job id.
   */
  async function assertRaceInvariants(input: {
    chatId: string;
    workers: CliProcess[];
    q: ReturnType<typeof enqueuer>;
    activeBuildViolations: unknown[];
  }): Promise<Map<string, JobResult>> {
    const { chatId, workers, q } = input;
    const jobIds = [...q.jobs('create-workspace'), ...q.jobs('start-workspace')];

    // Deduplication: each job was added by exactly one call; every other call for it was deduplicated.
    for (const jobId of jobIds) {
      const calls = q.enqueued.filter((e) => e.jobId === jobId);
      expect(
        calls.filter((c) => !c.deduplicated),
        `job ${jobId}`,
      ).toHaveLength(1);
      expect(new Set(calls.map((c) => c.kind)).size).toBe(1);
    }

    // 1. Lock-held intervals never overlap (every pair, not only neighbours).
    const intervals = lockIntervals(workers, chatId);
    for (const [i, a] of intervals.entries()) {
      for (const b of intervals.slice(i + 1)) {
        const disjoint = a.releasing <= b.acquired || b.releasing <= a.acquired;
        expect(disjoint, `lock intervals overlap: ${JSON.stringify(a)} and ${JSON.stringify(b)}`).toBe(true);
      }
    }
    // Every job held the lock at least once; both worker processes worked on the chat's jobs.
    expect(new Set(intervals.map((i) => i.jobId))).toEqual(new Set(jobIds));
    const processing = new Set(
      workers.flatMap((w) =>
        w
          .logs()
          .filter(
            (l) =>
              l.chatId === chatId &&
              (l.msg === 'chat lock acquired' || l.msg === 'chat lock busy; re-delaying'),
          )
          .map((l) => l.pid),
      ),
    );
    expect(processing.size).toBe(2);

    // 2. The same in Redis' order: each holder's events form one uninterrupted block on the stream.
    const stream = await events(chatId);
    // The capped stream (about 1000 entries) still holds everything, from the very first enqueue on.
    expect(stream.length).toBeLessThan(900);
    for (const jobId of jobIds) {
      expect(stream.filter((e) => e.stage === 'queued' && e.job.id === jobId)).toHaveLength(1);
    }
    const underLock = stream.filter((e) => !OUTSIDE_LOCK.has(e.stage));
    const blocks: WorkspaceJobEvent[][] = [];
    for (const event of underLock) {
      const block = blocks.at(-1);
      const sameHolder =
        block &&
        block[0]!.job.id === event.job.id &&
        block[0]!.job.attempt === event.job.attempt &&
        event.stage !== 'lock_acquired';
      if (sameHolder) block.push(event);
      else blocks.push([event]);
    }
    expect(blocks).toHaveLength(intervals.length);
    for (const block of blocks) {
      const first = block[0]!;
      const last = block.at(-1)!;
      expect(first.stage, `block of ${first.job.id}`).toBe('lock_acquired');
      expect(['completed', 'failed', 'retrying']).toContain(last.stage);
      const interval = intervals.find((i) => i.jobId === first.job.id && i.attempt === first.job.attempt);
      expect(interval, `a logged interval for ${first.job.id}#${first.job.attempt}`).toBeDefined();
      for (const event of [first, last]) {
        const at = Date.parse(event.at);
        expect(at).toBeGreaterThanOrEqual(interval!.acquired);
        expect(at).toBeLessThanOrEqual(interval!.releasing);
      }
    }

    // 3. Every job ended with exactly one result event, and nothing else got one.
    const results = stream.filter((e) => e.type === 'result');
    for (const jobId of jobIds) {
      expect(
        results.filter((e) => e.job.id === jobId),
        `result events of ${jobId}`,
      ).toHaveLength(1);
    }
    expect(results).toHaveLength(jobIds.length);

    // 4. No workspace ever had two active builds: sampled while running, and from the job rows afterwards
    // (for each workspace, the builds' [created_at, completed_at] intervals are disjoint).
    expect(input.activeBuildViolations).toEqual([]);
    const { rows: builds } = await db.pool.query<{
      workspace_id: string;
      build_number: number;
      created_at: Date;
      completed_at: Date | null;
    }>(
      `SELECT b.workspace_id, b.build_number, j.created_at, j.completed_at
         FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
        ORDER BY b.workspace_id, j.created_at`,
    );
    for (const [i, build] of builds.entries()) {
      expect(build.completed_at, `build #${build.build_number} never completed`).not.toBeNull();
      const next = builds[i + 1];
      if (next?.workspace_id === build.workspace_id) {
        expect(next.created_at.getTime()).toBeGreaterThanOrEqual(build.completed_at!.getTime());
      }
    }

    return new Map(results.map((e) => [e.job.id, e.data as unknown as JobResult]));
  }

  /** Waits for every job's result through a producer, then stops the processes with SIGTERM: exit 0. */
  async function finish(jobIds: string[], processes: CliProcess[]): Promise<Map<string, JobResult>> {
    const results = await Promise.all(
      jobIds.map(async (id) => [id, await producers[0]!.waitForResult(id, { timeoutMs: WAIT_MS })] as const),
    );
    await stopMonitor?.();
    stopMonitor = undefined;
    const exits = await Promise.all(processes.map((p) => p.stop('SIGTERM', SHUTDOWN_BOUND_MS)));
    for (const [i, exit] of exits.entries()) {
      expect(exit, `${processes[i]!.label} exit: ${processes[i]!.describe()}`).toEqual({
        code: 0,
        signal: null,
      });
      // Exited because everything was closed, not through main's "still open" fallback.
      expect(processes[i]!.stderr.join('\n')).not.toContain('a connection was still open');
    }
    return new Map(results);
  }

  async function chatRow(chatId: string) {
    const { rows } = await db.pool.query<{ workspace_id: string | null; build_id: string | null }>(
      'SELECT workspace_id, build_id FROM chats WHERE id = $1',
      [chatId],
    );
    return rows[0]!;
  }

  it(
    'a chat without a workspace: the first create makes it, starts and later creates find it; one workspace, one build',
    async () => {
      const s = await seed({ stoppedWorkspace: false });
      const workers = await startWorkers();
      startProducers();
      const q = enqueuer(s.chatId, s.ownerId, s.createPayload);
      const monitor = monitorActiveBuilds();

      // Creates and starts together; the starts are refused until the first create has bound the chat.
      await q.round();
      expect(q.jobs('create-workspace')).toHaveLength(1);
      await vi.waitFor(
        async () =>
          expect((await chatRow(s.chatId)).workspace_id, 'the create to bind the chat').not.toBeNull(),
        POLL,
      );
      // The create holds the lock and waits for its build (no provisioner yet): starts now wait for the lock.
      await vi.waitFor(
        async () => {
          if (q.jobs('start-workspace').length === 0) await q.round();
          expect(q.jobs('start-workspace'), 'a start job enqueued').not.toEqual([]);
        },
        { ...POLL, interval: 50 },
      );
      await waitForEvent(
        s.chatId,
        'a start job finding the lock busy',
        (e) => e.stage === 'waiting_for_lock' && e.job.name === 'start-workspace',
      );
      const provisioner = await startProvisioner();
      await enqueueUntil(q, 3);

      const jobIds = [...q.jobs('create-workspace'), ...q.jobs('start-workspace')];
      const results = await finish(jobIds, [...workers, provisioner]);
      const fromEvents = await assertRaceInvariants({
        chatId: s.chatId,
        workers,
        q,
        activeBuildViolations: monitor.violations,
      });
      expect(fromEvents).toEqual(results);

      // Exactly one workspace, with exactly one build, and the chat bound to both.
      const { rows: workspaces } = await db.pool.query<{ id: string; name: string }>(
        'SELECT id, name FROM workspaces',
      );
      expect(workspaces).toHaveLength(1);
      const workspace = workspaces[0]!;
      const { rows: builds } = await db.pool.query<{ id: string; build_number: number }>(
        'SELECT id, build_number FROM workspace_builds WHERE workspace_id = $1',
        [workspace.id],
      );
      expect(builds).toHaveLength(1);
      expect(await chatRow(s.chatId)).toEqual({ workspace_id: workspace.id, build_id: builds[0]!.id });
      const { rows: parameters } = await db.pool.query(
        'SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = $1',
        [builds[0]!.id],
      );
      expect(parameters).toEqual([{ name: 'region', value: 'eu-west-1' }]);

      // The first create created it; every other create found it running; every start found it running.
      const [firstCreate, ...laterCreates] = q.jobs('create-workspace');
      expect(results.get(firstCreate!)).toEqual({
        kind: 'create-workspace',
        ok: true,
        created: true,
        workspace_name: `${s.username}/${workspace.name}`,
        build_id: builds[0]!.id,
      });
      for (const id of laterCreates) {
        expect(results.get(id)).toEqual({
          kind: 'create-workspace',
          ok: true,
          created: false,
          workspace_name: `${s.username}/${workspace.name}`,
          status: 'already_exists',
          message: RUNNING_CONNECTED,
        } satisfies CreateWorkspaceSuccess);
      }
      for (const id of q.jobs('start-workspace')) {
        expect(results.get(id)).toEqual({
          kind: 'start-workspace',
          ok: true,
          started: true,
          workspace_name: workspace.name,
          no_build: true,
        } satisfies StartWorkspaceSuccess);
      }
    },
    RACE_TEST_TIMEOUT_MS,
  );

  it(
    'a chat with a stopped workspace: one start builds it, creates report it stopped or running, never a second workspace',
    async () => {
      const s = await seed({ stoppedWorkspace: true });
      const workers = await startWorkers();
      startProducers();
      const q = enqueuer(s.chatId, s.ownerId, s.createPayload);
      const monitor = monitorActiveBuilds();

      await q.round();
      expect(q.jobs('create-workspace')).toHaveLength(1);
      expect(q.jobs('start-workspace')).toHaveLength(1);
      // The start holds the lock and waits for its build (no provisioner yet); a create must now wait for
      // the lock (the first one may have run before the start and reported the workspace stopped).
      await waitForEvent(
        s.chatId,
        'the start waiting for its build',
        (e) => e.stage === 'build_queued' && e.job.name === 'start-workspace',
      );
      await vi.waitFor(
        async () => {
          const busy = (await events(s.chatId)).some(
            (e) => e.stage === 'waiting_for_lock' && e.job.name === 'create-workspace',
          );
          if (!busy) await q.round();
          expect(busy, 'a create job finding the lock busy').toBe(true);
        },
        { ...POLL, interval: 100 },
      );
      const provisioner = await startProvisioner();
      await enqueueUntil(q, 3);

      const jobIds = [...q.jobs('create-workspace'), ...q.jobs('start-workspace')];
      const results = await finish(jobIds, [...workers, provisioner]);
      const fromEvents = await assertRaceInvariants({
        chatId: s.chatId,
        workers,
        q,
        activeBuildViolations: monitor.violations,
      });
      expect(fromEvents).toEqual(results);

      // Still exactly one workspace: the seeded one, started once (#3), the chat bound to it and that build.
      const { rows: workspaces } = await db.pool.query<{ id: string; name: string }>(
        'SELECT id, name FROM workspaces',
      );
      expect(workspaces.map((w) => w.id)).toEqual([s.workspaceId]);
      const name = workspaces[0]!.name;
      const { rows: builds } = await db.pool.query<{ id: string; build_number: number; transition: string }>(
        'SELECT id, build_number, transition FROM workspace_builds WHERE workspace_id = $1 ORDER BY build_number',
        [s.workspaceId],
      );
      expect(builds.map((b) => [b.build_number, b.transition])).toEqual([
        [1, 'start'],
        [2, 'stop'],
        [3, 'start'],
      ]);
      const startBuild = builds[2]!;
      expect(await chatRow(s.chatId)).toEqual({ workspace_id: s.workspaceId, build_id: startBuild.id });

      // Exactly one start built it; the others found it running. No create created anything: each found it
      // stopped (before the start) or running, and at least the one that waited behind the start found it running.
      const starts = q.jobs('start-workspace').map((id) => results.get(id) as StartWorkspaceSuccess);
      expect(starts.filter((r) => r.build_id !== undefined)).toEqual([
        { kind: 'start-workspace', ok: true, started: true, workspace_name: name, build_id: startBuild.id },
      ]);
      expect(starts.filter((r) => r.no_build)).toHaveLength(starts.length - 1);
      const creates = q.jobs('create-workspace').map((id) => results.get(id) as CreateWorkspaceSuccess);
      for (const result of creates) {
        expect([
          {
            kind: 'create-workspace',
            ok: true,
            created: false,
            workspace_name: `${s.username}/${name}`,
            status: 'stopped',
            message: 'workspace is stopped; use start_workspace to start it',
          },
          {
            kind: 'create-workspace',
            ok: true,
            created: false,
            workspace_name: `${s.username}/${name}`,
            status: 'already_exists',
            message: RUNNING_CONNECTED,
          },
        ]).toContainEqual(result);
      }
      expect(creates.some((r) => r.status === 'already_exists')).toBe(true);
    },
    RACE_TEST_TIMEOUT_MS,
  );
});
