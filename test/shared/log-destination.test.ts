// The daemons' log destination: one write per event-loop turn, in order, bounded while the reader stalls.
import { execFileSync } from 'node:child_process';
import { closeSync, constants, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LogDestination } from '../../src/shared/log-destination.js';

let dir: string;
const opened: number[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'wsj-log-destination-'));
});

afterEach(() => {
  for (const fd of opened.splice(0)) closeSync(fd);
  rmSync(dir, { recursive: true, force: true });
});

function open(path: string, flags: number): number {
  const fd = openSync(path, flags);
  opened.push(fd);
  return fd;
}

/** A named pipe whose reader reads only when asked: `readUntil` reads until what it has read passes `done`. */
function stalledPipe() {
  const path = join(dir, 'fifo');
  execFileSync('mkfifo', [path]);
  // Read-write, so that the open does not wait for a reader; non-blocking, so that a full pipe is EAGAIN.
  const writeFd = open(path, constants.O_RDWR | constants.O_NONBLOCK);
  const readFd = open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  const chunks: Buffer[] = [];
  const buffer = Buffer.alloc(1 << 16);
  const readAvailable = () => {
    for (;;) {
      try {
        const n = readSync(readFd, buffer);
        if (n === 0) return;
        chunks.push(Buffer.from(buffer.subarray(0, n)));
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'EAGAIN') return;
        throw error;
      }
    }
  };
  // Decoded whole: a read may end inside a character.
  const text = () => Buffer.concat(chunks).toString('utf8');
  const readUntil = async (done: (text: string) => boolean) => {
    await expect
      .poll(() => {
        readAvailable();
        return done(text());
      })
      .toBe(true);
    return text();
  };
  return { writeFd, readUntil };
}

const line = (i: number) => `${JSON.stringify({ i })}\n`;

describe('a log destination', () => {
  describe('when lines are logged in one turn', () => {
    it('› writes none of them during the turn, and all of them, in order, at its end', async () => {
      const path = join(dir, 'log');
      const destination = new LogDestination({ fd: open(path, constants.O_WRONLY | constants.O_CREAT) });
      for (let i = 1; i <= 3; i++) destination.write(line(i));
      expect(readFileSync(path, 'utf8')).toBe('');
      await nextTurn();
      expect(readFileSync(path, 'utf8')).toBe(line(1) + line(2) + line(3));
    });
  });

  describe('when flushed', () => {
    it('› writes what it holds at once, after what it wrote before', async () => {
      const path = join(dir, 'log');
      const destination = new LogDestination({ fd: open(path, constants.O_WRONLY | constants.O_CREAT) });
      destination.write(line(1));
      await nextTurn();
      destination.write(line(2));
      destination.write(line(3));
      destination.flushSync();
      expect(readFileSync(path, 'utf8')).toBe(line(1) + line(2) + line(3));
    });
  });

  describe('when the reader stops reading (a full non-blocking pipe)', () => {
    it('› holds what it cannot write, drops lines beyond its bound, and says how many once the reader is back', async () => {
      const pipe = stalledPipe();
      const destination = new LogDestination({ fd: pipe.writeFd, maxHeldChars: 200_000 });
      const big = 'x'.repeat(1_000);
      const accepted: string[] = [];
      // About 1 MB: past the pipe's buffer (64 KiB) and past the bound, over several turns.
      for (let i = 1; i <= 1_000; i++) {
        const text = `${JSON.stringify({ i, big })}\n`;
        if (destination.write(text)) accepted.push(text);
        if (i % 50 === 0) await nextTurn();
      }
      expect(accepted.length).toBeGreaterThan(100);
      expect(accepted.length).toBeLessThan(300);
      const received = await pipe.readUntil((text) => text.includes('dropped'));
      const lines = received.trimEnd().split('\n');
      expect(lines.slice(0, -1)).toEqual(accepted.map((text) => text.trimEnd()));
      expect(JSON.parse(lines.at(-1)!)).toMatchObject({
        level: 40,
        msg: `${1_000 - accepted.length} log line(s) dropped: the log's reader took nothing for too long`,
      });
    });
  });

  describe('when a flush waits in vain for a stalled reader', () => {
    it('› gives up after its timeout, keeps every line, and writes them all, whole and in order, once the reader is back', async () => {
      const pipe = stalledPipe();
      const destination = new LogDestination({ fd: pipe.writeFd, flushTimeoutMs: 1_000 });
      // Multi-byte characters, so that the pipe's partial writes split some of them.
      const text = 'é€😀'.repeat(300);
      const accepted: string[] = [];
      for (let i = 1; i <= 100; i++) {
        const entry = `${JSON.stringify({ i, text })}\n`;
        expect(destination.write(entry)).toBe(true);
        accepted.push(entry);
      }
      let started = performance.now();
      destination.flushSync();
      expect(performance.now() - started).toBeGreaterThanOrEqual(990);
      started = performance.now();
      destination.flushSync();
      // Stalled: it tries once, without waiting out its timeout again.
      expect(performance.now() - started).toBeLessThan(500);
      const all = accepted.join('');
      expect(await pipe.readUntil((text) => text.length >= all.length)).toBe(all);
    });
  });

  describe('when the reader is gone (EPIPE)', () => {
    it('› neither throws nor writes, and refuses further lines', async () => {
      const path = join(dir, 'fifo');
      execFileSync('mkfifo', [path]);
      const readFd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
      const fd = open(path, constants.O_WRONLY | constants.O_NONBLOCK);
      closeSync(readFd);
      const destination = new LogDestination({ fd });
      expect(destination.write(line(1))).toBe(true);
      await nextTurn();
      expect(() => destination.flushSync()).not.toThrow();
      expect(destination.write(line(2))).toBe(false);
    });
  });
});
