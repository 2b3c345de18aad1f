// A worker process: one BullMQ Worker on queue `workspaces` plus the connections its jobs share (Redis
// for BullMQ, events and the lock; a Postgres pool; one LISTEN connection). Closing is graceful: stop
// taking jobs, let active ones finish within the grace period, then hand the rest back to the queue.
import { Worker } from 'bullmq';
import { EventPublisher } from '../shared/events.js';
import { QUEUE_NAME, type Config } from '../shared/interfaces.js';
import { ChatLocks } from '../shared/lock.js';
import type { Logger } from '../shared/logger.js';
import { PgNotificationHub } from '../shared/notifications.js';
import { createPool, type Pool } from '../shared/postgres.js';
import { closeRedis, createRedis, type Redis } from '../shared/redis.js';
import { PgWorkspaceStore } from './pg-store.js';
import { createProcessor, publishMissingResult, type ProcessorOptions } from './processor.js';

export interface WorkspaceWorkerOptions {
  /** Overrides of the processor's options (tests shorten the lock re-delays, record lock intervals). */
  processor?: Partial<ProcessorOptions>;
  /** See PgNotificationHubOptions.safetyRecheckMs. Default 10000. */
  safetyRecheckMs?: number;
  /** BullMQ's job lock; a dead worker's jobs are recovered after about twice this. Default 30000. */
  lockDurationMs?: number;
  /** See BullMQ's stalledInterval. Default 30000. */
  stalledIntervalMs?: number;
}

export class WorkspaceWorker {
  private constructor(
    readonly worker: Worker,
    private readonly resources: { redis: Redis[]; pool: Pool; hub: PgNotificationHub },
    private readonly log: Logger,
  ) {}

  static async start(
    config: Config,
    log: Logger,
    options: WorkspaceWorkerOptions = {},
  ): Promise<WorkspaceWorker> {
    const bullConnection = createRedis(config.redisUrl, { blocking: true, name: 'workspace-jobs-worker' });
    const eventsRedis = createRedis(config.redisUrl, { name: 'workspace-jobs-events' });
    const lockClients = config.lockRedisUrls.map((url) => createRedis(url, { name: 'workspace-jobs-lock' }));
    const pool = createPool(config.databaseUrl, {
      // Each running job holds a connection only for single queries, never across a wait.
      max: Math.min(20, Math.max(4, Math.ceil(config.workerConcurrency / 5))),
      applicationName: 'workspace-jobs-worker',
    });
    const hub = new PgNotificationHub(config.databaseUrl, { safetyRecheckMs: options.safetyRecheckMs, log });
    const redis = [bullConnection, eventsRedis, ...lockClients];
    try {
      await hub.start();
    } catch (error) {
      await Promise.all(redis.map((r) => closeRedis(r)));
      await pool.end();
      throw error;
    }

    const publisher = new EventPublisher(eventsRedis, config.queuePrefix, { log });
    const processor = createProcessor({
      locks: new ChatLocks(lockClients, config.queuePrefix, { log }),
      publisher,
      store: new PgWorkspaceStore(pool),
      waiter: hub,
      timeouts: config,
      accessUrl: config.accessUrl,
      log,
      ...options.processor,
    });
    const worker = new Worker(QUEUE_NAME, processor, {
      connection: bullConnection,
      prefix: config.queuePrefix,
      concurrency: config.workerConcurrency,
      lockDuration: options.lockDurationMs ?? 30_000,
      stalledInterval: options.stalledIntervalMs ?? 30_000,
      maxStalledCount: 1,
    });
    worker.on('error', (err) => log.error({ err }, 'worker error'));
    worker.on('lockRenewalFailed', (jobIds) => log.warn({ jobIds }, 'could not renew BullMQ job locks'));
    worker.on('stalled', (jobId) => log.warn({ jobId }, 'job stalled; it will be retried'));
    worker.on('failed', (job, error) => {
      if (!job) return;
      publishMissingResult(publisher, job, error).catch((err) =>
        log.warn({ err, jobId: job.id }, 'could not publish the result of a failed job'),
      );
    });
    log.info(
      { queue: QUEUE_NAME, prefix: config.queuePrefix, concurrency: config.workerConcurrency },
      'worker started',
    );
    return new WorkspaceWorker(worker, { redis, pool, hub }, log);
  }

  /**
   * Stops taking jobs and waits up to `graceMs` for active ones; after that their work is aborted and they
   * go back to the queue (without spending an attempt) for another worker. Then closes every connection.
   */
  async close(graceMs = 30_000): Promise<void> {
    const closing = this.worker.close();
    let timer: NodeJS.Timeout | undefined;
    const graceOver = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), graceMs);
    });
    if ((await Promise.race([closing, graceOver])) === 'timeout') {
      this.log.warn({ graceMs }, 'grace period over; handing active jobs back to the queue');
      this.worker.cancelAllJobs('worker shutting down');
      await Promise.race([closing, new Promise((resolve) => setTimeout(resolve, 10_000))]);
    }
    clearTimeout(timer);
    await this.resources.hub.stop();
    await this.resources.pool.end();
    await Promise.all(this.resources.redis.map((r) => closeRedis(r)));
    this.log.info('worker stopped');
  }
}
