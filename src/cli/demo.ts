// `workspace-jobs demo`: everything a newcomer needs to see it work, in one command. Migrates, seeds a
// fresh set, runs worker + provisioner (simulated, fast) + dashboard as child processes, then starts
// seeded workspaces through the queue exactly as the chat backend would, printing their events.
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Config } from '../shared/config.js';
import { isFailure, type JobResult, type StartWorkspaceSuccess } from '../shared/contract.js';
import type { Logger } from '../shared/logger.js';
import { migrate } from '../shared/migrate.js';
import { createPool } from '../shared/postgres.js';
import { sleep } from '../shared/errors.js';
import { httpUrl } from '../shared/http-url.js';
import { WorkspaceJobsProducer } from '../producer/producer.js';
import { parseFlags } from './args.js';
import { follow, lastEventId } from './enqueue.js';
import { graceMs, IGNORE_SIGINT_ENV, untilSignal } from './lifecycle.js';
import { seed, type SeedResult } from './seed.js';

export const DEMO_HELP = `Usage: workspace-jobs demo [--exit]

Migrates the database, seeds a fresh demo set, starts a worker, a provisioner (simulated builds) and the
dashboard as child processes, then enqueues start jobs (and a stop) for the seeded chats and prints their
events and results. Child logs go to ./demo-logs/. Ctrl-C stops the children, each after its graceful shutdown, and
exits 0 (1 if a child did not exit 0; a second Ctrl-C stops them at once).

  --exit   stop after the scenarios (exit 0 when each ended as expected, 1 otherwise)`;

interface Scenario {
  title: string;
  chatId: string;
  /** A stop instead of a start. */
  stop?: true;
  parameters?: Record<string, string>;
  /** What the result must show for the scenario to count as working. */
  check: (result: JobResult) => boolean;
}

function scenarios(seeded: SeedResult): Scenario[] {
  const { chats } = seeded;
  const started = (r: JobResult): r is StartWorkspaceSuccess => r.kind === 'start-workspace' && r.ok;
  return [
    {
      title: 'Start a stopped workspace',
      chatId: chats.stopped.chatId,
      check: (r) => started(r) && !r.no_build,
    },
    {
      title: 'Start a stopped workspace whose template requires the active version (auto-update)',
      chatId: chats.autoUpdate.chatId,
      check: (r) => started(r) && r.updated_to_active_version === true,
    },
    {
      title: 'Start one whose active version adds a required parameter (manual update required)',
      chatId: chats.manualUpdate.chatId,
      check: (r) => isFailure(r) && r.code === 'manual_update_required',
    },
    {
      title: 'Retry it with --param region=eu-west-1',
      chatId: chats.manualUpdate.chatId,
      parameters: { region: 'eu-west-1' },
      check: (r) => started(r) && r.updated_to_active_version === true,
    },
    {
      title: 'Start a workspace that is already running',
      chatId: chats.running.chatId,
      check: (r) => started(r) && r.no_build === true,
    },
    {
      title: 'Stop it (a stop build; its agent goes off)',
      chatId: chats.running.chatId,
      stop: true,
      check: (r) => r.kind === 'stop-workspace' && r.ok && r.build_id !== undefined,
    },
    {
      title: 'Stop it again (already stopped: no build)',
      chatId: chats.running.chatId,
      stop: true,
      check: (r) => r.kind === 'stop-workspace' && r.ok && r.no_build === true,
    },
  ];
}

/** Fast simulated builds unless the user chose timings. */
const DEMO_SIM_ENV: Record<string, string> = {
  SIM_BUILD_MS: '2000',
  SIM_AGENT_CONNECT_MS: '1000',
  SIM_STARTUP_MS: '1500',
};

/** A Ctrl-C (or SIGTERM) while the demo runs: it stops, the children after their graceful shutdown. */
class Interrupted extends Error {
  override name = 'Interrupted';
}

export async function demoCommand(
  args: string[],
  config: Config,
  log: Logger,
  servicesReady: () => Promise<void>,
): Promise<number> {
  const { values } = parseFlags(args, { exit: { type: 'boolean' } });
  if (values.help) {
    console.log(DEMO_HELP);
    return 0;
  }
  // The children read the same SHUTDOWN_GRACE_MS: they get it in full before being killed.
  const childExitMs = graceMs() + 10_000;
  await servicesReady();
  // From the start, so that a Ctrl-C at any point stops the children, which ignore SIGINT (see spawnChild).
  let stopRequested = false;
  const signalled = untilSignal(async () => void (stopRequested = true), log);
  const interrupted = signalled.then(() => Promise.reject(new Interrupted()));
  interrupted.catch(() => {});

  // Both are short and bounded: a Ctrl-C meanwhile takes effect once they are done.
  const migrated = await migrate(config.databaseUrl);
  console.log(`Database ready (${migrated.applied.length} migration(s) applied).`);
  const pool = createPool(config.databaseUrl, { max: 2, applicationName: 'workspace-jobs-demo', log });
  const seeded = await seed(pool).finally(() => pool.end());
  console.log(`Seeded demo set ${seeded.suffix} for user ${seeded.user.username}.`);
  if (stopRequested) return 0;

  const logDir = resolve('demo-logs');
  mkdirSync(logDir, { recursive: true });
  const children = ['worker', 'provisioner', 'dashboard'].map((command) => spawnChild(command, logDir, log));
  // A second signal exits at once (untilSignal): passed on, it makes the children exit at once too.
  const onExit = () => children.forEach((c) => running(c) && c.kill('SIGTERM'));
  process.once('exit', onExit);
  const crashed = new Promise<never>((_, reject) => {
    for (const child of children) {
      child.once('exit', (code) =>
        reject(new Error(`the ${child.spawnargs.at(-1)} exited early (code ${code}); see ${logDir}`)),
      );
    }
  });
  crashed.catch(() => {});
  const until = <T>(step: Promise<T>) => Promise.race([step, crashed, interrupted]);
  console.log(`Started worker, provisioner and dashboard (logs in ${logDir}).`);

  const producer = WorkspaceJobsProducer.fromConfig(config, log);
  let allGood = true;
  try {
    const dashboardUrl = await until(waitForDashboard(config));
    for (const [index, scenario] of scenarios(seeded).entries()) {
      console.log(`\n=== ${index + 1}. ${scenario.title}`);
      console.log(`    chat ${scenario.chatId}`);
      const since = await until(lastEventId(config, scenario.chatId, log));
      const input = { chatId: scenario.chatId, ownerId: seeded.user.id };
      const enqueued = await until(
        scenario.stop
          ? producer.stopWorkspace(input)
          : producer.startWorkspace({ ...input, parameters: scenario.parameters }),
      );
      const result = await until(follow(producer, scenario.chatId, enqueued.jobId, since, 120_000, false));
      console.log(JSON.stringify(result, null, 2));
      if (!scenario.check(result)) {
        allGood = false;
        console.log('!!! not the expected outcome');
      }
    }
    console.log(
      `\n${allGood ? 'All scenarios ended as expected.' : 'Some scenarios did not end as expected.'}`,
    );
    console.log(`Live chat page: ${dashboardUrl}/  (pick a chat, press Start, watch its events)`);
    console.log(`Bull Board:     ${dashboardUrl}/admin/queues`);
    console.log(
      `More chats to try: npx workspace-jobs seed; npx workspace-jobs enqueue start|stop --chat <id> --wait`,
    );
    if (!values.exit) {
      console.log('Press Ctrl-C to stop.');
      await until(signalled);
    }
  } catch (error) {
    // Ctrl-C is how the demo is meant to end; only what went wrong before it counts.
    if (!(error instanceof Interrupted)) throw error;
  } finally {
    await producer.close();
    const exits = await Promise.all(children.map((c) => stopChild(c, childExitMs)));
    process.removeListener('exit', onExit);
    if (exits.some((code) => code !== 0)) allGood = false;
  }
  return allGood ? 0 : 1;
}

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function spawnChild(command: string, logDir: string, log: Logger): ChildProcess {
  const entry = process.argv[1]!;
  const child = spawn(process.execPath, [...process.execArgv, entry, command], {
    // In the demo's process group, so that nothing outlives a kill of the group; a terminal's Ctrl-C then
    // reaches them too, which they ignore: the demo stops them, once.
    env: { ...DEMO_SIM_ENV, ...process.env, [IGNORE_SIGINT_ENV]: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out = createWriteStream(join(logDir, `${command}.log`), { flags: 'a' });
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  child.once('exit', (code, signal) => {
    log[code === 0 ? 'info' : 'warn']({ child: command, pid: child.pid, code, signal }, `${command} exited`);
  });
  return child;
}

/** SIGTERM, then SIGKILL after `boundMs`; resolves with the exit code (null when killed by a signal). */
async function stopChild(child: ChildProcess, boundMs: number): Promise<number | null> {
  if (running(child)) {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), boundMs);
    await exited;
    clearTimeout(timer);
  }
  return child.exitCode;
}

async function waitForDashboard(config: Config, timeoutMs = 30_000): Promise<string> {
  const url = httpUrl(config.dashboardHost, config.dashboardPort);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) return url;
    } catch {
      // not listening yet
    }
    await sleep(250);
  }
  throw new Error(`the dashboard did not answer at ${url}/healthz within ${timeoutMs} ms`);
}
