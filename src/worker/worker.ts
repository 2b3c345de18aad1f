// A worker process: one BullMQ Worker on queue `workspaces` plus the connections its jobs share (Redis
// for BullMQ, events and the lock; a Postgres pool; one LISTEN connection). Closing is graceful: stop
// taking jobs, let active ones finish within the grace period, then hand the rest back to the queue.
// With METRICS_PORT set it serves /metrics and /healthz (metrics-server.ts) until it has stopped.
import { Queue, Worker } from 'bullmq';
import { EventPublisher } from '../shared/events.js';
import { QUEUE_NAME } from '../shared/contract.js';
import type { Config } from '../shared/config.js';
import { ChatLocks } from '../shared/lock.js';
import { ChatOrder } from '../shared/chat-order.js';
import { promoteThrough } from '../shared/chat-hand-off.js';
import type { Logger } from '../shared/logger.js';
import { createMetrics, type Metrics } from '../shared/metrics.js';
import { PgNotificationHub } from '../shared/notifications.js';
import { createPool, type Pool } from '../shared/postgres.js';
import {
  closeRedis,
  createRedis,
  duplicateSubscriber,
  redactUrl,
  type RedisClient,
} from '../shared/redis.js';
import { withTimeout } from '../shared/errors.js';
import { HealthStateError } from '../shared/health.js';
import { bullmqTelemetry } from '../shared/telemetry.js';
import { traceAttempts } from './attempt-span.js';
import { startMetricsServer, type MetricsServer } from './metrics-server.js';
import { PgWorkspaceStore } from './pg-store.js';
import { QueuePositions } from './queue-positions.js';
import { CancelRequests } from '../shared/cancel-requests.js';
import { CancelListener } from './cancel-listener.js';
import { Admission } from './admission.js';
import { heapCompactedOnFullGc } from './heap-compaction.js';
import {
  createProcessor,
  observeFailedJob,
  publishMissingResult,
  type ProcessorOptions,
} from './processor.js';

/** Stalls (its worker died) a job survives; the next one fails it. */
const MAX_STALLED_COUNT = 3;

/** The default of WORKER_ADMITTED_JOBS, per connection of the worker's pool. */
const ADMITTED_PER_CONNECTION = 4;

/** How long close() waits, after the grace period, for aborted jobs to be handed back. */
const HAND_BACK_MS = 10_000;
/** How long start() waits for a quorum of lock nodes to connect (each is given 1 s, retried within 1 s). */
const LOCK_NODES_START_WAIT_MS = 3_000;
/** How long start() waits for the SUBSCRIBE to the cancel channel. */
const CANCEL_SUBSCRIBE_WAIT_MS = 10_000;

export interface WorkspaceWorkerOptions {
  /** Overrides of the processor's options (tests shorten the lock re-delays, record lock intervals). */
  processor?: Partial<ProcessorOptions>;
  /** The chat lock's TTL (tests shorten it). Default: config.chatLockTtlMs. */
  chatLockTimeoutMs?: number;
  /**
   * Where the worker counts. Default: with METRICS_PORT set, a registry of its own with the queue's job
   * counts and Node's process metrics; without, nothing is counted. A registry passed here is served on
   * METRICS_PORT as it is (its queueCounts are the caller's).
   */
  metrics?: Metrics;
  /** Bound of each /healthz check. Default 3000. */
  healthCheckTimeoutMs?: number;
}

interface Resources {
  redis: RedisClient[];
  pool: Pool;
  hub: PgNotificationHub;
  /** The queue positions of every build waiting here, in one read per interval. */
  queuePositions: QueuePositions;
  /** Reads job states (the chat order's stale heads) and the job counts for the metrics. */
  queue: Queue;
  /** Stays open through the grace period: a job canceled while the worker drains still ends canceled. */
  cancels: CancelListener;
  /** Aborted once the grace period is over: the attempts still running stop and go back to the queue. */
  shutdown: AbortController;
  /** Closed as the worker closes: the jobs not admitted yet go back to the queue at once. */
  admission: Admission;
  server?: MetricsServer;
}

export class WorkspaceWorker {
  /** Set when close() begins. */
  private closing = false;
  private closed: Promise<void> | undefined;

  private constructor(
    readonly worker: Worker,
    private readonly resources: Resources,
    private readonly log: Logger,
    /** What this worker counts, when it counts. */
    readonly metrics: Metrics | undefined,
  ) {}

  /** Where /metrics and /healthz are served (METRICS_PORT set), e.g. http://0.0.0.0:9464. */
  get metricsUrl(): string | undefined {
    return this.resources.server?.url;
  }

  static async start(
    config: Config,
    log: Logger,
    options: WorkspaceWorkerOptions = {},
  ): Promise<WorkspaceWorker> {
    const cluster = config.redisCluster;
    const bullConnection = createRedis(config.redisUrl, {
      blocking: true,
      name: 'workspace-jobs-worker',
      log,
      cluster,
    });
    // Every running job's events, progress, chat order and cancel checks: at concurrency the commands of
    // many jobs meet in one turn of the event loop and share a write (issue 11: socket writes were the
    // worker's largest cost).
    const eventsRedis = createRedis(config.redisUrl, {
      name: 'workspace-jobs-events',
      pipelined: true,
      log,
      cluster,
    });
    // Fail fast: a dead or hung lock node must cost a Redlock vote milliseconds, not a reconnect backoff.
    const lockClients = config.lockRedisUrls.map((url) =>
      createRedis(url, {
        name: 'workspace-jobs-lock',
        failFast: true,
        log,
        cluster: config.lockRedisCluster,
      }),
    );
    const poolSize = Math.min(20, Math.max(4, Math.ceil(config.workerConcurrency / 5)));
    const pool = createPool(config.databaseUrl, {
      // Each running job holds a connection only for single queries, never across a wait.
      max: poolSize,
      applicationName: 'workspace-jobs-worker',
      log,
    });
    const hub = new PgNotificationHub(config.databaseUrl, { log });
    // Cancel broadcasts for the jobs running here (subscriber mode takes a connection of its own).
    const cancelSubscriber = duplicateSubscriber(eventsRedis, 'workspace-jobs-cancel', log);
    const cancels = new CancelListener(
      cancelSubscriber,
      new CancelRequests(eventsRedis, config.queuePrefix),
      config.queuePrefix,
      log,
    );
    const redis = [bullConnection, eventsRedis, cancelSubscriber, ...lockClients];
    try {
      await hub.start();
      await withTimeout(cancels.start(), CANCEL_SUBSCRIBE_WAIT_MS, 'subscribing to cancel requests');
    } catch (error) {
      await hub.stop();
      await Promise.all(redis.map((r) => closeRedis(r)));
      await pool.end();
      throw error;
    }
    const locks = new ChatLocks(lockClients, config.queuePrefix, {
      lockTimeoutMs: options.chatLockTimeoutMs ?? config.chatLockTtlMs,
      log,
    });
    if (!(await locks.whenReachable(LOCK_NODES_START_WAIT_MS))) {
      log.warn(
        { lockNodes: config.lockRedisUrls.map(redactUrl) },
        'too few lock nodes reachable at start-up; jobs wait for the chat lock until they are',
      );
    }

    const queue = new Queue(QUEUE_NAME, { connection: bullConnection, prefix: config.queuePrefix });
    queue.on('error', (err) => log.warn({ err }, 'worker queue error'));
    let metrics = options.metrics;
    if (!metrics && config.metricsPort !== undefined) {
      metrics = createMetrics({ queueCounts: () => queue.getJobCounts(), log });
    }

    // A few queries waiting per connection at most: a job's queries are short, and no wait outlasts the
    // pool's connect timeout (issue 11: 10,000 starts at once through 20 connections did).
    const admission = new Admission({
      limit: config.workerAdmittedJobs ?? ADMITTED_PER_CONNECTION * poolSize,
      onWaiting: (waiting) => metrics?.admissionWaiting.set(waiting),
    });
    // Its events are its own typed code's: the schema is checked where events come in (subscribers) instead.
    const publisher = new EventPublisher(eventsRedis, config.queuePrefix, { log, validate: false });
    const store = new PgWorkspaceStore(pool);
    const queuePositions = new QueuePositions(store, hub, { log });
    const shutdown = new AbortController();
    const processor = createProcessor({
      locks,
      order: new ChatOrder(eventsRedis, config.queuePrefix),
      cancels,
      jobState: (jobId) => queue.getJobState(jobId),
      promote: promoteThrough(queue),
      publisher,
      store,
      waiter: hub,
      queue: queuePositions,
      timeouts: config,
      accessUrl: config.accessUrl,
      log,
      metrics,
      shutdown: shutdown.signal,
      admission,
      ...options.processor,
    });

    // Served before the worker takes jobs: a port that cannot be bound stops the start-up.
    // Filled in once they exist; until then /healthz says the worker is starting.
    const started: { bull?: Worker; worker?: WorkspaceWorker } = {};
    let server: MetricsServer | undefined;
    if (config.metricsPort !== undefined && metrics) {
      try {
        server = await startMetricsServer({
          port: config.metricsPort,
          host: config.metricsHost ?? '0.0.0.0',
          registry: metrics.registry,
          checkTimeoutMs: options.healthCheckTimeoutMs,
          log,
          checks: {
            redis: async () => {
              await Promise.all([bullConnection.ping(), eventsRedis.ping()]);
            },
            postgres: async () => {
              await pool.query('SELECT 1');
            },
            worker: async () => {
              const { bull, worker } = started;
              if (!bull || !worker) throw new HealthStateError('starting');
              if (worker.closing || bull.closing) throw new HealthStateError('closing');
              if (!bull.isRunning()) throw new HealthStateError('stopped');
              return 'running';
            },
          },
        });
      } catch (error) {
        await queue.close().catch(() => {});
        await hub.stop();
        await pool.end();
        await Promise.all(redis.map((r) => closeRedis(r)));
        throw error;
      }
      log.info({ url: server.url }, 'serving /metrics and /healthz');
    }

    const worker = new Worker(QUEUE_NAME, traceAttempts(processor), {
      connection: bullConnection,
      prefix: config.queuePrefix,
      telemetry: bullmqTelemetry(),
      concurrency: config.workerConcurrency,
      // Recovery from a dead worker takes up to lockDuration + 2 × stalledInterval (README, Operations).
      lockDuration: config.jobLockMs,
      stalledInterval: config.stalledIntervalMs,
      // A stall is a worker that died (or froze) under the job, and our jobs are safe to run again: a few
      // deaths are survived; a job that keeps killing its workers fails.
      maxStalledCount: MAX_STALLED_COUNT,
    });
    worker.on('error', (err) => log.error({ err }, 'worker error'));
    worker.on('lockRenewalFailed', (jobIds) => log.warn({ jobIds }, 'could not renew BullMQ job locks'));
    worker.on('stalled', (jobId) => log.warn({ jobId }, 'job stalled; it will be retried'));
    worker.on('failed', (job, error) => {
      if (!job) return;
      observeFailedJob(metrics, job, error);
      publishMissingResult(publisher, job, error).catch((err) => {
        metrics?.eventPublishFailures.inc({ type: 'result' });
        log.warn({ err, jobId: job.id }, 'could not publish the result of a failed job');
      });
    });
    log.info(
      {
        queue: QUEUE_NAME,
        prefix: config.queuePrefix,
        concurrency: config.workerConcurrency,
        admitted: admission.limit,
        heapCompactedOnFullGc: heapCompactedOnFullGc(),
      },
      'worker started',
    );
    started.bull = worker;
    started.worker = new WorkspaceWorker(
      worker,
      { redis, pool, hub, queuePositions, queue, cancels, shutdown, admission, server },
      log,
      metrics,
    );
    return started.worker;
  }

  /**
   * Stops taking jobs and waits up to `graceMs` for active ones; after that their work is aborted and they
   * go back to the queue (without spending an attempt) for another worker. Then closes every connection.
   */
  close(graceMs = 30_000): Promise<void> {
    // Safe to call twice (a signal and a caller's finally): the second call waits for the first.
    this.closed ??= this.shutDown(graceMs);
    return this.closed;
  }

  private async shutDown(graceMs: number): Promise<void> {
    // From here /healthz answers 503 (worker: closing) while /metrics stays up until the jobs are out.
    this.closing = true;
    const closing = this.worker.close();
    this.resources.admission.close();
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), graceMs);
    });
    if ((await Promise.race([closing, graceOver])) === 'timeout') {
      this.log.warn({ graceMs }, 'grace period over; handing active jobs back to the queue');
      this.resources.shutdown.abort('worker shutting down');
      // Bounded, and the timer cleared: a pending timer would keep the process alive after close().
      await withTimeout(closing, HAND_BACK_MS, 'handing the jobs back').catch(() => {});
    }
    clearTimeout(timer);
    await this.resources.server?.close();
    await this.resources.queue.close().catch((err: unknown) => {
      this.log.warn({ err }, "could not close the worker's queue");
    });
    await this.resources.cancels.close();
    await this.resources.queuePositions.close();
    await this.resources.hub.stop();
    await this.resources.pool.end();
    await Promise.all(this.resources.redis.map((r) => closeRedis(r)));
    this.log.info('worker stopped');
  }
}
