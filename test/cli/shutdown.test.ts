// Graceful shutdown of the three long-running commands as real processes (`node --import tsx
// src/cli/main.ts worker|provisioner|dashboard`) on real Redis and Postgres: SIGTERM makes each exit 0
// with nothing left open; a worker lets an active job finish within SHUTDOWN_GRACE_MS, or hands it back to
// the queue without spending an attempt when the grace period ends first; a second signal exits at once
// with code 1.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { StartWorkspaceSuccess } from '../../src/shared/interfaces.js';
import { TEST_REDIS_URL } from '../helpers/redis.js';
import { WAIT_MS, WorkerHarness } from '../helpers/worker-harness.js';

const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));
/** How long a process may take to start (tsx compiles on the fly) and to exit after the grace period. */
const START_MS = 20_000;
const EXIT_MS = 10_000;
/** What main.ts prints when a command returned but a handle kept the process alive. */
const LEFT_OPEN = 'a connection was still open';

interface LogLine {
  msg: string;
  [field: string]: unknown;
}

/** One CLI process: its output lines, its pino JSON log lines, and its exit. */
class Cli {
  readonly stdout: string[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private done = false;
  private readonly child: ChildProcess;

  constructor(
    readonly command: string,
    env: Record<string, string>,
  ) {
    this.child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', command], {
      cwd: REPO_ROOT,
      // Only what the command needs: nothing leaks in from the test runner's environment.
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    lines(this.child.stdout!, this.stdout);
    lines(this.child.stderr!, this.stderr);
    this.exited = new Promise((resolve) => {
      // 'close' comes after stdout and stderr ended: the output is complete then.
      this.child.on('close', (code, signal) => {
        this.done = true;
        resolve({ code, signal });
      });
    });
  }

  logs(): LogLine[] {
    return this.stdout.flatMap((line) => {
      try {
        const parsed = JSON.parse(line) as Partial<LogLine>;
        return typeof parsed.msg === 'string' ? [parsed as LogLine] : [];
      } catch {
        return [];
      }
    });
  }

  async waitForLog(match: (line: LogLine) => boolean, what: string, timeoutMs = START_MS): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.logs().find(match);
      if (found) return found;
      if (this.done) throw new Error(`${this.command} exited before ${what}: ${this.describe()}`);
      if (Date.now() > deadline)
        throw new Error(`${this.command}: no ${what} in ${timeoutMs} ms: ${this.describe()}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  signal(signal: NodeJS.Signals): void {
    this.child.kill(signal);
  }

  /** The exit, at most `timeoutMs` from now; then the process is killed and the test fails. */
  async exit(timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            this.kill();
            reject(new Error(`${this.command} did not exit within ${timeoutMs} ms: ${this.describe()}`));
          }, timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill(): void {
    if (!this.done) this.child.kill('SIGKILL');
  }

  describe(): string {
    return JSON.stringify({ stdout: this.stdout.slice(-12), stderr: this.stderr.slice(-12) });
  }
}

function lines(stream: NodeJS.ReadableStream, into: string[]): void {
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const parts = (rest + chunk).split('\n');
    rest = parts.pop()!;
    into.push(...parts);
  });
  stream.on('end', () => {
    if (rest) into.push(rest);
  });
}

describe('graceful shutdown of the long-running commands', () => {
  let h: WorkerHarness;
  const processes: Cli[] = [];

  beforeEach(async () => {
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    // A test that failed half-way leaves no process behind.
    for (const cli of processes.splice(0)) {
      cli.kill();
      await cli.exit(EXIT_MS).catch(() => {});
    }
    await h.close();
  });

  function run(command: string, env: Record<string, string> = {}): Cli {
    const cli = new Cli(command, {
      REDIS_URL: TEST_REDIS_URL,
      DATABASE_URL: h.db.url,
      QUEUE_PREFIX: h.prefix,
      LOG_LEVEL: 'info',
      WORKER_CONCURRENCY: '5',
      BUILD_TIMEOUT_MS: '60000',
      AGENT_CONNECT_TIMEOUT_MS: '10000',
      STARTUP_SCRIPT_TIMEOUT_MS: '10000',
      ...env,
    });
    processes.push(cli);
    return cli;
  }

  /** A worker process with its metrics server on an ephemeral loopback port, once it takes jobs. */
  async function startWorker(graceMs: number): Promise<Cli> {
    const worker = run('worker', {
      SHUTDOWN_GRACE_MS: String(graceMs),
      METRICS_PORT: '0',
      METRICS_HOST: '127.0.0.1',
    });
    await worker.waitForLog((l) => l.msg === 'worker started', 'worker started');
    return worker;
  }

  /** A start job of a stopped workspace, active in the worker and waiting for its build (held pending). */
  async function activeJob() {
    const ws = await h.seedStoppedWorkspace();
    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const queued = await h.waitForEvent(ws.chatId, 'build_queued');
    expect(await h.queue.getJobState(jobId)).toBe('active');
    return { ws, jobId, buildId: queued.data?.build_id as string };
  }

  function expectCleanExit(cli: Cli): void {
    expect(cli.stderr.join('\n')).not.toContain(LEFT_OPEN);
  }

  describe('idle, on SIGTERM', () => {
    it('worker: serves /healthz while running, then exits 0 with nothing left open', async () => {
      const worker = await startWorker(30_000);
      const serving = await worker.waitForLog(
        (l) => l.msg === 'serving /metrics and /healthz',
        'metrics url',
      );
      const health = await fetch(`${String(serving.url)}/healthz`, { signal: AbortSignal.timeout(5_000) });
      expect(health.status).toBe(200);

      worker.signal('SIGTERM');
      expect(await worker.exit(EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(worker);
      expect(worker.logs().map((l) => l.msg)).toContain('worker stopped');
      expect(await h.queue.getWorkers()).toEqual([]);
    });

    it('provisioner: exits 0 with nothing left open', async () => {
      const provisioner = run('provisioner', { SHUTDOWN_GRACE_MS: '30000' });
      await provisioner.waitForLog((l) => l.msg === 'provisioner daemon running', 'provisioner running');
      provisioner.signal('SIGTERM');
      expect(await provisioner.exit(EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(provisioner);
    });

    it('dashboard: exits 0 with nothing left open', async () => {
      const dashboard = run('dashboard', { DASHBOARD_PORT: '0', DASHBOARD_HOST: '127.0.0.1' });
      await dashboard.waitForLog((l) => l.msg.startsWith('dashboard listening'), 'dashboard listening');
      dashboard.signal('SIGTERM');
      expect(await dashboard.exit(EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(dashboard);
    });
  });

  describe('a worker with an active job, on SIGTERM', () => {
    it('lets a job that finishes within the grace period complete, then exits 0', async () => {
      const worker = await startWorker(WAIT_MS * 2);
      const { jobId, buildId } = await activeJob();

      worker.signal('SIGTERM');
      await worker.waitForLog((l) => l.msg === 'stopping', 'stopping');
      // The build finishes while the worker is shutting down: the job completes on this worker.
      h.provisioner.resume();
      expect(await worker.exit(WAIT_MS + EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(worker);

      const done = await h.waitForState(jobId, ['completed']);
      expect(done.attemptsMade).toBe(1);
      expect(done.returnvalue).toMatchObject({ started: true, build_id: buildId });
      expect(worker.logs().map((l) => l.msg)).not.toContain(
        'grace period over; handing active jobs back to the queue',
      );
    });

    it('hands a job still running when the grace period ends back to the queue, exits 0, and another worker completes it', async () => {
      const graceMs = 500;
      const worker = await startWorker(graceMs);
      const { ws, jobId, buildId } = await activeJob();

      worker.signal('SIGTERM');
      expect(await worker.exit(graceMs + EXIT_MS)).toEqual({ code: 0, signal: null });
      expectCleanExit(worker);
      expect(worker.logs().map((l) => l.msg)).toContain(
        'grace period over; handing active jobs back to the queue',
      );

      // Back in the queue, no attempt spent, no result published.
      const handedBack = await h.waitForState(jobId, ['delayed', 'waiting']);
      expect(handedBack.attemptsMade).toBe(0);
      const events = await h.jobEvents(ws.chatId, jobId);
      expect(events.at(-1)).toMatchObject({ stage: 'retrying' });
      expect(events.filter((e) => e.type === 'result')).toEqual([]);

      // Another worker takes it over, waits for the build the first one made, and completes it.
      await h.startWorker();
      await h.waitForEvent(ws.chatId, 'waiting_for_existing_build');
      h.provisioner.resume();
      const result = await h.producer.waitForResult(jobId, { timeoutMs: WAIT_MS });
      expect((result as StartWorkspaceSuccess).build_id).toBe(buildId);
      const done = await h.waitForState(jobId, ['completed']);
      expect(done.attemptsMade).toBe(1);
      expect((await h.newStartBuilds()).map((b) => b.id)).toEqual([buildId]);
    });

    it('exits at once with code 1 on a second signal during the grace period', async () => {
      const worker = await startWorker(120_000);
      await activeJob();

      worker.signal('SIGTERM');
      await worker.waitForLog((l) => l.msg === 'stopping', 'stopping');
      worker.signal('SIGINT');
      // Far sooner than the 2-minute grace period.
      expect(await worker.exit(EXIT_MS)).toEqual({ code: 1, signal: null });
      expect(worker.logs().map((l) => l.msg)).toContain('second signal; exiting now');
    });
  });
});
