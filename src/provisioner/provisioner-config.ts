// The provisioner daemon's settings from the environment (on top of the shared Config: DATABASE_URL,
// LOG_LEVEL). Like the shared settings every variable is optional, and a bad value stops the process at
// start-up with a message naming the variable.
import { ConfigError, DAY_MS, integer, value, type Env } from '../shared/config.js';
import type { Logger } from '../shared/logger.js';
import type { Pool } from '../shared/postgres.js';
import { AGENT_NAME, CommandExecutor } from './command-executor.js';
import { MAX_CREDITS, type Executor } from './executor.js';
import {
  DEFAULT_HEARTBEAT_MS,
  DEFAULT_MAX_RERUNS,
  DEFAULT_STALE_AFTER_MS,
  minStaleAfterMs,
} from './provisioner.js';
import { SimExecutor } from './sim-executor.js';

export interface SimSettings {
  /** SIM_BUILD_MS, default 3000. */
  buildMs: number;
  /** SIM_BUILD_JITTER_MS, default 0. */
  buildJitterMs: number;
  /** SIM_FAILURE_RATE, 0..1, default 0. */
  failureRate: number;
  /** SIM_SEED, a whole number from 0 to 4294967295; unset = not reproducible. */
  seed?: number;
  /** SIM_AGENT_NAMES, comma-separated, default `main`; `none` = builds without agents. */
  agentNames: string[];
  /** SIM_AGENT_CONNECT_MS, default 1000. */
  agentConnectMs: number;
  /** SIM_STARTUP_MS, default 2000. */
  startupMs: number;
  /** SIM_STARTUP_FAILURE_RATE, 0..1, default 0. */
  startupFailureRate: number;
  /** SIM_QUOTA_BUDGET: each owner's quota in credits; unset = no quota. */
  quotaBudget?: number;
  /** SIM_WORKSPACE_COST: credits a started workspace consumes, default 1. */
  workspaceCost: number;
  /** SIM_LOG_LINES: extra output lines per build, spread over its duration, default 0. */
  logLines: number;
}

export interface ProvisionerConfig {
  /** PROVISIONER_EXECUTOR: `sim` (default) or `command`. */
  executor: 'sim' | 'command';
  /** PROVISIONER_COMMAND: the shell command the `command` executor runs; required with it. */
  command?: string;
  /** PROVISIONER_COMMAND_TIMEOUT_MS, default 600000. */
  commandTimeoutMs: number;
  /** PROVISIONER_CONCURRENCY: jobs one daemon runs at once, default 4. */
  concurrency: number;
  /** PROVISIONER_HEARTBEAT_MS: how often a daemon marks its running jobs alive, default 2000. */
  heartbeatMs: number;
  /**
   * PROVISIONER_STALE_AFTER_MS: a running job without a heartbeat this long is taken from its daemon
   * (re-run, or failed), default 10000; at least three heartbeats.
   */
  staleAfterMs: number;
  /** PROVISIONER_MAX_RERUNS: re-runs of a stale start or stop build before it fails, default 2. */
  maxReruns: number;
  sim: SimSettings;
}

function fraction(env: Env, name: string, fallback: number): number {
  const raw = value(env, name);
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!/^(\d+(\.\d*)?|\.\d+)$/.test(raw) || n > 1) {
    throw new ConfigError(`${name} must be a number from 0 to 1, got ${JSON.stringify(raw)}`);
  }
  return n;
}

function agentNames(env: Env): string[] {
  const raw = value(env, 'SIM_AGENT_NAMES');
  if (raw === undefined) return ['main'];
  if (raw.toLowerCase() === 'none') return [];
  const names = raw
    .split(',')
    .map((n) => n.trim())
    .filter(Boolean);
  for (const name of names) {
    if (!AGENT_NAME.test(name)) {
      throw new ConfigError(
        `SIM_AGENT_NAMES may only hold names of letters, digits, _ . - (comma-separated), got ${JSON.stringify(name)}`,
      );
    }
  }
  if (new Set(names).size !== names.length) {
    throw new ConfigError(`SIM_AGENT_NAMES names an agent twice: ${JSON.stringify(raw)}`);
  }
  return names;
}

export function loadProvisionerConfig(env: Env = process.env): ProvisionerConfig {
  const executor = value(env, 'PROVISIONER_EXECUTOR') ?? 'sim';
  if (executor !== 'sim' && executor !== 'command') {
    throw new ConfigError(`PROVISIONER_EXECUTOR must be sim or command, got ${JSON.stringify(executor)}`);
  }
  const command = value(env, 'PROVISIONER_COMMAND');
  if (executor === 'command' && command === undefined) {
    throw new ConfigError('PROVISIONER_COMMAND is required when PROVISIONER_EXECUTOR is command');
  }
  const heartbeatMs = integer(env, 'PROVISIONER_HEARTBEAT_MS', DEFAULT_HEARTBEAT_MS, 100, 60_000)!;
  const staleAfterMs = integer(env, 'PROVISIONER_STALE_AFTER_MS', DEFAULT_STALE_AFTER_MS, 1, DAY_MS)!;
  if (staleAfterMs < minStaleAfterMs(heartbeatMs)) {
    throw new ConfigError(
      `PROVISIONER_STALE_AFTER_MS (${staleAfterMs}) must be at least three heartbeats ` +
        `(3 × PROVISIONER_HEARTBEAT_MS = ${minStaleAfterMs(heartbeatMs)}), or live daemons lose their jobs`,
    );
  }
  return {
    executor,
    command,
    commandTimeoutMs: integer(env, 'PROVISIONER_COMMAND_TIMEOUT_MS', 600_000, 1, DAY_MS)!,
    concurrency: integer(env, 'PROVISIONER_CONCURRENCY', 4, 1, 1_000)!,
    heartbeatMs,
    staleAfterMs,
    maxReruns: integer(env, 'PROVISIONER_MAX_RERUNS', DEFAULT_MAX_RERUNS, 0, 100)!,
    sim: {
      buildMs: integer(env, 'SIM_BUILD_MS', 3_000, 0, DAY_MS)!,
      buildJitterMs: integer(env, 'SIM_BUILD_JITTER_MS', 0, 0, DAY_MS)!,
      failureRate: fraction(env, 'SIM_FAILURE_RATE', 0),
      seed: integer(env, 'SIM_SEED', undefined, 0, 0xffff_ffff),
      agentNames: agentNames(env),
      agentConnectMs: integer(env, 'SIM_AGENT_CONNECT_MS', 1_000, 0, DAY_MS)!,
      startupMs: integer(env, 'SIM_STARTUP_MS', 2_000, 0, DAY_MS)!,
      startupFailureRate: fraction(env, 'SIM_STARTUP_FAILURE_RATE', 0),
      quotaBudget: integer(env, 'SIM_QUOTA_BUDGET', undefined, 0, MAX_CREDITS),
      workspaceCost: integer(env, 'SIM_WORKSPACE_COST', 1, 0, MAX_CREDITS)!,
      logLines: integer(env, 'SIM_LOG_LINES', 0, 0, 1_000_000)!,
    },
  };
}

export interface ExecutorDeps {
  /** The simulator drives its agents through it. */
  pool: Pool;
  log?: Logger;
}

export function createExecutor(config: ProvisionerConfig, deps: ExecutorDeps): Executor {
  if (config.executor === 'command') {
    return new CommandExecutor({
      command: config.command!,
      timeoutMs: config.commandTimeoutMs,
      log: deps.log,
    });
  }
  return new SimExecutor({ pool: deps.pool, log: deps.log, ...config.sim });
}
