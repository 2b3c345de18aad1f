// The `workspace-jobs` command line (docs/design.md §2). Exit codes: 0 success, 1 failure (or a failed
// job result with --wait), 2 bad usage, configuration or input.
import { ConfigError, loadConfig, type Config } from '../shared/config.js';
import { createLogger, flushLogSync, type Logger } from '../shared/logger.js';
import { migrate } from '../shared/migrate.js';
import { createPool } from '../shared/postgres.js';
import { preflight, ServiceUnavailableError, type ServiceNeeds } from '../shared/preflight.js';
import { ValidationError } from '../shared/schemas.js';
import { startTracing } from '../shared/telemetry.js';
import { startDashboard } from '../dashboard/server.js';
import { loadProvisionerConfig, startProvisioner } from '../provisioner/index.js';
import { compactHeapOnFullGc } from '../worker/heap-compaction.js';
import { WorkspaceWorker } from '../worker/worker.js';
import { parseFlags, UsageError } from './args.js';
import { DEMO_HELP, demoCommand } from './demo.js';
import { JOB_KINDS } from '../jobs/registry.js';
import { enqueueCommand } from './enqueue.js';
import { graceMs, setUpProcess, untilSignal } from './lifecycle.js';
import { healthcheckCommand, healthFilePath, startHealthFile } from './health-file.js';
import { formatSeedResult, seed } from './seed.js';
import { logsCommand } from './logs.js';
import { cancelCommand } from './cancel.js';
import { watchCommand } from './watch.js';

const HELP = `Usage: workspace-jobs <command> [options]

Commands:
  migrate        create the database if missing and apply schema migrations (idempotent)
  worker         run a worker process (the jobs of every kind below); stops gracefully on SIGTERM/SIGINT
  provisioner    run a provisioner daemon (executors: sim, command)
  dashboard      HTTP server: live chat page, Bull Board at /admin/queues, SSE events, /metrics, /healthz
  seed           insert a fresh demo data set and print its ids
${JOB_KINDS.map((kind) => `  ${`enqueue ${kind.command}`.padEnd(15)}enqueue a ${kind.name} job: ${kind.summary}`).join('\n')}
                 (as the chat backend would; --wait to follow it)
  watch          print a chat's events (replayed, then live) as JSON lines
  logs           print a build's provisioner log (--follow: live until the build completes)
  cancel         cancel a job (--job ID) or every live job of a chat (--chat ID)
  demo           migrate, seed, run worker + provisioner + dashboard, and start a few workspaces
  healthcheck    exit 0 when a provisioner's health file (PROVISIONER_HEALTH_FILE) is fresh and ok

Run 'workspace-jobs <command> --help' for a command's options. Configuration comes from the environment
(REDIS_URL, DATABASE_URL, QUEUE_PREFIX, ...; see the README).`;

const SIMPLE_HELP: Record<string, string> = {
  migrate:
    'Usage: workspace-jobs migrate\n\nCreates the database named in DATABASE_URL when missing and applies migrations/*.sql.',
  worker:
    'Usage: workspace-jobs worker\n\nRuns WORKER_CONCURRENCY jobs at once. On SIGTERM/SIGINT it stops taking jobs and waits up to\nSHUTDOWN_GRACE_MS (default 30000) for active ones, then hands them back to the queue; a second signal\nexits at once (code 1). With METRICS_PORT set it serves GET /metrics (Prometheus) and GET /healthz (200 when\nRedis, Postgres and the worker are fine, else 503) on METRICS_HOST (default 0.0.0.0).',
  provisioner:
    'Usage: workspace-jobs provisioner\n\nClaims pending provisioner jobs and runs them. PROVISIONER_EXECUTOR=sim (default; SIM_BUILD_MS,\nSIM_FAILURE_RATE, SIM_SEED, SIM_AGENT_NAMES, SIM_AGENT_CONNECT_MS, SIM_STARTUP_MS) or command\n(PROVISIONER_COMMAND, run with sh -c). PROVISIONER_CONCURRENCY jobs at once. With PROVISIONER_HEALTH_FILE\nset it writes its health there every 5 s, for `workspace-jobs healthcheck`.',
  dashboard:
    "Usage: workspace-jobs dashboard\n\nServes on DASHBOARD_HOST:DASHBOARD_PORT (0 = a free port): the live chat page at /, Bull Board at\n/admin/queues, chat events as Server-Sent Events at /chats/:chatId/events (Last-Event-ID resumes),\nthe page's JSON API under /api, /metrics and /healthz. Basic auth with DASHBOARD_USER/DASHBOARD_PASSWORD\n(everything but /healthz); without them it only binds to loopback. DASHBOARD_READ_ONLY=true for a read-only board.",
  seed: 'Usage: workspace-jobs seed\n\nAdds a fresh, independent demo set (new ids, unique names) and prints what it made.',
};

/** OTEL_SERVICE_NAME's default for each command that makes spans; the others never trace. */
const SERVICE_NAMES = new Map([
  ['worker', 'workspace-jobs-worker'],
  ['provisioner', 'workspace-jobs-provisioner'],
  ['dashboard', 'workspace-jobs-dashboard'],
  ['enqueue', 'workspace-jobs-producer'],
  ['demo', 'workspace-jobs-demo'],
]);

/**
 * The daemons log in the background (LoggerOptions.sync): their logging must not block jobs, requests or
 * builds. The other commands are short or quiet (migrate, seed, enqueue, cancel, logs, watch, healthcheck) or
 * only start the daemons as child processes (demo); they keep writing each line at once, so their few lines
 * keep their order with what they print on stdout.
 */
const LOGS_IN_BACKGROUND = new Set(['worker', 'provisioner', 'dashboard']);

/** The services each command uses, checked before it starts (its --help needs none). */
const NEEDS: Record<string, ServiceNeeds> = {
  migrate: { postgres: 'server' },
  seed: { postgres: 'database' },
  worker: { redis: true, lockNodes: true, postgres: 'database' },
  provisioner: { postgres: 'database' },
  dashboard: { redis: true, postgres: 'database' },
  enqueue: { redis: true, postgres: 'database' },
  watch: { redis: true },
  logs: { redis: true, postgres: 'database' },
  cancel: { redis: true },
  // Migrates (creating the database) itself; its worker, provisioner and dashboard check again.
  demo: { redis: true, lockNodes: true, postgres: 'server' },
};

async function runService(log: Logger, start: () => Promise<{ stop: () => Promise<void> }>): Promise<number> {
  // Listening before starting: a signal during start-up stops the service once it is up, rather than
  // killing the process half-way through connecting (Node's default for an unhandled SIGTERM).
  const running: { service?: Promise<{ stop: () => Promise<void> }> } = {};
  const stopped = untilSignal(async () => (await running.service!).stop(), log);
  // A start-up failure is thrown below; the stop that then fails with it too must not be unhandled.
  stopped.catch(() => {});
  running.service = start();
  await running.service;
  await stopped;
  return 0;
}

async function run(argv: string[]): Promise<number> {
  setUpProcess();
  const [command, ...args] = argv;
  if (command === undefined || command === '--help' || command === '-h' || command === 'help') {
    console.log(HELP);
    return command === undefined ? 2 : 0;
  }
  if (SIMPLE_HELP[command]) {
    const { values } = parseFlags(args, {});
    if (values.help) {
      console.log(SIMPLE_HELP[command]);
      return 0;
    }
  }
  if (command === 'demo' && (args.includes('--help') || args.includes('-h'))) {
    console.log(DEMO_HELP);
    return 0;
  }
  const config: Config = loadConfig();
  const log = createLogger(config.logLevel, `workspace-jobs-${command}`, {
    sync: !LOGS_IN_BACKGROUND.has(command),
  });
  try {
    const serviceName = SERVICE_NAMES.get(command);
    const tracing = serviceName === undefined ? undefined : await startTracing({ serviceName, log });
    try {
      return await runCommand(command, args, config, log);
    } finally {
      await tracing?.shutdown();
    }
  } finally {
    // Stopped or failed: every log line out before the command's last word (its one-line error) on stderr.
    flushLogSync(log);
  }
}

async function runCommand(command: string, args: string[], config: Config, log: Logger): Promise<number> {
  const asksForHelp =
    args.includes('--help') || args.includes('-h') || (command === 'enqueue' && !args.length);
  // Called once the command's own settings are read: a bad one is exit 2 even while a service is down.
  const servicesReady = async () => {
    if (!asksForHelp) await preflight(config, NEEDS[command]!, { log });
  };
  switch (command) {
    case 'migrate': {
      await servicesReady();
      const result = await migrate(config.databaseUrl);
      console.log(
        `${result.createdDatabase ? 'created the database; ' : ''}applied ${result.applied.length} migration(s)` +
          (result.applied.length ? `: ${result.applied.join(', ')}` : '') +
          `; ${result.alreadyApplied.length} already applied`,
      );
      return 0;
    }
    case 'seed': {
      await servicesReady();
      const pool = createPool(config.databaseUrl, { max: 2, applicationName: 'workspace-jobs-seed', log });
      try {
        console.log(formatSeedResult(await seed(pool)));
      } finally {
        await pool.end();
      }
      return 0;
    }
    case 'worker': {
      const grace = graceMs();
      await servicesReady();
      return runService(log, async () => {
        compactHeapOnFullGc();
        const worker = await WorkspaceWorker.start(config, log);
        return { stop: () => worker.close(grace) };
      });
    }
    case 'provisioner': {
      const grace = graceMs();
      const provisionerConfig = loadProvisionerConfig(process.env);
      const healthPath = healthFilePath();
      await servicesReady();
      return runService(log, async () => {
        const provisioner = await startProvisioner(config, provisionerConfig, log);
        const health =
          healthPath === undefined
            ? undefined
            : await startHealthFile(healthPath, provisioner.checks, log).catch(async (error: unknown) => {
                await provisioner.stop(grace);
                throw error;
              });
        return {
          // Still written while the provisioner stops (saying so), removed once it has.
          stop: async () => {
            try {
              await provisioner.stop(grace);
            } finally {
              await health?.stop();
            }
          },
        };
      });
    }
    case 'dashboard':
      await servicesReady();
      return runService(log, async () => {
        const dashboard = await startDashboard(config, log);
        return { stop: dashboard.close };
      });
    case 'enqueue':
      return enqueueCommand(args, config, log, servicesReady);
    case 'healthcheck':
      return healthcheckCommand(args);
    case 'watch':
      return watchCommand(args, config, log, servicesReady);
    case 'logs':
      return logsCommand(args, config, log, servicesReady);
    case 'cancel':
      return cancelCommand(args, config, log, servicesReady);
    case 'demo':
      return demoCommand(args, config, log, servicesReady);
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}; run 'workspace-jobs --help'`);
  }
}

/** Every command closes what it opened; should a handle still be open, do not hang on it. */
function exitSoon(code: number): void {
  process.exitCode = code;
  setTimeout(() => {
    console.error('workspace-jobs: a connection was still open 5 s after the command ended; exiting');
    process.exit(code);
  }, 5_000).unref();
}

run(process.argv.slice(2)).then(exitSoon, (error: unknown) => {
  const usage =
    error instanceof UsageError || error instanceof ConfigError || error instanceof ValidationError;
  console.error(`workspace-jobs: ${error instanceof Error ? error.message : String(error)}`);
  // A missing service is said in that one line; its stack would only bury it.
  const expected = usage || error instanceof ServiceUnavailableError;
  if (!expected && process.env.LOG_LEVEL === 'debug' && error instanceof Error) console.error(error.stack);
  exitSoon(usage ? 2 : 1);
});
