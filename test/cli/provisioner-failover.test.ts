// A provisioner daemon killed mid-build, as real processes (`node --import tsx src/cli/main.ts worker|provisioner`)
// on real Redis and Postgres: two daemons with simulated builds and a worker; the daemon that claimed a start
// build is SIGKILLed half-way; the other hands the build back to pending, builds it again, and the start job
// ends in success.
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { StartWorkspaceSuccess } from '../../src/shared/contract.js';
import { CliProcess, killAll, type LogLine } from '../helpers/cli-process.js';
import { WorkerHarness, POLL, stagesOf } from '../helpers/worker-harness.js';

const START_MS = 20_000;
/** Long enough that the kill lands mid-build. */
const SIM_BUILD_MS = 4_000;

describe('when the provisioner daemon running a start build is killed', () => {
  let h: WorkerHarness;
  const processes: CliProcess[] = [];

  beforeEach(async () => {
    // The harness's SQL provisioner stays paused: only the real daemons build.
    h = await WorkerHarness.create({ provisioner: { paused: true } });
  });

  afterEach(async () => {
    for (const cli of processes.splice(0)) await cli.stop('SIGTERM', 15_000).catch(() => cli.kill());
    await killAll();
    await h.close();
  }, 60_000);

  function run(command: string, env: Record<string, string> = {}): CliProcess {
    const cli = h.cliProcess(command, env);
    processes.push(cli);
    return cli;
  }

  async function startDaemon(): Promise<{ cli: CliProcess; id: string }> {
    const cli = run('provisioner', {
      // Shorter than the defaults (2 s, 10 s) so the test is quick; the rule (>= 3 heartbeats) is the same.
      PROVISIONER_HEARTBEAT_MS: '500',
      PROVISIONER_STALE_AFTER_MS: '3000',
      SIM_BUILD_MS: String(SIM_BUILD_MS),
      SIM_AGENT_CONNECT_MS: '50',
      SIM_STARTUP_MS: '50',
    });
    const started = await cli.waitForLog(
      'provisioner running',
      (l) => l.msg === 'provisioner daemon running',
      START_MS,
    );
    return { cli, id: String(started.provisionerId) };
  }

  it('another daemon builds it again and the start job succeeds', async () => {
    const daemons = await Promise.all([startDaemon(), startDaemon()]);
    const worker = run('worker');
    await worker.waitForLog('worker started', (l) => l.msg === 'worker started', START_MS);
    const ws = await h.seedStoppedWorkspace();

    const { jobId } = await h.producer.startWorkspace({ chatId: ws.chatId, ownerId: ws.ownerId });
    const running = await h.waitForEvent(ws.chatId, 'build_running');
    const buildId = String(running.data?.build_id);
    const { rows } = await h.db.pool.query<{ job_id: string; worker_id: string }>(
      `SELECT j.id AS job_id, j.worker_id FROM workspace_builds b JOIN provisioner_jobs j ON j.id = b.job_id
       WHERE b.id = $1`,
      [buildId],
    );
    const { job_id: provisionerJobId, worker_id: claimedBy } = rows[0]!;
    const victim = daemons.find((d) => d.id === claimedBy);
    const survivor = daemons.find((d) => d.id !== claimedBy)!;
    expect(victim, `the build was claimed by ${claimedBy}, not one of the daemons`).toBeDefined();
    // Its own log says so too.
    await victim!.cli.waitForLog(
      'the claim',
      (l) => l.msg === 'running provisioner job' && l.jobId === provisionerJobId,
    );

    victim!.cli.kill();
    const killedAt = Date.now();
    expect(await victim!.cli.waitForExit(10_000)).toEqual({ code: null, signal: 'SIGKILL' });

    const result = await h.producer.waitForResult(jobId, { timeoutMs: 60_000 });
    expect(result).toMatchObject({ kind: 'start-workspace', ok: true, started: true, build_id: buildId });
    // The re-run's agent came up: no agent_status (no_agent, not_ready) on the result.
    expect((result as StartWorkspaceSuccess).agent_status).toBeUndefined();

    // The survivor handed the build back (naming the dead daemon) and ran it.
    const isHandBack = (l: LogLine) =>
      l.jobId === provisionerJobId && l.deadProvisionerId === victim!.id && l.reruns === 1;
    const handBack = await survivor.cli.waitForLog('the hand-back', isHandBack);
    expect(handBack.msg).toBe('provisioner stopped responding; handed its job back for re-run 1 of 2');
    const rerun = await survivor.cli.waitForLog(
      'the re-run',
      (l) => l.msg === 'running provisioner job' && l.jobId === provisionerJobId,
    );
    console.info(
      `provisioner killed → build re-claimed by the other daemon after ${rerun.time - killedAt} ms ` +
        `(stale after 3000 ms, heartbeat 500 ms, poll 5000 ms)`,
    );
    const job = await h.db.pool.query<{ job_status: string; worker_id: string; reruns: number }>(
      `SELECT job_status, worker_id, reruns FROM provisioner_jobs WHERE id = $1`,
      [provisionerJobId],
    );
    expect(job.rows[0]).toEqual({ job_status: 'succeeded', worker_id: survivor.id, reruns: 1 });

    // The worker kept waiting through pending → running again; one result, last.
    const events = await vi.waitFor(async () => {
      const found = await h.events(ws.chatId);
      expect(found.filter((e) => e.type === 'result')).toHaveLength(1);
      return found;
    }, POLL);
    // After the first build_running: the hand-back shows as build_queued again when the worker looks
    // between it and the re-claim (they can be milliseconds apart), then running again, then success.
    // (The build's log previews come and go between its statuses.)
    const stages = stagesOf(events).map((stage) => (stage === 'build_log' ? '' : stage));
    const fromRunning = stages.slice(stages.indexOf('build_running')).filter(Boolean).join(' ');
    expect(fromRunning).toMatch(/^build_running (build_queued build_running )?build_succeeded /);
    for (const queued of events
      .slice(stages.indexOf('build_running'))
      .filter((e) => e.stage === 'build_queued')) {
      expect(queued.message).toBe(
        `Build #${String(running.data?.build_number)} is queued again: its run was interrupted (its provisioner stopped responding or shut down, or the database restarted)`,
      );
    }
    expect(events.at(-1)).toMatchObject({ type: 'result', stage: 'completed' });
  }, 120_000);
});
