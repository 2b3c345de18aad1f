// Long-running commands stop gracefully on SIGTERM/SIGINT; a second signal exits at once.
import type { Logger } from '../shared/logger.js';

export const DEFAULT_GRACE_MS = 30_000;

/** The shutdown grace period: SHUTDOWN_GRACE_MS, default 30 s. */
export function graceMs(env = process.env): number {
  const raw = env.SHUTDOWN_GRACE_MS;
  if (raw === undefined || raw === '') return DEFAULT_GRACE_MS;
  const n = Number(raw);
  if (!/^\d+$/.test(raw))
    throw new Error(`SHUTDOWN_GRACE_MS must be a whole number, got ${JSON.stringify(raw)}`);
  return n;
}

/** Resolves once `stop` has finished after the first signal. */
export function untilSignal(stop: () => Promise<void>, log: Logger): Promise<void> {
  return new Promise((resolve, reject) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) {
        log.warn({ signal }, 'second signal; exiting now');
        process.exit(1);
      }
      stopping = true;
      log.info({ signal }, 'stopping');
      stop().then(resolve, reject);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
