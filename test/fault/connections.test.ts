// Connections cut while jobs run, with real processes: a worker, a provisioner (simulated builds) and the
// dashboard (`workspace-jobs …` as OS processes) on a test database and a redis-server of this test's own,
// while start-workspace jobs are enqueued one after another. Every few hundred milliseconds every backend
// of the test database (the processes' pools, their LISTEN connections, this test's own pools) is
// terminated with pg_terminate_backend, and every normal and pub/sub client of the private Redis (BullMQ's
// blocking and command connections, events, the lock, subscribers) is killed with CLIENT KILL.
// Afterwards: no process exited, each stops with exit 0 on SIGTERM, every job ended with exactly one
// result event, and no process printed an unhandled error event or an uncaught exception.
import pg from 'pg';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
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
import { QUEUE_NAME, type JobResult, type WorkspaceJobEvent } from '../../src/shared/contract.js';
import { bullStateOf } from '../../src/worker/processor.js';
import { closeRedis, createRedis, type Redis } from '../../src/shared/redis.js';
import { CliProcess, killAll } from '../helpers/cli-process.js';
import { openSse, type SseClient } from '../dashboard/helpers.js';
import { adminUrl, createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { RedisServerProcess } from '../helpers/redis-server.js';
import { uniquePrefix } from '../helpers/redis.js';

const JOBS = 24;
/** Faults: one round every 300–800 ms, for at most this long and this many rounds. */
const CHAOS_MS = 12_000;
const CHAOS_ROUNDS = 30;
const ENQUEUE_EVERY_MS = 350;
/** Bound of the wait for every job to finish once the faults stop. */
const DRAIN_MS = 120_000;
const START_MS = 30_000;
const STOP_MS = 20_000;

/** What a process prints when an error event had no listener, or an exception escaped. */
const CRASH_MARKS = ['Unhandled error event', 'uncaughtException', 'Uncaught', 'unhandledRejection'];

interface Chat {
  chatId: string;
  ownerId: string;
  workspaceId: string;
}

describe('when Postgres backends and Redis clients are cut repeatedly while jobs run', () => {
  let db: TestDatabase;
  let redisServer: RedisServerProcess;
  /** This test's own commands on the private Redis; CLIENT KILL skips the connection that sends it. */
  let admin: Redis;
  /** On the `postgres` database, so that terminating the test database's backends spares it. */
  let pgAdmin: pg.Client;
  let prefix: string;
  let processes: CliProcess[];

  beforeAll(async () => {
    db = await createTestDatabase();
    redisServer = await RedisServerProcess.start();
    admin = createRedis(redisServer.url, { name: 'workspace-jobs-fault-admin' });
    pgAdmin = new pg.Client({ connectionString: adminUrl() });
    pgAdmin.on('error', () => {});
    await pgAdmin.connect();
    prefix = uniquePrefix('fault');
  });

  afterAll(async () => {
    await killAll();
    await pgAdmin?.end().catch(() => {});
    if (admin) await closeRedis(admin);
    await redisServer?.stop();
    await db?.drop();
  });

  function env(extra: Record<string, string> = {}): Record<string, string> {
    return {
      REDIS_URL: redisServer.url,
      DATABASE_URL: db.url,
      QUEUE_PREFIX: prefix,
      LOG_LEVEL: 'info',
      WORKER_CONCURRENCY: '10',
      JOB_ATTEMPTS: '8',
      BUILD_TIMEOUT_MS: '30000',
      AGENT_CONNECT_TIMEOUT_MS: '15000',
      STARTUP_SCRIPT_TIMEOUT_MS: '15000',
      SHUTDOWN_GRACE_MS: '5000',
      SIM_BUILD_MS: '300',
      SIM_AGENT_CONNECT_MS: '100',
      SIM_STARTUP_MS: '100',
      PROVISIONER_CONCURRENCY: '4',
      DASHBOARD_HOST: '127.0.0.1',
      DASHBOARD_PORT: '0',
      ...extra,
    };
  }

  async function seedChats(): Promise<Chat[]> {
    const { userId } = await insertUser(db.pool);
    const template = await insertTemplate(db.pool, { versions: [{}] });
    const chats: Chat[] = [];
    for (let i = 0; i < JOBS; i++) {
      const { workspaceId } = await insertWorkspace(db.pool, {
        ownerId: userId,
        templateId: template.templateId,
      });
      const build = {
        workspaceId,
        templateVersionId: template.activeVersionId,
        status: 'succeeded' as const,
        initiatorId: userId,
      };
      await insertBuild(db.pool, { ...build, transition: 'start', agents: [{ name: 'dev' }] });
      const stop = await insertBuild(db.pool, { ...build, transition: 'stop' });
      const { chatId } = await insertChat(db.pool, { ownerId: userId, workspaceId, buildId: stop.buildId });
      chats.push({ chatId, ownerId: userId, workspaceId });
    }
    return chats;
  }

  /** One round of faults; returns how many connections it cut. */
  async function cutConnections(): Promise<{ backends: number; redisClients: number }> {
    const { rowCount } = await pgAdmin.query(
      'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
      [db.name],
    );
    const normal = (await admin.call('CLIENT', 'KILL', 'TYPE', 'normal')) as number;
    const pubsub = (await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub')) as number;
    return { backends: rowCount ?? 0, redisClients: normal + pubsub };
  }

  /** CLIENT LIST of the private Redis, one line per client (this test's admin connection included). */
  async function redisClients(): Promise<string[]> {
    const list = (await admin.call('CLIENT', 'LIST')) as string;
    return list.trim().split('\n');
  }

  it('no process exits, and every job ends with exactly one result', { timeout: 240_000 }, async () => {
    const chats = await seedChats();
    const worker = new CliProcess('worker', ['worker'], env());
    const provisioner = new CliProcess('provisioner', ['provisioner'], env());
    const dashboard = new CliProcess('dashboard', ['dashboard'], env());
    processes = [worker, provisioner, dashboard];
    const [, , listening] = await Promise.all([
      worker.waitForLog('worker started', (l) => l.msg === 'worker started', START_MS),
      provisioner.waitForLog('provisioner running', (l) => l.msg === 'provisioner daemon running', START_MS),
      dashboard.waitForLog('dashboard listening', (l) => l.msg.startsWith('dashboard listening'), START_MS),
    ]);
    // A few chats followed on the dashboard's event stream throughout, as a browser tab would: its one
    // subscriber connection is killed with the rest, and must catch up from the replay stream.
    const watched = await Promise.all(
      [chats[0]!, chats[Math.floor(JOBS / 2)]!, chats[JOBS - 1]!].map(async (chat) => ({
        chat,
        stream: await openSse(`${String(listening.url)}/chats/${chat.chatId}/events?since=0`),
      })),
    );
    await Promise.all(watched.map((w) => w.stream.comment('replay done', START_MS)));
    const eventsOf = (stream: SseClient) =>
      stream.pending().map((m) => JSON.parse(m.data) as WorkspaceJobEvent);

    // The processes' connections once the worker is up (its blocking connection waits for jobs).
    await expect
      .poll(async () => (await redisClients()).some((l) => l.includes('cmd=bzpopmin')), { timeout: START_MS })
      .toBe(true);
    const connectedClients = (await redisClients()).length;

    const config = loadConfig(env());
    const producer = WorkspaceJobsProducer.fromConfig(config);
    const queue = new Queue(QUEUE_NAME, { connection: admin, prefix });
    queue.on('error', () => {});
    const jobIds = new Map<string, string>();
    try {
      // The stream of jobs: an enqueue cut by a fault is tried again; deduplication by workspace makes a
      // retry of an add that did land return the same job.
      let chaosOver = false;
      const enqueueing = (async () => {
        for (const chat of chats) {
          for (let tries = 0; !jobIds.has(chat.chatId); tries++) {
            try {
              const { jobId } = await producer.startWorkspace(chat);
              jobIds.set(chat.chatId, jobId);
            } catch (error) {
              if (tries >= 20) throw error;
            }
            await new Promise((resolve) => setTimeout(resolve, ENQUEUE_EVERY_MS));
          }
        }
      })();

      const cuts = { rounds: 0, backends: 0, redisClients: 0 };
      const chaosEnd = Date.now() + CHAOS_MS;
      while (Date.now() < chaosEnd && cuts.rounds < CHAOS_ROUNDS) {
        await new Promise((resolve) => setTimeout(resolve, 300 + Math.random() * 500));
        const cut = await cutConnections();
        cuts.rounds++;
        cuts.backends += cut.backends;
        cuts.redisClients += cut.redisClients;
      }
      chaosOver = true;
      await enqueueing;
      expect(chaosOver).toBe(true);
      // The faults reached the processes: backends and clients were there to cut, round after round.
      expect(cuts.rounds).toBeGreaterThanOrEqual(10);
      expect(cuts.backends).toBeGreaterThanOrEqual(cuts.rounds);
      expect(cuts.redisClients).toBeGreaterThanOrEqual(cuts.rounds * 3);
      expect(jobIds.size).toBe(JOBS);

      // Every job finishes (completed, or failed after its attempts): none is stuck. A process that died
      // fails the test at once, with its last output (waitUntil ends on a throw, where waitFor would retry).
      let unfinished = JOBS;
      const drained = vi.waitUntil(
        async () => {
          for (const cli of processes) expect(cli.hasExited, `${cli.label}: ${cli.describe()}`).toBe(false);
          const states = await Promise.all([...jobIds.values()].map((id) => queue.getJobState(id)));
          unfinished = states.filter((s) => s !== 'completed' && s !== 'failed').length;
          return unfinished === 0;
        },
        { timeout: DRAIN_MS, interval: 500 },
      );
      await expect(drained, `jobs unfinished after ${DRAIN_MS} ms`).resolves.toBe(true);
      expect(unfinished, `jobs unfinished after ${DRAIN_MS} ms`).toBe(0);

      // Exactly one result event per job, and it agrees with the job's outcome.
      const outcomes: Record<string, number> = { completed: 0, failed: 0 };
      for (const [chatId, jobId] of jobIds) {
        const results = (await readChatEvents(admin, prefix, chatId, '0')).filter(
          (e) => e.job.id === jobId && e.type === 'result',
        );
        expect(results, `job ${jobId}`).toHaveLength(1);
        const state = await queue.getJobState(jobId);
        // A success or an expected failure result completes the job; only a real failure fails it.
        expect(bullStateOf(results[0]!.data as JobResult), `job ${jobId}`).toBe(state);
        outcomes[state] = (outcomes[state] ?? 0) + 1;
      }
      // Transient faults are retried: jobs succeed (a job may still fail once its attempts are used up).
      expect(outcomes.completed, JSON.stringify({ outcomes, cuts })).toBeGreaterThan(0);

      for (const cli of processes) expect(cli.hasExited, `${cli.label}: ${cli.describe()}`).toBe(false);
      // The worker saw both kinds of fault, and said so in its log.
      const workerLog = worker.logs().map((l) => l.msg);
      expect(workerLog).toContain('Redis connection lost; reconnecting');
      expect(workerLog).toContain('LISTEN connection lost; reconnecting');

      // Each followed chat's stream delivered its job's result, once.
      for (const { chat, stream } of watched) {
        const jobId = jobIds.get(chat.chatId)!;
        await expect
          .poll(() => eventsOf(stream).filter((e) => e.job.id === jobId && e.type === 'result').length, {
            timeout: STOP_MS,
          })
          .toBe(1);
        const seqs = eventsOf(stream).map((e) => e.seq);
        expect(new Set(seqs).size, `chat ${chat.chatId}: a duplicate event`).toBe(seqs.length);
      }
    } finally {
      for (const { stream } of watched) stream.close();
      await producer.close();
      await queue.close();
    }

    // Stopped once every connection is back: BullMQ 6.7's Worker.close() waits for an 'end' event that
    // a blocking connection caught between two reconnect attempts never emits (taskforcesh/bullmq#4656),
    // so a SIGTERM in that instant takes the grace period and the hand-back bound.
    await expect.poll(async () => (await redisClients()).length, { timeout: STOP_MS }).toBe(connectedClients);

    for (const cli of processes) {
      expect(await cli.stop('SIGTERM', STOP_MS), `${cli.label}: ${cli.describe()}`).toEqual({
        code: 0,
        signal: null,
      });
      const output = [...cli.stdout, ...cli.stderr].join('\n');
      for (const mark of CRASH_MARKS) expect(output, cli.label).not.toContain(mark);
    }
  });
});
