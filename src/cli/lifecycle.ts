// Long-running commands stop gracefully on SIGTERM/SIGINT; a second signal exits at once.
import { integer, type Env } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';

/** The shutdown grace period: SHUTDOWN_GRACE_MS, default 30 s; a bad value is a ConfigError (exit 2). */
export function graceMs(env: Env = process.env): number {
  // At most what setTimeout can wait: a larger delay fires at once, which would mean no grace at all.
  return integer(env, 'SHUTDOWN_GRACE_MS', 30_000, 0, 2_147_483_647)!;
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
