// The provisioner daemon as the CLI runs it (`workspace-jobs provisioner`). startProvisioner owns its pool
// and LISTEN hub and closes both on stop. Tests that need the parts import them from their own modules.
import { HealthStateError, type HealthCheck } from '../shared/health.js';
import type { Config } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import { PgNotificationHub } from '../shared/notifications.js';
import { createPool } from '../shared/postgres.js';
import { createExecutor, type ProvisionerConfig } from './provisioner-config.js';
import { Provisioner } from './provisioner.js';

export { loadProvisionerConfig } from './provisioner-config.js';

export interface RunningProvisioner {
  /** provisioner_jobs.worker_id of the jobs this daemon claims. */
  id: string;
  /**
   * Stops claiming, gives running jobs `graceMs` (default 30000) to finish, fails the rest with
   * 'provisioner shut down', then closes the hub and the pool. Safe to call more than once.
   */
  stop(graceMs?: number): Promise<void>;
  /** Its health, as a /healthz would report it (the CLI's health file): its own pool, and not stopping. */
  checks: Record<string, HealthCheck>;
}

/** Connects to DATABASE_URL, starts listening for jobs and runs them until stop(). */
export async function startProvisioner(
  config: Config,
  provisionerConfig: ProvisionerConfig,
  log: Logger,
): Promise<RunningProvisioner> {
  // A connection per running job (logs, completion) plus claims, heartbeat, reaper and the simulator.
  const pool = createPool(config.databaseUrl, {
    max: provisionerConfig.concurrency + 4,
    applicationName: 'workspace-jobs-provisioner',
    log,
  });
  const hub = new PgNotificationHub(config.databaseUrl, { log });
  let provisioner: Provisioner;
  try {
    await hub.start();
    const executor = createExecutor(provisionerConfig, { pool, log });
    provisioner = new Provisioner({
      pool,
      hub,
      executor,
      concurrency: provisionerConfig.concurrency,
      heartbeatMs: provisionerConfig.heartbeatMs,
      staleAfterMs: provisionerConfig.staleAfterMs,
      maxReruns: provisionerConfig.maxReruns,
      log,
    });
  } catch (error) {
    // Nothing runs yet: close what is open, whichever step failed.
    await hub.stop();
    await pool.end();
    throw error;
  }
  provisioner.start();
  log.info(
    {
      provisionerId: provisioner.id,
      executor: provisionerConfig.executor,
      concurrency: provisionerConfig.concurrency,
    },
    'provisioner daemon running',
  );

  let stopping: Promise<void> | undefined;
  return {
    id: provisioner.id,
    checks: {
      postgres: async () => void (await pool.query('SELECT 1')),
      provisioner: async () => {
        if (stopping) throw new HealthStateError('stopping');
        return 'running';
      },
    },
    stop(graceMs = 30_000) {
      stopping ??= (async () => {
        try {
          await provisioner.stop({ graceMs });
        } finally {
          await hub.stop();
          await pool.end();
        }
      })();
      return stopping;
    },
  };
}
