// Releases the chat locks of one ChatLocks (one process) that let go in the same turn of the event loop with
// one command per lock node, as lock-refresher.ts refreshes them: 10,000 builds completed at once end 10,000
// jobs within seconds, and a compare-and-delete script each was a write and a round trip of its own per
// lock (issue 11).
//
// Per lock, per node answer, the vote is redis-semaphore's release's and lock.ts's QuorumMutex's: a node that
// answered (deleted, or the key was not ours any more) counts, and the release is done once a quorum has
// answered; too few nodes reached (a refused, failed or timed-out command) fails it, and the key expires on
// its own. On a Redis Cluster one script's keys must be in one slot: every chat lock key is under the prefix,
// whose hash tag REDIS_CLUSTER requires.
import { askNodes, countBatchVotes, type Vote } from './lock-vote.js';
import { MAX_KEYS_PER_COMMAND, eachKeyStillOurs } from './lock-refresher.js';
import { ReadBatcher } from './read-batcher.js';
import type { RedisClient } from './redis.js';

/** DEL each key still holding its token. */
const releaseEach = eachKeyStillOurs("redis.call('del', key)");

/** What the releaser needs of a lock. */
export interface ReleasedLock {
  readonly resource: string;
  readonly identifier: string;
}

export interface LockReleaserOptions {
  clients: RedisClient[];
  /** How long a node may take to answer a batch before it counts as unreachable for every lock in it. */
  nodeTimeoutMs: number;
  /** Redlock: a node's command failed (lock.ts reconnects a hung node's client). */
  onNodeError?: (client: RedisClient, error: unknown) => void;
}

/** A lock's release vote, and why a node could not be reached when one could not. */
export interface ReleaseOutcome {
  vote: Vote;
  cause?: string;
}

export class LockReleaser {
  // The read batcher's collecting and chunking: a batch's locks are deleted by one script per node.
  private readonly batcher: ReadBatcher<ReleasedLock, ReleaseOutcome>;

  constructor(private readonly options: LockReleaserOptions) {
    this.batcher = new ReadBatcher((locks) => this.releaseBatch(locks), {
      maxBatchSize: MAX_KEYS_PER_COMMAND,
    });
  }

  /**
   * Deletes `lock`'s key on every node where it still holds its identifier, with the other locks released in
   * this turn of the event loop; resolves with its vote.
   */
  release(lock: ReleasedLock): Promise<ReleaseOutcome> {
    return this.batcher.get(lock);
  }

  /** One script per node for the batch, then each lock's vote. */
  private async releaseBatch(locks: readonly ReleasedLock[]): Promise<ReleaseOutcome[]> {
    const { clients, nodeTimeoutMs, onNodeError } = this.options;
    const keys = locks.map((lock) => lock.resource);
    const identifiers = locks.map((lock) => lock.identifier);
    // Every node that answers counts as yes, whether it deleted the key or it was not ours there any more.
    const noneRefused: number[] = [];
    const { answers, cause } = askNodes(
      clients,
      async (client) => {
        await releaseEach.run(client, keys, identifiers);
        return noneRefused;
      },
      onNodeError,
    );
    const outcomes = new Array<ReleaseOutcome>(locks.length);
    await countBatchVotes(answers, locks.length, nodeTimeoutMs, (i, vote) => {
      const failed = cause();
      outcomes[i] = { vote, ...(failed !== undefined && { cause: failed }) };
    });
    return outcomes;
  }
}
