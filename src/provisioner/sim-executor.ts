// The default executor: pretends to build a workspace, then plays the workspace agent's part (connect,
// run startup scripts, report ready), so the whole start-workspace flow can be run and demonstrated
// without real infrastructure. Durations and failure rates come from the options; with a seed the
// sequence of outcomes is reproducible.
import { pino } from 'pino';
import { INSUFFICIENT_QUOTA } from '../shared/contract.js';
import { sleep } from '../shared/errors.js';
import type { Logger } from '../shared/logger.js';
import type { Pool } from '../shared/postgres.js';
import {
  APPLY_STAGE,
  BuildFailure,
  MAX_CREDITS,
  type BuildJob,
  type CommittedAgent,
  type Executor,
  type ExecutorContext,
  type ExecutorResult,
} from './executor.js';
import { mulberry32 } from './random.js';

export interface SimExecutorOptions {
  /** Drives the simulated agents and stops the agents of stopped workspaces. */
  pool: Pool;
  /** How long a build takes. Default 3000. */
  buildMs?: number;
  /** A random extra of up to this much per build. Default 0. */
  buildJitterMs?: number;
  /** Share of builds that fail with 'simulated build failure', 0..1. Default 0. */
  failureRate?: number;
  /**
   * Seeds the random draws (duration, failure, startup failure), one fixed set per build in the order
   * builds start; the same seed replays the same outcomes. Unseeded: Math.random.
   */
  seed?: number;
  /** Agents every start build creates, in display order. Default ['main']; [] = no agents. */
  agentNames?: string[];
  /** From the build's completion until an agent connects (lifecycle 'starting'). Default 1000. */
  agentConnectMs?: number;
  /** How long an agent's startup scripts run (then 'ready'). Default 2000. */
  startupMs?: number;
  /** Share of agents whose startup scripts fail (lifecycle 'start_error'), 0..1. Default 0. */
  startupFailureRate?: number;
  /**
   * Each owner's quota in credits, as Coder's group quota: a start build whose workspace would take the owner
   * past it fails with error code INSUFFICIENT_QUOTA. Unset = no quota.
   */
  quotaBudget?: number;
  /** Credits a started workspace consumes of its owner's quota (Coder's daily_cost). Default 1. */
  workspaceCost?: number;
  /** workspace_resources.type of the simulated resource. Default 'sim_container'. */
  resourceType?: string;
  /**
   * Extra output lines per build (`Simulated output line <n> of <N>`), written evenly over the build's
   * duration in the stage the build is in; a build that succeeds has written all of them. For load on the
   * log path (live logs, build_log events). Default 0.
   */
  logLines?: number;
  log?: Logger;
}

// The simulated agent's two reports (connected and starting; ready or failed). Each notifies
// `workspace_agent_changed` (migrations/0001), and a transaction that sent a NOTIFY holds Postgres's notify
// lock until its commit is flushed, so every notifying commit of the server waits for the one before it.
// The first commits without waiting for its WAL flush (synchronous_commit off for its own transaction, as
// the build log batches in job-log-writer.ts): a crash that loses it leaves the agent `created`, as an agent
// that never connected, and the flushed second report makes it durable by WAL order. The second stays
// flushed: the worker tells the chat the agent is ready (or failed) on it, and nothing writes after it, so a
// lost one would leave a workspace every later start waits on for an agent that never reports again.
// Guards: an agent a stop build already switched off stays off.
const AGENT_CONNECTED = `
  WITH unflushed AS (SELECT set_config('synchronous_commit', 'off', true))
  UPDATE workspace_agents
  SET first_connected_at = coalesce(first_connected_at, now()), last_connected_at = now(),
      lifecycle_state = 'starting', started_at = now(), updated_at = now()
  FROM unflushed
  WHERE id = $1 AND lifecycle_state = 'created' AND disconnected_at IS NULL`;
const AGENT_STARTED = `
  UPDATE workspace_agents
  SET lifecycle_state = $2, ready_at = now(), last_connected_at = now(), updated_at = now()
  WHERE id = $1 AND lifecycle_state = 'starting' AND disconnected_at IS NULL`;

/** How often the simulated output catches up with its schedule. */
const OUTPUT_TICK_MS = 20;

export const SIMULATED_BUILD_FAILURE = 'simulated build failure';
/** Coder's error for a build refused by its quota commit. */
export const INSUFFICIENT_QUOTA_ERROR = 'insufficient quota';

interface Plan {
  durationMs: number;
  fails: boolean;
  startupFails: boolean[];
}

export class SimExecutor implements Executor {
  private readonly pool: Pool;
  private readonly buildMs: number;
  private readonly buildJitterMs: number;
  private readonly failureRate: number;
  private readonly agentNames: string[];
  private readonly agentConnectMs: number;
  private readonly startupMs: number;
  private readonly startupFailureRate: number;
  private readonly quotaBudget: number | undefined;
  private readonly workspaceCost: number;
  private readonly resourceType: string;
  private readonly logLines: number;
  private readonly random: () => number;
  private readonly log: Logger;
  /** Startup outcomes drawn by run(), taken by afterCommit() (the daemon calls it for every resolved run). */
  private readonly startups = new Map<string, boolean[]>();
  /** One controller per workspace with simulated agents; a stop build or stop() aborts it. */
  private readonly agentRuns = new Map<string, AbortController>();
  private readonly background = new Set<Promise<void>>();
  private stopped = false;

  constructor(options: SimExecutorOptions) {
    this.pool = options.pool;
    this.buildMs = options.buildMs ?? 3_000;
    this.buildJitterMs = options.buildJitterMs ?? 0;
    this.failureRate = options.failureRate ?? 0;
    this.agentNames = options.agentNames ?? ['main'];
    this.agentConnectMs = options.agentConnectMs ?? 1_000;
    this.startupMs = options.startupMs ?? 2_000;
    this.startupFailureRate = options.startupFailureRate ?? 0;
    this.quotaBudget = options.quotaBudget;
    this.workspaceCost = options.workspaceCost ?? 1;
    this.resourceType = options.resourceType ?? 'sim_container';
    this.logLines = options.logLines ?? 0;
    if (!Number.isInteger(this.logLines) || this.logLines < 0)
      throw new RangeError(`logLines must be a whole number ≥ 0, got ${this.logLines}`);
    this.random = options.seed === undefined ? Math.random : mulberry32(options.seed);
    this.log = options.log ?? pino({ level: 'silent' });
    for (const [name, rate] of [
      ['failureRate', this.failureRate],
      ['startupFailureRate', this.startupFailureRate],
    ] as const) {
      if (!(rate >= 0 && rate <= 1)) throw new RangeError(`${name} must be from 0 to 1, got ${rate}`);
    }
    for (const [name, credits] of [
      ['quotaBudget', this.quotaBudget ?? 0],
      ['workspaceCost', this.workspaceCost],
    ] as const) {
      if (!Number.isInteger(credits) || credits < 0 || credits > MAX_CREDITS) {
        throw new RangeError(`${name} must be a whole number from 0 to ${MAX_CREDITS}, got ${credits}`);
      }
    }
  }

  async run(job: BuildJob, ctx: ExecutorContext): Promise<ExecutorResult> {
    // Every draw happens here, synchronously and in the same number whatever the transition, so the
    // n-th build of a seeded run always gets the same outcome.
    const plan = this.plan();
    if (this.logLines === 0) return this.build(job, ctx, plan);
    // The simulated output follows the build's stage: the stage of its last line.
    let stage = 'Planning infrastructure';
    const staged: ExecutorContext = {
      signal: ctx.signal,
      log: (level, output, lineStage) => {
        stage = lineStage ?? stage;
        return ctx.log(level, output, lineStage);
      },
    };
    const stopOutput = new AbortController();
    const output = this.simulateOutput(plan.durationMs, ctx, () => stage, stopOutput.signal);
    try {
      const result = await this.build(job, staged, plan);
      stopOutput.abort();
      // A build that succeeded has written every line.
      (await output).finish();
      return result;
    } finally {
      stopOutput.abort();
      await output;
    }
  }

  /**
   * Writes `logLines` lines on schedule over `durationMs` until `signal` aborts; resolves with what writes
   * the lines not written yet.
   */
  private async simulateOutput(
    durationMs: number,
    ctx: ExecutorContext,
    stage: () => string,
    signal: AbortSignal,
  ): Promise<{ finish(): void }> {
    const total = this.logLines;
    const started = performance.now();
    let written = 0;
    const writeUpTo = (due: number) => {
      for (; written < due; written++)
        void ctx.log('info', `Simulated output line ${written + 1} of ${total}`, stage());
    };
    while (written < total && !signal.aborted) {
      const elapsed = performance.now() - started;
      writeUpTo(durationMs === 0 ? total : Math.min(total, Math.floor((total * elapsed) / durationMs)));
      await sleep(OUTPUT_TICK_MS, signal).catch(() => {});
    }
    return { finish: () => writeUpTo(total) };
  }

  private async build(job: BuildJob, ctx: ExecutorContext, plan: Plan): Promise<ExecutorResult> {
    const { signal } = ctx;
    const stage = APPLY_STAGE[job.transition];
    const agents = job.transition === 'start' ? this.agentNames : [];

    void ctx.log(
      'info',
      `Simulated ${job.transition} of workspace ${job.workspaceName} (build #${job.buildNumber})`,
      'Planning infrastructure',
    );
    const names = Object.keys(job.parameters);
    void ctx.log(
      'info',
      `Parameters: ${names.length === 0 ? '(none)' : names.sort().join(', ')}`,
      'Planning infrastructure',
    );
    await sleep(plan.durationMs * 0.3, signal);
    void ctx.log(
      'info',
      job.transition === 'start'
        ? `Plan: 1 resource with ${agents.length} agent(s) to create`
        : `Plan: the workspace's resources to ${job.transition}`,
      'Planning infrastructure',
    );
    // Between plan and apply, where Coder commits a start build's quota.
    if (job.transition === 'start') await this.commitQuota(job, ctx);

    void ctx.log(
      'info',
      `${this.resourceType}.dev: ${job.transition === 'start' ? 'Creating' : 'Stopping'}...`,
      stage,
    );
    if (plan.fails) {
      await sleep(plan.durationMs * 0.35, signal);
      void ctx.log('error', `Error: ${SIMULATED_BUILD_FAILURE}`, stage);
      throw new Error(SIMULATED_BUILD_FAILURE);
    }
    await sleep(plan.durationMs * 0.7, signal);

    if (job.transition !== 'start') {
      // The workspace's earlier agents go away with it, as real agents do when their machine stops.
      this.agentRuns.get(job.workspaceId)?.abort();
      this.agentRuns.delete(job.workspaceId);
      const stoppedAgents = await this.disconnectEarlierAgents(job);
      void ctx.log(
        'info',
        `${this.resourceType}.dev: Stopped (${stoppedAgents} agent(s) disconnected)`,
        stage,
      );
      return {};
    }
    for (const name of agents)
      void ctx.log('info', `${this.resourceType}.dev: agent "${name}" created`, stage);
    void ctx.log('info', `${this.resourceType}.dev: Creation complete`, stage);
    this.startups.set(job.jobId, plan.startupFails);
    return { agents: [...agents], resourceType: this.resourceType };
  }

  /** Plays the agents of a committed start build: connect, run startup scripts, report ready. */
  afterCommit(job: BuildJob, agents: CommittedAgent[]): void {
    const startupFails = this.startups.get(job.jobId) ?? [];
    this.startups.delete(job.jobId);
    if (this.stopped || agents.length === 0) return;
    // A newer start build replaces the simulation of the workspace's older agents.
    this.agentRuns.get(job.workspaceId)?.abort();
    const controller = new AbortController();
    this.agentRuns.set(job.workspaceId, controller);
    const runs = agents.map((agent, i) =>
      this.simulateAgent(agent, startupFails[i] ?? false, controller.signal),
    );
    const done = Promise.allSettled(runs).then(() => {
      if (this.agentRuns.get(job.workspaceId) === controller) this.agentRuns.delete(job.workspaceId);
      this.background.delete(done);
    });
    this.background.add(done);
  }

  /** Cancels every simulated agent and resolves when their timers are gone. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const controller of this.agentRuns.values()) controller.abort();
    this.agentRuns.clear();
    await Promise.allSettled([...this.background]);
  }

  /**
   * Refuses the build when the owner's other started workspaces plus this one cost more than the budget.
   * Like Coder's result, the quota reports what the owner consumes without this build.
   */
  private async commitQuota(job: BuildJob, ctx: ExecutorContext): Promise<void> {
    if (this.quotaBudget === undefined) return;
    const { rows } = await this.pool.query<{ started: number }>(
      `SELECT count(*)::int AS started
       FROM workspaces w
       JOIN LATERAL (SELECT b.transition, j.job_status FROM workspace_builds b
                     JOIN provisioner_jobs j ON j.id = b.job_id
                     WHERE b.workspace_id = w.id ORDER BY b.build_number DESC LIMIT 1) latest ON true
       WHERE w.owner_id = $1 AND w.id <> $2 AND NOT w.deleted
         AND latest.transition = 'start' AND latest.job_status = 'succeeded'`,
      [job.ownerId, job.workspaceId],
    );
    const creditsConsumed = rows[0]!.started * this.workspaceCost;
    const quota = { creditsConsumed, budget: this.quotaBudget };
    const summary = `${creditsConsumed} of ${this.quotaBudget} credits consumed, this workspace costs ${this.workspaceCost}`;
    if (creditsConsumed + this.workspaceCost <= this.quotaBudget) {
      void ctx.log('info', `Quota: ${summary}`, 'Planning infrastructure');
      return;
    }
    void ctx.log('error', `Error: ${INSUFFICIENT_QUOTA_ERROR} (${summary})`, 'Planning infrastructure');
    throw new BuildFailure(INSUFFICIENT_QUOTA_ERROR, INSUFFICIENT_QUOTA, quota);
  }

  private plan(): Plan {
    const jitter = this.random();
    const fail = this.random();
    const startup = this.agentNames.map(() => this.random());
    return {
      durationMs: this.buildMs + Math.floor(jitter * this.buildJitterMs),
      fails: fail < this.failureRate,
      startupFails: startup.map((r) => r < this.startupFailureRate),
    };
  }

  private async simulateAgent(
    agent: CommittedAgent,
    startupFails: boolean,
    signal: AbortSignal,
  ): Promise<void> {
    try {
      await sleep(this.agentConnectMs, signal);
      await this.pool.query(AGENT_CONNECTED, [agent.id]);
      await sleep(this.startupMs, signal);
      await this.pool.query(AGENT_STARTED, [agent.id, startupFails ? 'start_error' : 'ready']);
    } catch (error) {
      if (!signal.aborted) this.log.warn({ err: error, agentId: agent.id }, 'simulated agent failed');
    }
  }

  private async disconnectEarlierAgents(job: BuildJob): Promise<number> {
    const { rowCount } = await this.pool.query(
      `UPDATE workspace_agents a
       SET disconnected_at = now(), lifecycle_state = 'off', updated_at = now()
       FROM workspace_resources r
       JOIN workspace_builds b ON b.job_id = r.job_id
       WHERE a.resource_id = r.id AND b.workspace_id = $1 AND b.build_number < $2
         AND a.disconnected_at IS NULL`,
      [job.workspaceId, job.buildNumber],
    );
    return rowCount ?? 0;
  }
}
