// Health of a process without an HTTP server (the provisioner): with PROVISIONER_HEALTH_FILE set, it writes
// the report a /healthz would give to that file every few seconds, and `workspace-jobs healthcheck` (the
// container's health check) reads it. A fresh file saying ok means: the process runs and is not stopping,
// its event loop turns, and its own Postgres pool answers. A stale file means it hangs or died; one that is
// fresh but not ok names the failing part.
import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { ConfigError, value, type Env } from '../shared/config.js';
import { DEFAULT_CHECK_TIMEOUT_MS, runHealthChecks, type HealthCheck } from '../shared/health.js';
import type { Logger } from '../shared/logger.js';
import { parseFlags, parseMs } from './args.js';

/** How often the file is rewritten. */
export const HEALTH_WRITE_MS = 5_000;
/** A file older than this is stale: three writes missed (a check bounded at 3 s cannot explain that). */
export const DEFAULT_MAX_AGE_MS = 3 * HEALTH_WRITE_MS;

const HEALTH_FILE_ENV = 'PROVISIONER_HEALTH_FILE';

export function healthFilePath(env: Env = process.env): string | undefined {
  return value(env, HEALTH_FILE_ENV);
}

/** What the file holds: when it was written, by which process, and runHealthChecks' body. */
interface HealthFileContent {
  at: string;
  pid: number;
  /** `status` (ok or unavailable), then each check's state. */
  health: Record<string, string>;
}

export interface HealthFile {
  /** Stops writing and removes the file: a stopped process is not healthy. */
  stop(): Promise<void>;
}

/** Writes the file now (a path that cannot be written is a ConfigError), then every `intervalMs`. */
export async function startHealthFile(
  path: string,
  checks: Record<string, HealthCheck>,
  log: Logger,
  intervalMs = HEALTH_WRITE_MS,
): Promise<HealthFile> {
  const write = async () => {
    const report = await runHealthChecks(checks, DEFAULT_CHECK_TIMEOUT_MS, log);
    const content: HealthFileContent = {
      at: new Date().toISOString(),
      pid: process.pid,
      health: report.body,
    };
    // Renamed into place, so that a reader never sees half a file.
    const tmp = `${path}.${process.pid}.tmp`;
    await writeFile(tmp, `${JSON.stringify(content)}\n`);
    await rename(tmp, path);
  };
  try {
    await write();
  } catch (error) {
    throw new ConfigError(`${HEALTH_FILE_ENV}: cannot write ${path} (${(error as Error).message})`);
  }
  let writing: Promise<void> | undefined;
  let failing = false;
  const timer = setInterval(() => {
    // A write still running (a check waiting for its timeout) is not doubled.
    writing ??= write()
      .then(
        () => {
          if (failing) log.info({ path }, 'health file written again');
          failing = false;
        },
        (error: unknown) => {
          // Once per outage; the file going stale is what reports it.
          if (!failing) log.warn({ err: error, path }, 'could not write the health file');
          failing = true;
        },
      )
      .finally(() => (writing = undefined));
  }, intervalMs);
  return {
    async stop() {
      clearInterval(timer);
      await writing;
      await rm(path, { force: true });
    },
  };
}

const HEALTHCHECK_HELP = `Usage: workspace-jobs healthcheck [--file PATH] [--max-age MS]

Exits 0 when the health file a provisioner writes (PROVISIONER_HEALTH_FILE, rewritten every ${HEALTH_WRITE_MS / 1000} s) is
fresh and says ok; else 1, with one line saying why. For container health checks; needs no service.

  --file PATH     the health file (default: PROVISIONER_HEALTH_FILE)
  --max-age MS    older than this is stale: the process hangs or died (default ${DEFAULT_MAX_AGE_MS})`;

/** `workspace-jobs healthcheck`. */
export async function healthcheckCommand(args: string[], env: Env = process.env): Promise<number> {
  const { values } = parseFlags(args, { file: { type: 'string' }, 'max-age': { type: 'string' } });
  if (values.help) {
    console.log(HEALTHCHECK_HELP);
    return 0;
  }
  const path = values.file ?? healthFilePath(env);
  if (path === undefined) throw new ConfigError(`--file or ${HEALTH_FILE_ENV} is required`);
  const maxAgeMs = parseMs('--max-age', values['max-age'], DEFAULT_MAX_AGE_MS);
  const verdict = await judge(path, maxAgeMs);
  (verdict.ok ? console.log : console.error)(`workspace-jobs: ${verdict.line}`);
  return verdict.ok ? 0 : 1;
}

async function judge(path: string, maxAgeMs: number): Promise<{ ok: boolean; line: string }> {
  let content: HealthFileContent;
  try {
    content = JSON.parse(await readFile(path, 'utf8')) as HealthFileContent;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      return { ok: false, line: `no health file at ${path}: not running, or not started yet` };
    return { ok: false, line: `cannot read the health file ${path}: ${(error as Error).message}` };
  }
  if (typeof content?.health !== 'object' || content.health === null) {
    return { ok: false, line: `${path} is not a health file` };
  }
  const ageMs = Date.now() - Date.parse(content.at);
  const { status, ...parts } = content.health;
  const states = Object.entries(parts)
    .map(([part, state]) => `${part} ${state}`)
    .join(', ');
  const written = `pid ${content.pid}, written ${Math.round(ageMs / 1000)} s ago`;
  // Negated, so that a file without a valid time (NaN) is stale too.
  if (!(ageMs <= maxAgeMs)) {
    return {
      ok: false,
      line: `stale health file ${path} (${written}, over ${maxAgeMs} ms): hung or stopped`,
    };
  }
  return { ok: status === 'ok', line: `${status}: ${states} (${written})` };
}
