// Runs the real CLI (`node --import tsx src/cli/main.ts …`) as an OS process for tests: collects its stdout
// and stderr lines, parses pino's JSON log lines, waits for a line, and stops it with a signal within a bound.
// Each runs in a process group of its own, and signals go to the whole group: what a command spawned (the
// demo's worker, provisioner and dashboard) goes with it. Every process started here is killed (SIGKILL) by
// killAll() if a test leaves it running.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** One pino log line (JSON) as the CLI writes it, on stderr, when stderr is not a terminal. */
export interface LogLine {
  level: number;
  time: number;
  pid: number;
  msg: string;
  [field: string]: unknown;
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const running = new Set<CliProcess>();

export class CliProcess {
  readonly stdout: string[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<Exit>;
  private exit: Exit | undefined;
  private readonly child: ChildProcess;

  constructor(
    readonly label: string,
    args: string[],
    env: Record<string, string>,
    /** What runs, from the repository root: the CLI, or a test's own entry point. */
    script = 'src/cli/main.ts',
    /** Node's own options before the script (e.g. a benchmark's `--cpu-prof`, which NODE_OPTIONS refuses). */
    nodeArgs: string[] = [],
  ) {
    // A small, explicit environment: the CLI reads its configuration from it, nothing leaks in from vitest.
    this.child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', script, ...args], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    collectLines(this.child.stdout!, this.stdout);
    collectLines(this.child.stderr!, this.stderr);
    this.exited = new Promise<Exit>((resolve) => {
      // 'close', not 'exit': it comes once stdout and stderr have ended, so the output is complete.
      // Whatever the command left running in its group goes now (the pid cannot be reused before this).
      this.child.on('exit', () => this.signalGroup('SIGKILL'));
      this.child.on('close', (code, signal) => {
        this.exit = { code, signal };
        running.delete(this);
        resolve(this.exit);
      });
      this.child.on('error', () => {
        this.exit ??= { code: null, signal: null };
        running.delete(this);
        resolve(this.exit);
      });
    });
    running.add(this);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get hasExited(): boolean {
    return this.exit !== undefined;
  }

  /** stderr lines that are JSON log lines (stdout has only the command's output). */
  logs(): LogLine[] {
    return logLines(this.stderr);
  }

  /**
   * Resolves with the first log line that matches, failing after `timeoutMs` or when the process exits. A
   * loop rather than vi.waitFor: bench/recovery.ts runs this outside vitest, where `vi` cannot be used.
   */
  async waitForLog(what: string, match: (line: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.logs().find(match);
      if (found) return found;
      if (this.hasExited) throw new Error(`${this.label} exited before ${what}: ${this.describe()}`);
      if (Date.now() > deadline)
        throw new Error(`${this.label}: no ${what} within ${timeoutMs} ms: ${this.describe()}`);
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }

  /** Sends `signal` and waits at most `timeoutMs` for the exit; on timeout kills it and throws. */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 15_000): Promise<Exit> {
    this.signal(signal);
    return this.waitForExit(timeoutMs, `of ${signal}`);
  }

  /** Sends `signal` without waiting (e.g. a second signal during a graceful shutdown). */
  signal(signal: NodeJS.Signals): void {
    if (!this.hasExited) this.signalGroup(signal);
  }

  private signalGroup(signal: NodeJS.Signals): void {
    if (this.child.pid === undefined) return;
    try {
      process.kill(-this.child.pid, signal);
    } catch {
      // ESRCH: the group is gone already.
    }
  }

  /** The exit, at most `timeoutMs` from now; then the process is killed and this throws. */
  async waitForExit(timeoutMs: number, since = 'from now'): Promise<Exit> {
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        this.exited,
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            this.signalGroup('SIGKILL');
            reject(
              new Error(`${this.label} did not exit within ${timeoutMs} ms ${since}: ${this.describe()}`),
            );
          }, timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** The last lines of output, for failure messages. */
  describe(lines = 15): string {
    return JSON.stringify({
      exit: this.exit,
      stdout: this.stdout.slice(-lines),
      stderr: this.stderr.slice(-lines),
    });
  }

  kill(): void {
    if (!this.hasExited) this.signalGroup('SIGKILL');
  }
}

/** The lines that are pino JSON log lines. */
export function logLines(output: string[]): LogLine[] {
  const lines: LogLine[] = [];
  for (const line of output) {
    if (!line.startsWith('{')) continue;
    try {
      const parsed = JSON.parse(line) as Partial<LogLine>;
      if (typeof parsed.msg === 'string' && typeof parsed.time === 'number') lines.push(parsed as LogLine);
    } catch {
      // Not a log line.
    }
  }
  return lines;
}

/** Kills (SIGKILL) every CLI process still running and waits for their exits. */
export async function killAll(): Promise<void> {
  const left = [...running];
  for (const process of left) process.kill();
  await Promise.all(left.map((p) => p.exited));
}

/** Runs a CLI command to its end (bounded) and returns its exit and output. */
export async function runCli(
  args: string[],
  env: Record<string, string>,
  timeoutMs = 30_000,
): Promise<{ exit: Exit; stdout: string[]; stderr: string[] }> {
  const cli = new CliProcess(`workspace-jobs ${args.join(' ')}`, args, env);
  const exit = await cli.waitForExit(timeoutMs, 'of its start');
  return { exit, stdout: cli.stdout, stderr: cli.stderr };
}

function collectLines(stream: NodeJS.ReadableStream, into: string[]): void {
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    buffered += chunk;
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    into.push(...lines);
  });
  stream.on('end', () => {
    if (buffered !== '') into.push(buffered);
    buffered = '';
  });
}
