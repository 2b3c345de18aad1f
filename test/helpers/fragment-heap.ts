// Fragments this process's old space as a worker's ramp does (objects that live on, promoted among garbage
// that dies there), runs full GCs and prints, as JSON on stdout, whether compaction was turned on and the old
// space's committed and used MiB. Needs node's --expose-gc.
import { getHeapSpaceStatistics } from 'node:v8';
import { compactHeapOnFullGc } from '../../src/worker/heap-compaction.js';

const compacting = compactHeapOnFullGc();
const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) throw new Error('fragment-heap needs node --expose-gc');

const kept: ({ i: number; name: string; tags: number[] } | undefined)[] = [];
for (let i = 0; i < 2_000_000; i++) {
  const made = { i, name: `waiter ${i}`, tags: [i] };
  if (i % 3 === 0) kept.push(made);
}
gc();
// Three of every four kept objects die in old space: their pages are left a quarter full.
for (let i = 0; i < kept.length; i++) if (i % 4 !== 0) kept[i] = undefined;
gc();
gc();
const old = getHeapSpaceStatistics().find((space) => space.space_name === 'old_space')!;
const mb = (bytes: number) => bytes / 2 ** 20;
console.log(
  JSON.stringify({
    compacting,
    committedMb: mb(old.space_size),
    usedMb: mb(old.space_used_size),
    kept: kept.length,
  }),
);
