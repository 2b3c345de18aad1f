// A worker that holds thousands of waiting jobs (issue 11: 10,000 in one process) promotes much of their
// starts' short-lived garbage while they ramp up; once it dies, V8's old-space pages are left about half
// full of the waiters' long-lived state, and its default compaction moves a few megabytes per full GC, so
// the process keeps about twice its live heap (10,000 waiters: 330 MiB of old space for 160 live). Compacting
// on every full GC gives those pages back at the GC that follows the ramp, for longer pauses of the few full
// GCs (about 160 ms at 160 MiB live, against 15; a scavenge is unchanged), well inside the job locks' timing.
import { setFlagsFromString } from 'node:v8';

const FLAG = 'compact-on-every-full-gc';
/** Node's options that turn the flag off: V8 reads `_` as `-`, and a negation as `--no-flag` or `--noflag`. */
const OPT_OUTS = new Set([`--no-${FLAG}`, `--no${FLAG}`]);
const asV8ReadsIt = (arg: string) => arg.replaceAll('_', '-');

/** Whether this process compacts on every full GC: V8 has no getter for its flags, so this module keeps it. */
let compacting = process.execArgv.some((arg) => asV8ReadsIt(arg) === `--${FLAG}`);

/**
 * Makes every full GC of this process compact its old space, unless the process was started with
 * `--no-compact-on-every-full-gc` (the operator's choice wins). Returns whether it is on. V8 reads the flag at
 * each full GC, so setting it at start-up, after the VM has started, takes effect from the next one.
 */
export function compactHeapOnFullGc(execArgv: readonly string[] = process.execArgv): boolean {
  if (execArgv.some((arg) => OPT_OUTS.has(asV8ReadsIt(arg)))) return false;
  setFlagsFromString(`--${FLAG}`);
  compacting = true;
  return true;
}

/** Whether every full GC of this process compacts (compactHeapOnFullGc, or node's own flag). */
export function heapCompactedOnFullGc(): boolean {
  return compacting;
}
