// Health checks for /healthz (worker and dashboard): every part bounded by a timeout, and only the words
// ok, error, timeout or a state in the answer (the reasons go to the log), since /healthz needs no login.
import { WaitTimeoutError, withTimeout } from './errors.js';
import type { Logger } from './logger.js';

/** A check that fails with this reports its message as its state (e.g. the worker's `closing`). */
export class HealthStateError extends Error {
  override name = 'HealthStateError';
}

/**
 * One part of /healthz. Resolves when healthy, with its state (default `ok`); rejects when not: a
 * HealthStateError's message is reported as the state, anything else as `error`; a check that does not
 * settle within the timeout is `timeout`.
 */
export type HealthCheck = () => Promise<string | void>;

export interface HealthReport {
  ok: boolean;
  body: Record<string, string>;
}

/** How long one check may take before it reports `timeout`. */
export const DEFAULT_CHECK_TIMEOUT_MS = 3_000;

/** Runs every check at once, each bounded by `timeoutMs`. */
export async function runHealthChecks(
  checks: Record<string, HealthCheck>,
  timeoutMs: number,
  log?: Logger,
): Promise<HealthReport> {
  const names = Object.keys(checks);
  const states = await Promise.all(
    names.map(async (name): Promise<[string, boolean]> => {
      try {
        const state = await withTimeout(checks[name]!(), timeoutMs, `health check ${name}`);
        return [state || 'ok', true];
      } catch (error) {
        if (error instanceof HealthStateError) return [error.message, false];
        if (error instanceof WaitTimeoutError) {
          log?.warn({ check: name, timeoutMs }, 'health check timed out');
          return ['timeout', false];
        }
        log?.warn({ err: error, check: name }, 'health check failed');
        return ['error', false];
      }
    }),
  );
  const ok = states.every(([, healthy]) => healthy);
  const body: Record<string, string> = { status: ok ? 'ok' : 'unavailable' };
  names.forEach((name, i) => (body[name] = states[i]![0]));
  return { ok, body };
}
