// Runs an operator-supplied shell command per build: the bridge to real infrastructure (a Terraform
// wrapper, a script calling a cloud API). The build's details arrive in the environment, the output
// becomes the job's logs, the exit code decides success, `wsjobs-agent: <name>` lines on stdout say
// which agents the build created, and `wsjobs-error-code:` / `wsjobs-quota:` lines classify a failure.
import { spawn, type ChildProcess } from 'node:child_process';
import { pino } from 'pino';
import type { Logger } from '../shared/logger.js';
import { DEFAULT_KILL_GRACE_MS } from '../shared/provisioner-cancel.js';
import type { QuotaUsage } from '../worker/ports.js';
import {
  APPLY_STAGE,
  BuildFailure,
  ERROR_CODE,
  MAX_CREDITS,
  type BuildJob,
  type Executor,
  type ExecutorContext,
  type ExecutorResult,
} from './executor.js';
import { LineSplitter } from './line-splitter.js';

export interface CommandExecutorOptions {
  /**
   * Run with `sh -c`, in its own process group, inheriting the daemon's environment. Background
   * processes it leaves in that group are killed once it exits (start long-lived ones with `setsid`).
   */
  command: string;
  /** The command is killed and the build failed after this long. Default 600000 (Coder's 10 minutes). */
  timeoutMs?: number;
  /** Extra environment for the command, over the daemon's own. */
  env?: Record<string, string>;
  /** Between SIGTERM and SIGKILL when the command is killed. Default DEFAULT_KILL_GRACE_MS (5000). */
  killGraceMs?: number;
  /** Longer output lines are cut. Default 4096 characters. */
  maxLineLength?: number;
  /** workspace_resources.type of the resource a start build creates. Default 'command'. */
  resourceType?: string;
  log?: Logger;
}

/** `wsjobs-agent: <name>` on stdout declares an agent; names as Coder allows them. */
const AGENT_LINE = /^wsjobs-agent:\s*(.*?)\s*$/;
export const AGENT_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62}[A-Za-z0-9])?$/;
/** `wsjobs-error-code: INSUFFICIENT_QUOTA` on stdout gives a failed build its provisioner_jobs.error_code. */
const ERROR_CODE_LINE = /^wsjobs-error-code:\s*(.*?)\s*$/;
/** `wsjobs-quota: credits_consumed=3 budget=2` on stdout: the owner's quota, stored with the error code. */
const QUOTA_LINE = /^wsjobs-quota:\s*(.*?)\s*$/;
const QUOTA_VALUE = /^credits_consumed=(\d+)\s+budget=(\d+)$/;

/** The quota of a `wsjobs-quota:` line's value, or undefined when it is malformed or out of range. */
function parseQuota(value: string): QuotaUsage | undefined {
  const match = QUOTA_VALUE.exec(value);
  if (!match) return undefined;
  const [creditsConsumed, budget] = [Number(match[1]), Number(match[2])];
  return creditsConsumed <= MAX_CREDITS && budget <= MAX_CREDITS ? { creditsConsumed, budget } : undefined;
}

/** After the shell exits, how long to wait for output that is still in the pipes. */
const DRAIN_MS = 1_000;

interface ActiveRun {
  kill(reason: Error): void;
  settled: Promise<unknown>;
}

export function parameterEnvName(name: string): string {
  return `WSJOBS_PARAM_${name.toUpperCase().replace(/[^A-Z0-9]/g, '_')}`;
}

/** The environment a build's command sees on top of the daemon's own. */
export function buildEnvironment(job: BuildJob): Record<string, string> {
  const env: Record<string, string> = {
    WSJOBS_JOB_ID: job.jobId,
    WSJOBS_BUILD_ID: job.buildId,
    WSJOBS_WORKSPACE_ID: job.workspaceId,
    WSJOBS_WORKSPACE_NAME: job.workspaceName,
    WSJOBS_OWNER_ID: job.ownerId,
    WSJOBS_TRANSITION: job.transition,
    WSJOBS_BUILD_NUMBER: String(job.buildNumber),
    WSJOBS_TEMPLATE_VERSION_ID: job.templateVersionId,
    WSJOBS_PARAMETERS: JSON.stringify(job.parameters),
  };
  for (const [name, value] of Object.entries(job.parameters)) env[parameterEnvName(name)] = value;
  return env;
}

export class CommandExecutor implements Executor {
  private readonly timeoutMs: number;
  private readonly killGraceMs: number;
  private readonly maxLineLength: number;
  private readonly resourceType: string;
  private readonly log: Logger;
  private readonly active = new Set<ActiveRun>();

  constructor(private readonly options: CommandExecutorOptions) {
    if (options.command.trim() === '') throw new RangeError('command must not be empty');
    this.timeoutMs = options.timeoutMs ?? 600_000;
    this.killGraceMs = options.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
    this.maxLineLength = options.maxLineLength ?? 4096;
    this.resourceType = options.resourceType ?? 'command';
    this.log = options.log ?? pino({ level: 'silent' });
  }

  run(job: BuildJob, ctx: ExecutorContext): Promise<ExecutorResult> {
    const { signal } = ctx;
    signal.throwIfAborted();
    const stage = APPLY_STAGE[job.transition];
    void ctx.log('info', `Running the build command (timeout ${this.timeoutMs} ms)`, stage);

    const agents: string[] = [];
    let lastStderr = '';
    // The last valid line of each wins; both only matter when the command fails.
    let errorCode: string | undefined;
    let quota: QuotaUsage | undefined;
    const stdout = new LineSplitter(this.maxLineLength, (line) => {
      void ctx.log('info', line, stage);
      const code = ERROR_CODE_LINE.exec(line)?.[1];
      if (code !== undefined) {
        if (ERROR_CODE.test(code)) errorCode = code;
        else void ctx.log('warn', `ignored error code ${JSON.stringify(code)}: A-Z, 0-9 and _ only`, stage);
        return;
      }
      const quotaValue = QUOTA_LINE.exec(line)?.[1];
      if (quotaValue !== undefined) {
        const parsed = parseQuota(quotaValue);
        if (parsed) quota = parsed;
        else {
          void ctx.log(
            'warn',
            `ignored quota ${JSON.stringify(quotaValue)}: expected credits_consumed=<credits> budget=<credits>`,
            stage,
          );
        }
        return;
      }
      const match = AGENT_LINE.exec(line);
      if (!match) return;
      const name = match[1]!;
      if (!AGENT_NAME.test(name)) {
        void ctx.log(
          'warn',
          `ignored agent name ${JSON.stringify(name)}: letters, digits, _ . - only`,
          stage,
        );
      } else if (!agents.includes(name)) {
        agents.push(name);
      }
    });
    const stderr = new LineSplitter(this.maxLineLength, (line) => {
      void ctx.log('warn', line, stage);
      if (line.trim() !== '') lastStderr = line.trim();
    });

    let child: ChildProcess;
    try {
      child = spawn('sh', ['-c', this.options.command], {
        // Its own process group, so a timeout or cancellation also kills what the script started.
        detached: true,
        env: { ...process.env, ...this.options.env, ...buildEnvironment(job) },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
    } catch (error) {
      return Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    child.stdout!.setEncoding('utf8').on('data', (chunk: string) => stdout.push(chunk));
    child.stderr!.setEncoding('utf8').on('data', (chunk: string) => stderr.push(chunk));

    let killed: Error | undefined;
    let killTimer: NodeJS.Timeout | undefined;
    const killGroup = (sig: NodeJS.Signals) => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, sig);
      } catch {
        // Already gone.
      }
    };
    const kill = (reason: Error) => {
      if (killed) return;
      killed = reason;
      killGroup('SIGTERM');
      killTimer = setTimeout(() => killGroup('SIGKILL'), this.killGraceMs);
    };
    const timeout = setTimeout(
      () => kill(new Error(`command timed out after ${this.timeoutMs} ms`)),
      this.timeoutMs,
    );
    const onAbort = () => kill(signal.reason instanceof Error ? signal.reason : new Error('build aborted'));
    signal.addEventListener('abort', onAbort, { once: true });

    const settled = new Promise<ExecutorResult>((resolve, reject) => {
      let finished = false;
      let drainTimer: NodeJS.Timeout | undefined;
      const finish = (code: number | null, sig: NodeJS.Signals | null, error?: Error) => {
        if (finished) return;
        finished = true;
        clearTimeout(timeout);
        clearTimeout(drainTimer);
        signal.removeEventListener('abort', onAbort);
        // Output still arriving from a leftover background process is not this build's any more.
        child.stdout!.destroy();
        child.stderr!.destroy();
        stdout.end();
        stderr.end();
        if (!killed) {
          // The build is over, so are background processes it left in its group: SIGTERM, then SIGKILL.
          killGroup('SIGTERM');
          killTimer = setTimeout(() => killGroup('SIGKILL'), this.killGraceMs);
        }
        // Leftovers get the SIGKILL, but nobody waits for it.
        killTimer?.unref();
        if (killed) return reject(killed);
        if (error) return reject(error);
        if (code === 0) return resolve({ agents, resourceType: this.resourceType });
        // The command's own failure: the code (and quota) it reported classify it.
        const failed = (message: string) =>
          errorCode === undefined ? new Error(message) : new BuildFailure(message, errorCode, quota);
        if (code !== null) {
          return reject(failed(`command exited with code ${code}${lastStderr ? `: ${lastStderr}` : ''}`));
        }
        reject(failed(`command was killed by ${sig ?? 'a signal'}`));
      };
      child.on('error', (error) => finish(null, null, error));
      child.on('exit', (code, sig) => {
        // 'close' waits for the pipes, which a background process of the script may hold open forever.
        drainTimer = setTimeout(() => finish(code, sig), DRAIN_MS);
      });
      child.on('close', (code, sig) => finish(code, sig));
    });

    const run: ActiveRun = { kill, settled: settled.catch(() => {}) };
    this.active.add(run);
    void run.settled.then(() => {
      this.active.delete(run);
      this.log.debug({ jobId: job.jobId, pid: child.pid }, 'build command finished');
    });
    return settled;
  }

  /** Kills every command still running (the daemon has given up on them) and waits for them to exit. */
  async stop(): Promise<void> {
    for (const run of this.active) run.kill(new Error('executor stopped'));
    await Promise.allSettled([...this.active].map((r) => r.settled));
  }
}
