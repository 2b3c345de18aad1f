// The daemons' background logger (issue 11) loses nothing when the process ends right after logging.
import { afterEach, describe, expect, it } from 'vitest';
import { CliProcess, killAll, logLines } from '../helpers/cli-process.js';

const LINES = 5_000;
const EXIT_MS = 15_000;

afterEach(killAll);

const numbers = (stderr: string[]) => logLines(stderr).map((l) => (l as unknown as { i: number }).i);
const oneTo = (n: number) => Array.from({ length: n }, (_, i) => i + 1);

describe('a background (asynchronous) logger', () => {
  it('when the process calls process.exit right after logging › every line reaches stderr, in order', async () => {
    const cli = new CliProcess('log-then-exit', ['exit', String(LINES)], {}, 'test/helpers/log-then-exit.ts');
    expect(await cli.waitForExit(EXIT_MS)).toEqual({ code: 3, signal: null });
    expect(numbers(cli.stderr)).toEqual(oneTo(LINES));
  });

  it('when a command fails › its log lines come before its one-line error', async () => {
    const cli = new CliProcess('log-then-exit', ['fail', String(LINES)], {}, 'test/helpers/log-then-exit.ts');
    expect(await cli.waitForExit(EXIT_MS)).toEqual({ code: 1, signal: null });
    expect(numbers(cli.stderr)).toEqual(oneTo(LINES));
    expect(cli.stderr.at(-1)).toBe('log-then-exit: the last word');
  });
});
