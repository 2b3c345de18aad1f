// `workspace-jobs enqueue create … [--wait]` as a real process (docs/design.md §2) against a real worker
// process and the real provisioner daemon (simulated builds): exit 0 with the result JSON printed last on
// success, 1 on a failed result, 2 with a one-line reason for bad flags or ids.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { insertChat, insertTemplate, insertUser } from '../../src/cli/fixtures.js';
import type { CreateWorkspaceSuccess, JobFailure, WorkspaceJobEvent } from '../../src/shared/contract.js';
import { closeRedis, type Redis } from '../../src/shared/redis.js';
import { CliProcess, killAll, logLines, runCli } from '../helpers/cli-process.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

const START_MS = 20_000;
const RUN_MS = 40_000;
const LEFT_OPEN = 'a connection was still open';

describe('workspace-jobs enqueue create', () => {
  let db: TestDatabase;
  let redis: Redis;
  let prefix: string;
  let services: CliProcess[] = [];
  let owner: { userId: string; username: string };
  let templateId: string;

  const env = (extra: Record<string, string> = {}): Record<string, string> => ({
    REDIS_URL: TEST_REDIS_URL,
    DATABASE_URL: db.url,
    QUEUE_PREFIX: prefix,
    LOG_LEVEL: 'warn',
    JOB_ATTEMPTS: '2',
    BUILD_TIMEOUT_MS: '20000',
    AGENT_CONNECT_TIMEOUT_MS: '10000',
    STARTUP_SCRIPT_TIMEOUT_MS: '10000',
    SHUTDOWN_GRACE_MS: '3000',
    ...extra,
  });

  beforeAll(async () => {
    db = await createTestDatabase();
    redis = testRedis();
    prefix = uniquePrefix('enqueue');
    owner = await insertUser(db.pool);
    templateId = (
      await insertTemplate(db.pool, {
        versions: [
          {
            parameters: [
              { name: 'region', defaultValue: 'eu-west-1' },
              { name: 'size', defaultValue: 'small' },
            ],
          },
        ],
      })
    ).templateId;
    const worker = new CliProcess('worker', ['worker'], env({ LOG_LEVEL: 'info' }));
    const provisioner = new CliProcess(
      'provisioner',
      ['provisioner'],
      env({ LOG_LEVEL: 'info', SIM_BUILD_MS: '200', SIM_AGENT_CONNECT_MS: '50', SIM_STARTUP_MS: '50' }),
    );
    services = [worker, provisioner];
    await Promise.all([
      worker.waitForLog('worker started', (l) => l.msg === 'worker started', START_MS),
      provisioner.waitForLog('provisioner started', (l) => l.msg === 'provisioner started', START_MS),
    ]);
  }, 60_000);

  afterAll(async () => {
    try {
      const exits = await Promise.all(services.map((s) => s.stop('SIGTERM', 15_000)));
      for (const [i, exit] of exits.entries()) {
        expect(exit, `${services[i]!.label}: ${services[i]!.describe()}`).toEqual({ code: 0, signal: null });
        expect(services[i]!.stderr.join('\n')).not.toContain(LEFT_OPEN);
      }
    } finally {
      await killAll();
      await deleteKeys(redis, prefix);
      await closeRedis(redis);
      await db.drop();
    }
  }, 60_000);

  /**
   * stdout of `--wait` into a pipe: JSON lines only, the enqueued job first, the job's events, and the
   * result as the last line.
   */
  function parseWaitOutput(stdout: string[]) {
    expect(stdout.length, JSON.stringify(stdout)).toBeGreaterThanOrEqual(3);
    const lines = stdout.map((line) => JSON.parse(line) as Record<string, unknown>);
    const enqueued = lines[0] as { jobId: string; deduplicated: boolean };
    const events = lines.slice(1, -1) as unknown as WorkspaceJobEvent[];
    const result = lines.at(-1) as unknown as CreateWorkspaceSuccess | JobFailure;
    return { enqueued, events, result };
  }

  it('--wait: exits 0 after the events, with the result JSON last; a second create finds the workspace', async () => {
    const { chatId } = await insertChat(db.pool, { ownerId: owner.userId });
    const args = ['enqueue', 'create', '--chat', chatId, '--template', templateId, '--name', 'cli-dev'];

    const first = await runCli([...args, '--param', 'size=large', '--wait', '--json'], env(), RUN_MS);

    expect(first.exit, JSON.stringify(first)).toEqual({ code: 0, signal: null });
    const out = parseWaitOutput(first.stdout);
    expect(out.enqueued.deduplicated).toBe(false);
    const { rows } = await db.pool.query<{ workspace_id: string; build_id: string }>(
      'SELECT workspace_id, build_id FROM chats WHERE id = $1',
      [chatId],
    );
    const binding = rows[0]!;
    expect(out.result).toEqual({
      kind: 'create-workspace',
      ok: true,
      created: true,
      workspace_name: `${owner.username}/cli-dev`,
      build_id: binding.build_id,
    });
    // Only this job's events, its result event last among them.
    expect(out.events.every((e) => e.job.id === out.enqueued.jobId)).toBe(true);
    expect(out.events.map((e) => e.stage)).toEqual(
      expect.arrayContaining(['lock_acquired', 'checking', 'build_queued', 'build_succeeded', 'completed']),
    );
    expect(out.events.at(-1)).toMatchObject({ type: 'result', stage: 'completed' });
    const { rows: parameters } = await db.pool.query(
      'SELECT name, value FROM workspace_build_parameters WHERE workspace_build_id = $1 ORDER BY name',
      [binding.build_id],
    );
    expect(parameters).toEqual([
      { name: 'region', value: 'eu-west-1' },
      { name: 'size', value: 'large' },
    ]);

    const again = await runCli([...args, '--wait', '--json'], env(), RUN_MS);
    expect(again.exit, JSON.stringify(again)).toEqual({ code: 0, signal: null });
    expect(parseWaitOutput(again.stdout).result).toEqual({
      kind: 'create-workspace',
      ok: true,
      created: false,
      workspace_name: `${owner.username}/cli-dev`,
      status: 'already_exists',
      message: 'workspace is already running and recently connected',
    });
  }, 90_000);

  it('--wait into a pipe: stdout has JSON lines only, the result one object on the last line; logs go to stderr', async () => {
    const { chatId } = await insertChat(db.pool, { ownerId: owner.userId });
    // No --json: a pipe is enough. Debug logging, so that there are log lines to misplace.
    const run = await runCli(
      ['enqueue', 'create', '--chat', chatId, '--template', templateId, '--wait'],
      env({ LOG_LEVEL: 'debug' }),
      RUN_MS,
    );

    expect(run.exit, JSON.stringify(run)).toEqual({ code: 0, signal: null });
    const { enqueued, events, result } = parseWaitOutput(run.stdout);
    for (const line of [enqueued, ...events, result]) expect(line).not.toHaveProperty('msg');
    expect(events.length).toBeGreaterThan(0);
    expect(events.every((e) => e.job.id === enqueued.jobId && typeof e.stage === 'string')).toBe(true);
    expect(result).toMatchObject({
      kind: 'create-workspace',
      ok: true,
      created: true,
      workspace_name: expect.any(String),
    });
    expect(logLines(run.stderr).length, JSON.stringify(run.stderr)).toBeGreaterThan(0);
  }, 60_000);

  it('without --wait: prints the enqueued job and exits 0', async () => {
    const { chatId } = await insertChat(db.pool, { ownerId: owner.userId });
    const run = await runCli(
      ['enqueue', 'create', '--chat', chatId, '--template', templateId],
      env(),
      RUN_MS,
    );
    expect(run.exit, JSON.stringify(run)).toEqual({ code: 0, signal: null });
    expect(run.stdout).toHaveLength(1);
    expect(JSON.parse(run.stdout[0]!)).toEqual({ jobId: expect.any(String), deduplicated: false });
  }, 60_000);

  it('--wait on a failed result exits 1 and prints the failure last (a sub-chat is forbidden)', async () => {
    const { chatId: root } = await insertChat(db.pool, { ownerId: owner.userId });
    const { chatId } = await insertChat(db.pool, { ownerId: owner.userId, parentChatId: root });

    const run = await runCli(
      ['enqueue', 'create', '--chat', chatId, '--template', templateId, '--wait', '--json'],
      env(),
      RUN_MS,
    );

    expect(run.exit, JSON.stringify(run)).toEqual({ code: 1, signal: null });
    const { result } = parseWaitOutput(run.stdout);
    expect(result).toMatchObject({ code: 'forbidden', is_error: true });
    expect((result as JobFailure).error).toContain('only root chats');
  }, 60_000);

  it("ids in upper case are used in lower case: the owner owns the chat, the events are the chat's", async () => {
    const { chatId } = await insertChat(db.pool, { ownerId: owner.userId });
    const [chat, template, user] = [chatId, templateId, owner.userId].map((id) => id.toUpperCase());

    const run = await runCli(
      ['enqueue', 'create', '--chat', chat!, '--template', template!, '--owner', user!, '--wait', '--json'],
      env(),
      RUN_MS,
    );

    // Compared as given, the upper-case owner would not own the chat (forbidden).
    expect(run.exit, JSON.stringify(run)).toEqual({ code: 0, signal: null });
    const out = parseWaitOutput(run.stdout);
    expect(out.result).toMatchObject({ kind: 'create-workspace', ok: true, created: true });
    expect(out.events.map((e) => e.chatId)).toEqual(out.events.map(() => chatId));
    expect(out.events.at(-1)).toMatchObject({ type: 'result', stage: 'completed' });
  }, 60_000);

  it('bad flags or ids exit 2 with a one-line reason, enqueueing nothing', async () => {
    const { chatId } = await insertChat(db.pool, { ownerId: owner.userId });
    const missingChat = '00000000-0000-4000-8000-000000000001';
    const cases: [string[], string][] = [
      [
        ['--chat', 'not-a-uuid', '--template', templateId],
        '--chat must be a UUID (version 1-8), got "not-a-uuid"',
      ],
      [['--chat', chatId], '--template is required'],
      [['--template', templateId], '--chat is required'],
      [['--chat', chatId, '--template', 'nope'], '--template must be a UUID (version 1-8), got "nope"'],
      [['--chat', chatId, '--template', templateId, '--param', 'novalue'], '--param must be name=value'],
      [
        ['--chat', chatId, '--template', templateId, '--param', '__proto__=x'],
        '--param "__proto__": is reserved',
      ],
      [
        ['--chat', chatId, '--template', templateId, '--param', 'constructor=x'],
        '--param "constructor": is reserved',
      ],
      [
        ['--chat', chatId, '--template', templateId, '--param', 'region =x'],
        '--param "region ": a parameter name must not start or end with whitespace',
      ],
      [
        ['--chat', chatId, '--template', templateId, '--param', 'size=a', '--param', 'size=b'],
        '--param "size" is given twice',
      ],
      [
        ['--chat', chatId, '--template', templateId, '--owner', '12345678-1234-0234-8234-123456789abc'],
        '--owner must be a UUID (version 1-8), got "12345678-1234-0234-8234-123456789abc"',
      ],
      [['--chat', chatId, '--template', templateId, '--bogus'], "Unknown option '--bogus'"],
      [
        ['--chat', chatId, '--template', templateId, '--timeout=-5'],
        '--timeout must be a positive whole number of milliseconds, got "-5"',
      ],
      [['--chat', chatId, '--template', templateId, '--name', 'bad name!'], 'invalid --name: must be'],
      [['--chat', missingChat, '--template', templateId], `chat ${missingChat} not found`],
    ];
    const runs = await Promise.all(
      cases.map(([flags]) => runCli(['enqueue', 'create', ...flags], env(), RUN_MS)),
    );
    for (const [i, run] of runs.entries()) {
      const [flags, reason] = cases[i]!;
      const what = `enqueue create ${flags.join(' ')}: ${JSON.stringify(run)}`;
      expect(run.exit, what).toEqual({ code: 2, signal: null });
      expect(run.stderr, what).toHaveLength(1);
      expect(run.stderr[0], what).toMatch(/^workspace-jobs: /);
      expect(run.stderr[0], what).toContain(reason);
      expect(run.stdout, what).toEqual([]);
    }
    // Nothing reached the chat: no events, no workspace.
    expect(await redis.exists(`${prefix}:events:chat:${chatId}:log`)).toBe(0);
    const { rows } = await db.pool.query('SELECT workspace_id FROM chats WHERE id = $1', [chatId]);
    expect(rows).toEqual([{ workspace_id: null }]);
  }, 60_000);

  it('a flag value that starts with a dash exits 2 with a one-line reason', async () => {
    const { chatId } = await insertChat(db.pool, { ownerId: owner.userId });
    const run = await runCli(
      ['enqueue', 'create', '--chat', chatId, '--template', templateId, '--timeout', '-5'],
      env(),
      RUN_MS,
    );
    expect(run.exit).toEqual({ code: 2, signal: null });
    expect(run.stderr).toEqual([expect.stringMatching(/^workspace-jobs: .*--timeout/)]);
  }, 60_000);
});
