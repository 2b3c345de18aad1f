// Prometheus metrics (prom-client). One registry per process; each process serves it on /metrics (the
// worker on METRICS_PORT, the dashboard on its own port). Metric names are part of the operations
// contract: change them only with a note in the README.
import { withTimeout } from './errors.js';
import type { Logger } from './logger.js';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

export interface Metrics {
  registry: Registry;
  /**
   * Jobs that ended, by job name, outcome (`ok` or the failure code) and the outcome's kind: `ok`,
   * `expected` (a failure result that answers the request) or `failure` (ours to fix; alert on it).
   */
  jobsFinished: Counter<'name' | 'outcome' | 'kind'>;
  /** Seconds from a job's first attempt starting to its result. */
  jobDuration: Histogram<'name' | 'outcome' | 'kind'>;
  /** Attempts that failed and will be retried, by job name. */
  jobRetries: Counter<'name'>;
  /** Seconds a job waited for its chat lock (from its first busy try to acquiring it). */
  lockWait: Histogram;
  /** Times a job found its chat lock busy and was re-delayed. */
  lockBusy: Counter;
  /** Chat locks lost while held (the attempt is aborted and retried). */
  locksLost: Counter;
  /** Enqueues that joined an existing job instead of adding one, by job name. */
  deduplicatedEnqueues: Counter<'name'>;
  /** Enqueues that added a job, by job name. */
  enqueued: Counter<'name'>;
  /** Start builds created (including a create's first build). */
  buildsStarted: Counter<'transition'>;
  /** Starts that moved a workspace to the template's active version, by reason. */
  autoUpdates: Counter<'reason'>;
  /** Events that could not be published, by type. */
  eventPublishFailures: Counter<'type'>;
  /** BullMQ job counts of queue `workspaces`, by state; refreshed on each scrape. */
  queueJobs: Gauge<'state'>;
  /** Jobs of this worker waiting for a slot before they start (WORKER_ADMITTED_JOBS). */
  admissionWaiting: Gauge;
}

export interface MetricsOptions {
  /** Include Node's process metrics (CPU, memory, event loop lag). Default true. */
  defaultMetrics?: boolean;
  /**
   * Called on each scrape to refresh `queueJobs`; e.g. `() => queue.getJobCounts()`. Bounded by
   * QUEUE_COUNTS_TIMEOUT_MS; when it fails the gauge is emptied (no numbers rather than stale ones) and the
   * rest of the scrape still goes out.
   */
  queueCounts?: () => Promise<Record<string, number>>;
  /** Where a failed queue count is reported. */
  log?: Logger;
}

export const QUEUE_COUNTS_TIMEOUT_MS = 5_000;

export function createMetrics(options: MetricsOptions = {}): Metrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry, prefix: 'wsjobs_' });
  const registers = [registry];
  const { queueCounts, log } = options;
  return {
    registry,
    jobsFinished: new Counter({
      name: 'wsjobs_jobs_finished_total',
      help: 'Jobs that ended, by job name, outcome (ok or the failure code) and kind (ok, expected, failure)',
      labelNames: ['name', 'outcome', 'kind'] as const,
      registers,
    }),
    jobDuration: new Histogram({
      name: 'wsjobs_job_duration_seconds',
      help: "Seconds from a job's first attempt starting to its result",
      labelNames: ['name', 'outcome', 'kind'] as const,
      buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200],
      registers,
    }),
    jobRetries: new Counter({
      name: 'wsjobs_job_retries_total',
      help: 'Attempts that failed and will be retried, by job name',
      labelNames: ['name'] as const,
      registers,
    }),
    lockWait: new Histogram({
      name: 'wsjobs_lock_wait_seconds',
      help: 'Seconds a job waited for its chat lock, from its first busy try to acquiring it',
      buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200],
      registers,
    }),
    lockBusy: new Counter({
      name: 'wsjobs_lock_busy_total',
      help: 'Times a job found its chat lock busy and was re-delayed',
      registers,
    }),
    locksLost: new Counter({
      name: 'wsjobs_locks_lost_total',
      help: 'Chat locks lost while held; the attempt is aborted and retried',
      registers,
    }),
    deduplicatedEnqueues: new Counter({
      name: 'wsjobs_deduplicated_enqueues_total',
      help: 'Enqueues that joined an existing job instead of adding one, by job name',
      labelNames: ['name'] as const,
      registers,
    }),
    enqueued: new Counter({
      name: 'wsjobs_enqueued_total',
      help: 'Enqueues that added a job, by job name',
      labelNames: ['name'] as const,
      registers,
    }),
    buildsStarted: new Counter({
      name: 'wsjobs_builds_started_total',
      help: "Workspace builds created by jobs, by transition (a start, a stop, or a create's first build)",
      labelNames: ['transition'] as const,
      registers,
    }),
    autoUpdates: new Counter({
      name: 'wsjobs_auto_updates_total',
      help: "Starts that moved a workspace to the template's active version, by reason",
      labelNames: ['reason'] as const,
      registers,
    }),
    eventPublishFailures: new Counter({
      name: 'wsjobs_event_publish_failures_total',
      help: 'Events that could not be published, by type (progress or result)',
      labelNames: ['type'] as const,
      registers,
    }),
    admissionWaiting: new Gauge({
      name: 'wsjobs_admission_waiting_jobs',
      help: 'Jobs of this worker waiting for a slot before they start (WORKER_ADMITTED_JOBS)',
      registers,
    }),
    queueJobs: new Gauge({
      name: 'wsjobs_queue_jobs',
      help: 'BullMQ job counts of queue workspaces, by state',
      labelNames: ['state'] as const,
      registers,
      async collect() {
        if (!queueCounts) return;
        try {
          const counts = await withTimeout(
            queueCounts(),
            QUEUE_COUNTS_TIMEOUT_MS,
            'reading the queue job counts',
          );
          for (const [state, count] of Object.entries(counts)) this.set({ state }, count);
        } catch (err) {
          log?.warn({ err }, 'could not read the queue job counts for /metrics');
          this.reset();
        }
      },
    }),
  };
}
