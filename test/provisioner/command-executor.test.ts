import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  buildEnvironment,
  CommandExecutor,
  parameterEnvName,
  type CommandExecutorOptions,
} from '../../src/provisioner/command-executor.js';
import type { BuildJob } from '../../src/provisioner/executor.js';
import { Provisioner } from '../../src/provisioner/provisioner.js';
import { PgNotificationHub } from '../../src/shared/notifications.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import {
  createFixture,
  createWorkspace,
  getAgents,
  getLogs,
  insertBuild,
  isAlive,
  POLL,
  silentLog,
  waitForCompletion,
  waitForStatus,
  type Fixture,
} from './helpers.js';

describe('CommandExecutor', () => {
  let db: TestDatabase;
  let hub: PgNotificationHub;
  let fixture: Fixture;
  const cleanups: (() => Promise<void>)[] = [];

  beforeEach(async () => {
    db = await createTestDatabase();
    hub = new PgNotificationHub(db.url);
    await hub.start();
    fixture = await createFixture(db.pool);
  });

  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
    await hub.stop();
    await db.drop();
  });

  function startCommand(options: CommandExecutorOptions): CommandExecutor {
    const executor = new CommandExecutor({ log: silentLog, ...options });
    const provisioner = new Provisioner({ pool: db.pool, hub, executor, log: silentLog });
    provisioner.start();
    cleanups.push(() => provisioner.stop({ graceMs: 0 }));
    return executor;
  }

  async function outputOf(jobId: string, source = 'provisioner') {
    return (await getLogs(db.pool, jobId)).filter((l) => l.source === source);
  }

  it('when the command runs › sees the build in its environment and its output becomes info logs', async () => {
    startCommand({
      command:
        'echo "t=$WSJOBS_TRANSITION n=$WSJOBS_BUILD_NUMBER ws=$WSJOBS_WORKSPACE_NAME region=$WSJOBS_PARAM_REGION cpu=$WSJOBS_PARAM_CPU_COUNT extra=$EXTRA"; ' +
        'echo "$WSJOBS_PARAMETERS"; echo "$WSJOBS_JOB_ID $WSJOBS_BUILD_ID $WSJOBS_WORKSPACE_ID $WSJOBS_OWNER_ID $WSJOBS_TEMPLATE_VERSION_ID"',
      env: { EXTRA: 'yes' },
    });
    const workspaceId = await createWorkspace(db.pool, fixture, 'dev');
    const build = await insertBuild(db.pool, fixture, workspaceId, {
      parameters: { region: 'eu', 'cpu-count': '4' },
    });

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({
      job_status: 'succeeded',
      error: null,
    });
    const lines = await outputOf(build.jobId);

    expect(lines.map((l) => [l.level, l.stage, l.output])).toEqual([
      ['info', 'Starting workspace', expect.stringMatching(/^Running the build command/)],
      ['info', 'Starting workspace', 't=start n=1 ws=dev region=eu cpu=4 extra=yes'],
      ['info', 'Starting workspace', JSON.stringify({ region: 'eu', 'cpu-count': '4' })],
      [
        'info',
        'Starting workspace',
        `${build.jobId} ${build.buildId} ${workspaceId} ${fixture.userId} ${fixture.versionId}`,
      ],
    ]);
    // No agent declared: a start build without agents.
    expect(await getAgents(db.pool, build.jobId)).toEqual([]);
  });

  it('when the command exits non-zero › the build fails with the code and the last stderr line', async () => {
    startCommand({ command: 'echo working; echo "first problem" >&2; echo "quota exceeded" >&2; exit 3' });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({
      job_status: 'failed',
      error: 'command exited with code 3: quota exceeded',
      error_code: null,
      quota_credits_consumed: null,
      quota_budget: null,
    });
    const lines = await outputOf(build.jobId);
    expect(lines.slice(1).map((l) => [l.level, l.output])).toEqual([
      ['info', 'working'],
      ['warn', 'first problem'],
      ['warn', 'quota exceeded'],
    ]);
  });

  it('when a failing command prints wsjobs-error-code and wsjobs-quota lines › the job gets the code and quota', async () => {
    startCommand({
      command:
        'echo "wsjobs-quota: credits_consumed=1 budget=9"; echo "wsjobs-error-code: SOMETHING_ELSE"; ' +
        'echo "wsjobs-error-code: INSUFFICIENT_QUOTA"; echo "wsjobs-quota: credits_consumed=4 budget=5"; ' +
        'echo "wsjobs-error-code: not a code"; echo "wsjobs-quota: credits_consumed=-1 budget=5"; ' +
        'echo "insufficient quota" >&2; exit 1',
    });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({
      job_status: 'failed',
      error: 'command exited with code 1: insufficient quota',
      error_code: 'INSUFFICIENT_QUOTA',
      quota_credits_consumed: 4,
      quota_budget: 5,
    });
    const warnings = (await outputOf(build.jobId)).filter((l) => l.level === 'warn').map((l) => l.output);
    expect(warnings).toEqual([
      'ignored error code "not a code": A-Z, 0-9 and _ only',
      'ignored quota "credits_consumed=-1 budget=5": expected credits_consumed=<credits> budget=<credits>',
      'insufficient quota',
    ]);
  });

  it('when a command that succeeds prints wsjobs-error-code › the job succeeds without a code', async () => {
    startCommand({ command: 'echo "wsjobs-error-code: INSUFFICIENT_QUOTA"; exit 0' });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({
      job_status: 'succeeded',
      error: null,
      error_code: null,
    });
  });

  it('when the command prints wsjobs-agent lines › the build gets those agents in order', async () => {
    startCommand({
      command:
        'echo "wsjobs-agent: main"; echo "wsjobs-agent: dev-coderd-chat"; echo "wsjobs-agent: main"; echo "wsjobs-agent: bad name!"',
    });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({ job_status: 'succeeded' });

    const agents = await getAgents(db.pool, build.jobId);
    expect(agents.map((a) => [a.name, a.display_order, a.lifecycle_state, a.resource_type])).toEqual([
      ['main', 0, 'created', 'command'],
      ['dev-coderd-chat', 1, 'created', 'command'],
    ]);
    expect(await outputOf(build.jobId)).toContainEqual(
      expect.objectContaining({
        level: 'warn',
        output: expect.stringContaining('ignored agent name "bad name!"'),
      }),
    );
  });

  it('when the command runs too long › its whole process group is killed and the build fails', async () => {
    startCommand({ command: 'sleep 30 & echo "child=$!"; wait', timeoutMs: 300, killGraceMs: 1_000 });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    const job = await waitForCompletion(db.pool, build.jobId);

    expect(job).toMatchObject({ job_status: 'failed', error: 'command timed out after 300 ms' });
    const line = (await outputOf(build.jobId)).find((l) => l.output.startsWith('child='));
    const child = Number(line!.output.slice('child='.length));
    await expect.poll(() => isAlive(child), { ...POLL, timeout: 5_000 }).toBe(false);
  });

  it('when the command exits leaving background processes › they are killed, SIGKILL if they ignore SIGTERM', async () => {
    startCommand({
      command: `sleep 30 & echo "child=$!"; (trap '' TERM; exec sleep 30) & echo "stubborn=$!"`,
      killGraceMs: 200,
    });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({ job_status: 'succeeded' });
    const pids = (await outputOf(build.jobId))
      .filter((l) => /^(child|stubborn)=/.test(l.output))
      .map((l) => Number(l.output.split('=')[1]));
    expect(pids).toHaveLength(2);
    for (const pid of pids) {
      await expect
        .poll(() => isAlive(pid), { ...POLL, timeout: 5_000, message: `leftover ${pid}` })
        .toBe(false);
    }
  });

  it('when the command ignores SIGTERM › it is killed with SIGKILL after the grace period', async () => {
    const executor = startCommand({
      command: "trap '' TERM; echo ready; sleep 30",
      timeoutMs: 200,
      killGraceMs: 200,
    });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({
      job_status: 'failed',
      error: 'command timed out after 200 ms',
    });
    // stop() waits for the killed command, bounded by the grace period.
    await executor.stop();
  });

  it('when the job is canceled › the command is killed and the job completes as canceled', async () => {
    startCommand({ command: 'echo "pid=$$"; sleep 30' });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));
    const line = await vi.waitFor(async () => {
      const started = (await outputOf(build.jobId)).find((l) => l.output.startsWith('pid='));
      expect(started, 'the command to start').toBeDefined();
      return started!;
    }, POLL);
    await waitForStatus(db.pool, build.jobId, 'running');

    await db.pool.query(`UPDATE provisioner_jobs SET canceled_at = now() WHERE id = $1`, [build.jobId]);

    expect(await waitForCompletion(db.pool, build.jobId)).toMatchObject({
      job_status: 'canceled',
      error: null,
    });
    const pid = Number(line.output.slice('pid='.length));
    await expect.poll(() => isAlive(pid), { ...POLL, timeout: 5_000 }).toBe(false);
  });

  it('when a line is huge or lacks a trailing newline › lines are capped and the last one kept', async () => {
    startCommand({
      command: `head -c 10000 /dev/zero | tr '\\0' x; echo; printf 'no newline'`,
      maxLineLength: 100,
    });
    const build = await insertBuild(db.pool, fixture, await createWorkspace(db.pool, fixture));

    await waitForCompletion(db.pool, build.jobId);

    expect((await outputOf(build.jobId)).slice(1).map((l) => l.output)).toEqual([
      `${'x'.repeat(100)}…`,
      'no newline',
    ]);
  });

  it('when building the environment › parameter names are upper-cased with non-alphanumerics as _', () => {
    const job: BuildJob = {
      jobId: 'j',
      buildId: 'b',
      workspaceId: 'w',
      workspaceName: 'dev',
      ownerId: 'o',
      templateVersionId: 'v',
      buildNumber: 7,
      transition: 'stop',
      parameters: { 'Disk size (GB)': '50', region: 'eu' },
    };

    expect(parameterEnvName('dotfiles.repo-url')).toBe('WSJOBS_PARAM_DOTFILES_REPO_URL');
    expect(buildEnvironment(job)).toEqual({
      WSJOBS_JOB_ID: 'j',
      WSJOBS_BUILD_ID: 'b',
      WSJOBS_WORKSPACE_ID: 'w',
      WSJOBS_WORKSPACE_NAME: 'dev',
      WSJOBS_OWNER_ID: 'o',
      WSJOBS_TRANSITION: 'stop',
      WSJOBS_BUILD_NUMBER: '7',
      WSJOBS_TEMPLATE_VERSION_ID: 'v',
      WSJOBS_PARAMETERS: '{"Disk size (GB)":"50","region":"eu"}',
      WSJOBS_PARAM_DISK_SIZE__GB_: '50',
      WSJOBS_PARAM_REGION: 'eu',
    });
  });
});
