// `workspace-jobs logs` as a real process: prints a build's stored lines (text or JSON), after a cursor;
// --follow prints lines as they are written and exits 0 once the build's job completes; an unknown build is
// exit 1, bad flags exit 2 naming the flag.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { insertBuild, insertTemplate, insertUser, insertWorkspace } from '../../src/cli/fixtures.js';
import type { BuildLogLine } from '../../src/shared/build-logs.js';
import { CliProcess, killAll, runCli } from '../helpers/cli-process.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { completeJob } from '../helpers/fixtures.js';
import { TEST_REDIS_URL, removePrefix, uniquePrefix } from '../helpers/redis.js';

const RUN_MS = 30_000;

describe('workspace-jobs logs', () => {
  let db: TestDatabase;
  const prefixes: string[] = [];
  const env = (): Record<string, string> => {
    const prefix = uniquePrefix('logs');
    prefixes.push(prefix);
    return { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: db.url, QUEUE_PREFIX: prefix, LOG_LEVEL: 'warn' };
  };

  beforeAll(async () => {
    db = await createTestDatabase();
  });
  afterEach(async () => {
    await killAll();
    for (const prefix of prefixes.splice(0)) await removePrefix(prefix);
  });
  afterAll(async () => {
    await db?.drop();
  });

  async function build(status: 'running' | 'succeeded', lines: number) {
    const user = await insertUser(db.pool);
    const template = await insertTemplate(db.pool, { versions: [{}] });
    const { workspaceId } = await insertWorkspace(db.pool, {
      ownerId: user.userId,
      templateId: template.templateId,
    });
    const inserted = await insertBuild(db.pool, {
      workspaceId,
      templateVersionId: template.activeVersionId,
      transition: 'start',
      status,
      initiatorId: user.userId,
    });
    await writeLines(inserted.jobId, 1, lines);
    return inserted;
  }

  async function writeLines(jobId: string, from: number, to: number): Promise<void> {
    await db.pool.query(
      `INSERT INTO provisioner_job_logs (job_id, stage, output)
       SELECT $1, 'Planning', 'line ' || n FROM generate_series($2::int, $3::int) n ORDER BY n`,
      [jobId, from, to],
    );
  }

  const expected = (from: number, to: number) =>
    Array.from({ length: to - from + 1 }, (_, i) => `line ${from + i}`);

  it('prints every line of a build as text, and with --json after a cursor', async () => {
    const { buildId } = await build('succeeded', 1_500);
    const text = await runCli(['logs', '--build', buildId], env(), RUN_MS);
    expect(text.exit).toEqual({ code: 0, signal: null });
    expect(text.stdout).toHaveLength(1_500);
    expect(text.stdout[0]).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z info \[Planning\] line 1$/);

    const all = text.stdout.map((l) => l.replace(/^.*\] /, ''));
    expect(all).toEqual(expected(1, 1_500));
    const json = await runCli(['logs', '--build', buildId, '--json'], env(), RUN_MS);
    const lines = json.stdout.map((l) => JSON.parse(l) as BuildLogLine);
    const resumed = await runCli(
      ['logs', '--build', buildId, '--json', '--after', lines[999]!.id],
      env(),
      RUN_MS,
    );
    expect(resumed.stdout.map((l) => (JSON.parse(l) as BuildLogLine).output)).toEqual(expected(1_001, 1_500));
  });

  it('--follow prints lines as they are written and exits 0 once the build completes', async () => {
    const { buildId, jobId } = await build('running', 3);
    const cli = new CliProcess('logs --follow', ['logs', '--build', buildId, '--follow', '--json'], env());
    await expect.poll(() => cli.stdout.length, { timeout: RUN_MS }).toBe(3);
    await writeLines(jobId, 4, 10);
    await expect.poll(() => cli.stdout.length, { timeout: RUN_MS }).toBe(10);
    await writeLines(jobId, 11, 12);
    await completeJob(db.pool, jobId);
    expect(await cli.waitForExit(RUN_MS)).toEqual({ code: 0, signal: null });
    expect(cli.stdout.map((l) => (JSON.parse(l) as BuildLogLine).output)).toEqual(expected(1, 12));
  });

  it('an unknown build is exit 1 naming it', async () => {
    const buildId = crypto.randomUUID();
    const run = await runCli(['logs', '--build', buildId], env(), RUN_MS);
    expect(run.exit.code).toBe(1);
    expect(run.stderr.join('\n')).toContain(`no build ${buildId}`);
  });

  it.each([
    [['logs'], '--build is required'],
    [['logs', '--build', 'x'], '--build must be a UUID'],
    [['logs', '--build', crypto.randomUUID(), '--after', 'abc'], '--after: expected a log line id'],
    [['logs', '--build', crypto.randomUUID(), '--tail'], "Unknown option '--tail'"],
  ])('bad flags %j are exit 2 naming the flag', async (args, message) => {
    const run = await runCli(args, env(), RUN_MS);
    expect(run.exit.code).toBe(2);
    expect(run.stderr.join('\n')).toContain(message);
  });
});
