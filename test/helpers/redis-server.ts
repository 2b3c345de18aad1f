// redis-server processes of a test's own, to kill, freeze and bring back (the shared Redis must never be
// touched): each on a free loopback port, in a temp dir, without persistence, in a process group of its own
// so that stop() kills whatever it started.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const START_TIMEOUT_MS = 10_000;

/** A loopback port nobody listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() =>
        typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port')),
      );
    });
  });
}

export class RedisServerProcess {
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();

  private constructor(
    readonly port: number,
    private readonly dir: string,
  ) {}

  /** A new redis-server on a free port, once it accepts connections. */
  static async start(): Promise<RedisServerProcess> {
    const server = new RedisServerProcess(await freePort(), mkdtempSync(join(tmpdir(), 'wsjobs-redis-')));
    await server.restart();
    return server;
  }

  /** `count` servers, started in parallel. */
  static startMany(count: number): Promise<RedisServerProcess[]> {
    return Promise.all(Array.from({ length: count }, () => RedisServerProcess.start()));
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== undefined;
  }

  /** Starts the server again on the same port (empty: nothing is persisted). */
  async restart(): Promise<void> {
    if (this.child) throw new Error(`redis-server on port ${this.port} is already running`);
    const child = spawn(
      'redis-server',
      [
        '--port',
        String(this.port),
        '--bind',
        '127.0.0.1',
        '--dir',
        this.dir,
        '--save',
        '',
        '--appendonly',
        'no',
      ],
      { detached: true, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.child = child;
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    void this.exited.then(() => {
      if (this.child === child) this.child = undefined;
    });
    await new Promise<void>((resolve, reject) => {
      let output = '';
      const timer = setTimeout(() => fail(`not ready within ${START_TIMEOUT_MS} ms`), START_TIMEOUT_MS);
      const fail = (why: string) => {
        clearTimeout(timer);
        reject(new Error(`redis-server on port ${this.port}: ${why}\n${output}`));
      };
      child.once('error', (error) => fail(error.message));
      child.once('exit', (code) => fail(`exited with ${code}`));
      child.stdout!.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        if (output.includes('Ready to accept connections')) {
          clearTimeout(timer);
          resolve();
        }
      });
      child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    });
  }

  /** SIGKILL: the node is gone, connections to it are refused until restart(). */
  async kill(): Promise<void> {
    this.signal('SIGKILL');
    await this.exited;
  }

  /** SIGSTOP: the node hangs; the kernel still accepts connections and data, nothing answers. */
  freeze(): void {
    this.signal('SIGSTOP');
  }

  /** SIGCONT after freeze(). */
  thaw(): void {
    this.signal('SIGCONT');
  }

  /** Kills the process group (if running) and removes the temp dir. */
  async stop(): Promise<void> {
    if (this.child) await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private signal(signal: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (pid === undefined) throw new Error(`redis-server on port ${this.port} is not running`);
    process.kill(-pid, signal);
  }
}
