// The worker command compacts its heap on every full GC (issue 11: 10,000 waiters in one process), unless
// the operator starts node with --no-compact-on-every-full-gc. V8 flags are per process: each case runs one.
import { afterAll, afterEach, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { compactHeapOnFullGc } from '../../src/worker/heap-compaction.js';
import { CliProcess, killAll } from '../helpers/cli-process.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { TEST_REDIS_URL, removePrefix, uniquePrefix } from '../helpers/redis.js';

const EXIT_MS = 30_000;

afterEach(killAll);

async function fragmentHeap(nodeArgs: string[]) {
  const child = new CliProcess('fragment-heap', [], {}, 'test/helpers/fragment-heap.ts', [
    '--expose-gc',
    ...nodeArgs,
  ]);
  expect(await child.waitForExit(EXIT_MS)).toEqual({ code: 0, signal: null });
  return JSON.parse(child.stdout.at(-1)!) as { compacting: boolean; committedMb: number; usedMb: number };
}

describe('heap compaction on every full GC', () => {
  it('when on › the old space left fragmented by objects dying there is given back', async () => {
    const { compacting, committedMb, usedMb } = await fragmentHeap([]);
    expect(compacting).toBe(true);
    expect(committedMb / usedMb).toBeLessThan(1.25);
  });

  it('when the operator starts node with --no-compact-on-every-full-gc › it stays off and the pages stay committed', async () => {
    const { compacting, committedMb, usedMb } = await fragmentHeap(['--no-compact-on-every-full-gc']);
    expect(compacting).toBe(false);
    expect(committedMb / usedMb).toBeGreaterThan(1.5);
  });

  it.each(['--no-compact-on-every-full-gc', '--no_compact_on_every_full_gc', '--nocompact-on-every-full-gc'])(
    'when node was started with %s › it is not turned on',
    (optOut) => {
      expect(compactHeapOnFullGc(['--expose-gc', optOut])).toBe(false);
    },
  );

  describe('the worker command', () => {
    let db: TestDatabase;

    beforeAll(async () => {
      db = await createTestDatabase();
    });

    afterAll(async () => {
      await db?.drop();
    });

    it.each([
      ['by default › turns it on', [], true],
      [
        'when node is started with --no-compact-on-every-full-gc › leaves it off',
        ['--no-compact-on-every-full-gc'],
        false,
      ],
    ])('%s, and says so when it starts', async (_, nodeArgs, on) => {
      const prefix = uniquePrefix('heap-compaction');
      onTestFinished(() => removePrefix(prefix));
      const worker = new CliProcess(
        'worker',
        ['worker'],
        { REDIS_URL: TEST_REDIS_URL, DATABASE_URL: db.url, QUEUE_PREFIX: prefix, LOG_LEVEL: 'info' },
        undefined,
        nodeArgs,
      );
      const started = await worker.waitForLog('worker started', (l) => l.msg === 'worker started');
      expect(started.heapCompactedOnFullGc).toBe(on);
      expect(await worker.stop('SIGTERM')).toEqual({ code: 0, signal: null });
    });
  });
});
