// pino logs on stderr, for every command: stdout is for what a command prints as its output (`watch` and
// `enqueue --wait` JSON lines, `seed`'s ids), which a pipe must get alone. Pretty only when stderr is a
// terminal (and pino-pretty, a dev dependency, is installed); JSON lines otherwise.
import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';

export type { Logger };

function prettyAvailable(): boolean {
  try {
    createRequire(import.meta.url).resolve('pino-pretty');
    return true;
  } catch {
    return false;
  }
}

export function createLogger(level: string, name?: string): Logger {
  if (process.stderr.isTTY && prettyAvailable()) {
    return pino({
      level,
      name,
      transport: { target: 'pino-pretty', options: { colorize: true, destination: 2 } },
    });
  }
  // Synchronous, as pino writes stdout by default: a line logged just before an exit is not lost.
  return pino({ level, name }, pino.destination({ fd: 2, sync: true }));
}
