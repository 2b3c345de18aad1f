// `workspace-jobs watch` as a real process in a shell pipeline: its stdout carries JSON lines only (logs go to
// stderr), and when the reader goes away (`| head -n 3`) the next write's EPIPE ends it quietly with exit 0.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { EventPublisher } from '../../src/shared/events.js';
import type { WorkspaceJobEvent } from '../../src/shared/contract.js';
import { closeRedis, type Redis } from '../../src/shared/redis.js';
import { logLines, REPO_ROOT } from '../helpers/cli-process.js';
import { draft } from '../helpers/events.js';
import { TEST_REDIS_URL, deleteKeys, testRedis, uniquePrefix } from '../helpers/redis.js';

const EXIT_MS = 20_000;

describe('workspace-jobs watch', () => {
  let redis: Redis;
  let prefix: string;
  let publisher: EventPublisher;
  const groups: number[] = [];

  beforeEach(() => {
    redis = testRedis();
    prefix = uniquePrefix('watch');
    publisher = new EventPublisher(redis, prefix);
  });

  afterEach(async () => {
    for (const pid of groups.splice(0)) {
      try {
        process.kill(-pid, 'SIGKILL');
      } catch {
        // ESRCH: the group is gone already.
      }
    }
    await deleteKeys(redis, prefix);
    await closeRedis(redis);
  });

  /** Runs `shell` with bash in a process group of its own; resolves with its exit code and output. */
  function runShell(shell: string, env: Record<string, string>) {
    const child = spawn('bash', ['-c', shell], {
      cwd: REPO_ROOT,
      env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
    });
    groups.push(child.pid!);
    const output = { stdout: '', stderr: '' };
    child.stdout.on('data', (chunk: Buffer) => (output.stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output.stderr += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    return { exited, output };
  }

  it('| head -n 3: prints three JSON event lines, then exits 0 at its next write, without a stack trace', async () => {
    const chatId = randomUUID();
    for (let n = 1; n <= 5; n++) await publisher.publish(draft(chatId, n));
    const pipeline = runShell(
      `node --import tsx src/cli/main.ts watch --chat ${chatId} | head -n 3; echo "watch exit \${PIPESTATUS[0]}" >&2`,
      { REDIS_URL: TEST_REDIS_URL, QUEUE_PREFIX: prefix, LOG_LEVEL: 'info' },
    );

    // watch notices that head has gone only when it next writes: live events keep coming until it exits.
    let exited = false;
    void pipeline.exited.then(() => (exited = true));
    let n = 6;
    await vi.waitFor(
      async () => {
        if (!exited) await publisher.publish(draft(chatId, n++));
        expect(exited, `watch did not exit: ${JSON.stringify(pipeline.output)}`).toBe(true);
      },
      { timeout: EXIT_MS, interval: 100 },
    );

    const { stdout, stderr } = pipeline.output;
    const lines = stdout.trimEnd().split('\n');
    const events = lines.map((line) => JSON.parse(line) as WorkspaceJobEvent);
    expect(events.map((e) => e.message)).toEqual(['event 1', 'event 2', 'event 3']);
    expect(events.every((e) => e.chatId === chatId)).toBe(true);
    // Its own exit status (not head's), and it stopped because stdout closed: no crash, no stack trace.
    expect(stderr).toContain('watch exit 0');
    const stderrLines = stderr.trimEnd().split('\n');
    expect(logLines(stderrLines).map((l) => [l.msg, l.reason])).toContainEqual(['stopping', 'stdout closed']);
    expect(stderr).not.toMatch(/EPIPE|Error|\n\s+at /);
  }, 30_000);
});
