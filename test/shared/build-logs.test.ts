import { describe, expect, it } from 'vitest';
import { insertBuild, insertTemplate, insertUser, insertWorkspace } from '../../src/cli/fixtures.js';
import {
  followBuildLogs,
  readBuildLogs,
  UnknownBuildError,
  type BuildLogLine,
} from '../../src/shared/build-logs.js';
import { WaitTimeoutError } from '../../src/shared/errors.js';
import { ValidationError } from '../../src/shared/schemas.js';
import { topics } from '../../src/worker/ports.js';
import { useListeningDatabase } from '../helpers/listening-database.js';
import { completeJob } from '../helpers/fixtures.js';

describe('build logs', () => {
  const t = useListeningDatabase();

  async function runningBuild(): Promise<{ buildId: string; jobId: string }> {
    const user = await insertUser(t.db.pool);
    const template = await insertTemplate(t.db.pool, { versions: [{}] });
    const { workspaceId } = await insertWorkspace(t.db.pool, {
      ownerId: user.userId,
      templateId: template.templateId,
    });
    return insertBuild(t.db.pool, {
      workspaceId,
      templateVersionId: template.activeVersionId,
      transition: 'start',
      status: 'running',
      initiatorId: user.userId,
    });
  }

  /** Appends lines `from`..`to` (output `line <n>`) in one statement, as the daemon's writer batches them. */
  async function writeLines(jobId: string, from: number, to: number): Promise<void> {
    await t.db.pool.query(
      `INSERT INTO provisioner_job_logs (job_id, stage, output)
       SELECT $1, 'Planning', 'line ' || n FROM generate_series($2::int, $3::int) n ORDER BY n`,
      [jobId, from, to],
    );
  }

  const outputs = (lines: BuildLogLine[]) => lines.map((l) => l.output);

  it('an insert batch › notifies its job once with the newest line id', async () => {
    const { jobId } = await runningBuild();
    const payloads: string[] = [];
    const client = await t.db.pool.connect();
    try {
      client.on('notification', (msg) => {
        if (msg.channel === 'provisioner_job_logs') payloads.push(msg.payload!);
      });
      await client.query('LISTEN provisioner_job_logs');
      await writeLines(jobId, 1, 3);
      const { rows } = await t.db.pool.query<{ id: string }>(
        'SELECT max(id)::text AS id FROM provisioner_job_logs',
      );
      await expect.poll(() => payloads, { timeout: 5_000 }).toHaveLength(1);
      expect(JSON.parse(payloads[0]!)).toEqual({ job_id: jobId, last_id: rows[0]!.id });
    } finally {
      await client.query('UNLISTEN *');
      client.release();
    }
  });

  it('an insert › wakes a waiter on the job-logs topic', async () => {
    const { jobId } = await runningBuild();
    const woken = new Promise<void>((resolve) => t.hub.on(topics.provisionerJobLogs(jobId), () => resolve()));
    await writeLines(jobId, 1, 1);
    await expect(woken).resolves.toBeUndefined();
  });

  it('readBuildLogs › pages after a cursor in id order and says when the job is done', async () => {
    const { buildId, jobId } = await runningBuild();
    await writeLines(jobId, 1, 5);
    const first = await readBuildLogs(t.db.pool, buildId, '0', 3);
    expect(first).toMatchObject({ done: false, jobId });
    expect(outputs(first!.lines)).toEqual(['line 1', 'line 2', 'line 3']);
    expect(first!.lines[0]).toMatchObject({ level: 'info', stage: 'Planning', source: 'provisioner' });
    expect(new Date(first!.lines[0]!.at).toISOString()).toBe(first!.lines[0]!.at);
    const rest = await readBuildLogs(t.db.pool, buildId, first!.lines[2]!.id, 3);
    expect(outputs(rest!.lines)).toEqual(['line 4', 'line 5']);
    await completeJob(t.db.pool, jobId);
    const end = await readBuildLogs(t.db.pool, buildId, rest!.lines[1]!.id, 3);
    expect(end).toEqual({ lines: [], done: true, jobId });
  });

  it('readBuildLogs › is undefined for an unknown build and refuses a bad cursor', async () => {
    await expect(readBuildLogs(t.db.pool, crypto.randomUUID(), '0', 10)).resolves.toBeUndefined();
    await expect(readBuildLogs(t.db.pool, 'not-a-uuid', '0', 10)).resolves.toBeUndefined();
    await expect(readBuildLogs(t.db.pool, crypto.randomUUID(), '-1', 10)).rejects.toThrow(
      new ValidationError(
        'invalid after "-1": expected a log line id (a non-negative integer, 0 = from the first line)',
      ),
    );
    await expect(readBuildLogs(t.db.pool, crypto.randomUUID(), '99999999999999999999', 10)).rejects.toThrow(
      ValidationError,
    );
  });

  it('followBuildLogs › delivers every line live, in order, then ends once the job completes', async () => {
    const { buildId, jobId } = await runningBuild();
    await writeLines(jobId, 1, 2);
    const seen: BuildLogLine[] = [];
    const batches: number[] = [];
    const following = (async () => {
      for await (const batch of followBuildLogs(t.db.pool, t.hub, buildId, { batchSize: 50 })) {
        batches.push(batch.length);
        seen.push(...batch);
      }
    })();
    await expect.poll(() => seen.length, { timeout: 5_000 }).toBe(2);
    for (let n = 3; n <= 203; n += 20) await writeLines(jobId, n, n + 19);
    await expect.poll(() => seen.length, { timeout: 5_000 }).toBe(222);
    await writeLines(jobId, 223, 230);
    await completeJob(t.db.pool, jobId);
    await following;
    expect(outputs(seen)).toEqual(Array.from({ length: 230 }, (_, i) => `line ${i + 1}`));
    expect(Math.max(...batches)).toBeLessThanOrEqual(50);
  });

  it('followBuildLogs › resumes after a cursor without repeating, and yields one empty batch for a quiet build', async () => {
    const { buildId, jobId } = await runningBuild();
    await writeLines(jobId, 1, 4);
    const page = await readBuildLogs(t.db.pool, buildId, '0', 2);
    await completeJob(t.db.pool, jobId);
    const resumed: BuildLogLine[][] = [];
    for await (const batch of followBuildLogs(t.db.pool, t.hub, buildId, { after: page!.lines[1]!.id }))
      resumed.push(batch);
    expect(resumed.map(outputs)).toEqual([['line 3', 'line 4']]);

    const quiet: BuildLogLine[][] = [];
    for await (const batch of followBuildLogs(t.db.pool, t.hub, buildId, { after: page!.lines[1]!.id + '0' }))
      quiet.push(batch);
    expect(quiet).toEqual([[]]);
  });

  it('followBuildLogs › throws UnknownBuildError for an unknown build', async () => {
    const buildId = crypto.randomUUID();
    const iterator = followBuildLogs(t.db.pool, t.hub, buildId);
    await expect(iterator.next()).rejects.toThrow(new UnknownBuildError(buildId));
  });

  it('followBuildLogs › an abort ends the wait and removes its listeners', async () => {
    const { buildId, jobId } = await runningBuild();
    const controller = new AbortController();
    const iterator = followBuildLogs(t.db.pool, t.hub, buildId, { signal: controller.signal });
    await expect(iterator.next()).resolves.toEqual({ done: false, value: [] });
    const waiting = iterator.next();
    const reason = new Error('client left');
    controller.abort(reason);
    await expect(waiting).rejects.toBe(reason);
    // The hub drops a topic with its last listener.
    const listening = (t.hub as unknown as { listeners: Map<string, unknown> }).listeners;
    expect(listening.has(topics.provisionerJobLogs(jobId))).toBe(false);
    expect(listening.has(topics.provisionerJob(jobId))).toBe(false);
  });

  it('followBuildLogs › a build that stays quiet past idleTimeoutMs ends with a WaitTimeoutError naming it', async () => {
    const { buildId } = await runningBuild();
    const iterator = followBuildLogs(t.db.pool, t.hub, buildId, { idleTimeoutMs: 100 });
    await iterator.next();
    await expect(iterator.next()).rejects.toThrow(
      new WaitTimeoutError(`build ${buildId} wrote no log line and did not complete for 100 ms`, 100),
    );
  });
});
