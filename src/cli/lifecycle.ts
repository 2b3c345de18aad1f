// Long-running commands stop gracefully on SIGTERM/SIGINT (or when stdout's reader goes away); a second
// signal exits at once.
import { integer, type Env } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';

/** The shutdown grace period: SHUTDOWN_GRACE_MS, default 30 s; a bad value is a ConfigError (exit 2). */
export function graceMs(env: Env = process.env): number {
  // At most what setTimeout can wait: a larger delay fires at once, which would mean no grace at all.
  return integer(env, 'SHUTDOWN_GRACE_MS', 30_000, 0, 2_147_483_647)!;
}

/**
 * Set by the demo for its children: a terminal's Ctrl-C sends SIGINT to the whole process group, and the
 * demo then stops each child with SIGTERM, which would count as a second signal and skip the grace period.
 */
export const IGNORE_SIGINT_ENV = 'WORKSPACE_JOBS_IGNORE_SIGINT';

const ignoresSigint = () => process.env[IGNORE_SIGINT_ENV] === '1';

/** What every command does first: see stdoutClosed and IGNORE_SIGINT_ENV. */
export function setUpProcess(): void {
  void stdoutClosed();
  // A listener keeps Node's default action (to die at once) away, from start-up on.
  if (ignoresSigint()) process.on('SIGINT', () => {});
}

let stdoutGone: Promise<void> | undefined;

/**
 * Resolves once stdout's reader has gone (EPIPE, as in `watch | head -n 3`): nothing more can be printed,
 * so the command may as well stop. Called first thing (setUpProcess), so that this is never an uncaught
 * error (a stack trace and exit 1); any other stdout error still is.
 */
export function stdoutClosed(): Promise<void> {
  stdoutGone ??= new Promise((resolve) => {
    process.stdout.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code !== 'EPIPE') throw error;
      resolve();
    });
  });
  return stdoutGone;
}

/**
 * A terminal's Ctrl-C reaches `npm run demo`'s node process twice: from the terminal (the whole process group
 * gets it) and relayed by npm and tsx, which forward SIGINT to their child. A repeat this soon is that relay,
 * not a person pressing Ctrl-C again.
 */
const RELAYED_SIGNAL_MS = 1000;

/** Resolves once `stop` has finished after the first signal, or after stdout closed. */
export function untilSignal(stop: () => Promise<void>, log: Logger): Promise<void> {
  return new Promise((resolve, reject) => {
    let stopping = false;
    let first: { signal: NodeJS.Signals; at: number } | undefined;
    const begin = (reason: Record<string, string>) => {
      stopping = true;
      log.info(reason, 'stopping');
      stop().then(resolve, reject);
    };
    const onSignal = (signal: NodeJS.Signals) => {
      if (first?.signal === signal && Date.now() - first.at < RELAYED_SIGNAL_MS) {
        log.debug(
          { signal },
          'the same signal again at once (relayed by npm or tsx); still stopping gracefully',
        );
        return;
      }
      first ??= { signal, at: Date.now() };
      if (stopping) {
        log.warn({ signal }, 'second signal; exiting now');
        process.exit(1);
      }
      begin({ signal });
    };
    process.on('SIGTERM', onSignal);
    if (!ignoresSigint()) process.on('SIGINT', onSignal);
    void stdoutClosed().then(() => {
      if (!stopping) begin({ reason: 'stdout closed' });
    });
  });
}
