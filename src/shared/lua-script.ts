// A Lua script run by EVALSHA, and loaded by EVAL when the server does not know it yet (NOSCRIPT), as ioredis'
// defineCommand does, but without defining a command on the connection. ioredis copies a connection's defined
// commands into each auto-pipeline when it makes the pipeline, so a command defined while one is open is
// missing from it: the call throws, and that pipeline's replies no longer line up with its callbacks (an
// uncaught exception). EVALSHA and EVAL are built in, so every pipeline has them, and the number of keys is
// given per call.
import { createHash } from 'node:crypto';
import type { RedisClient } from './redis.js';

export class LuaScript {
  readonly sha: string;

  constructor(readonly text: string) {
    this.sha = createHash('sha1').update(text).digest('hex');
  }

  async run(
    redis: RedisClient,
    keys: readonly string[],
    args: readonly (string | number)[],
  ): Promise<unknown> {
    try {
      return await redis.evalsha(this.sha, keys.length, ...keys, ...args);
    } catch (error) {
      if (!(error instanceof Error) || !error.message.startsWith('NOSCRIPT')) throw error;
      return redis.eval(this.text, keys.length, ...keys, ...args);
    }
  }
}
