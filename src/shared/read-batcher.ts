// Concurrent reads of the same shape, coalesced into one query per batch (issue 11: a burst of k completed
// builds wakes k waiting jobs, each reading its one row; one `= ANY($1)` query serves them all). DataLoader's
// batching without its cache: a read joins only a batch that has not been sent yet, so its answer always comes
// from a query sent after it was asked, and a read asked after a write sees the write.
// The chat locks released in one turn go through it too (lock-releaser.ts): one delete script per batch.

export interface ReadBatcherOptions<K> {
  /**
   * Most distinct keys one load is given; a batch that collected more runs as several loads, each settling
   * only its own callers. Default 500.
   */
  maxBatchSize?: number;
  /**
   * What makes two keys the same read, answered by one value (e.g. a string for a composite key). Default:
   * the key itself (Map identity, right for strings).
   */
  identify?: (key: K) => unknown;
}

interface Caller<V> {
  resolve: (value: V) => void;
  reject: (error: unknown) => void;
}

interface Batch<K, V> {
  keys: K[];
  /** The callers of each key, at its index in `keys`. */
  waiting: Caller<V>[][];
  byId: Map<unknown, Caller<V>[]>;
}

/**
 * Collects the keys asked for (`get`) until the current turn of the event loop is over (setImmediate: after
 * every callback of this I/O round and its promise continuations), then gives them to `load` at once.
 * `load` answers one value per key, in the order of the keys. A load that fails rejects every caller of
 * that load; nothing is remembered between batches, so the next read queries again.
 */
export class ReadBatcher<K, V> {
  private readonly maxBatchSize: number;
  private readonly identify: (key: K) => unknown;
  private collecting: Batch<K, V> | undefined;

  constructor(
    private readonly load: (keys: readonly K[]) => Promise<readonly V[]>,
    options: ReadBatcherOptions<K> = {},
  ) {
    this.maxBatchSize = options.maxBatchSize ?? 500;
    if (!Number.isInteger(this.maxBatchSize) || this.maxBatchSize < 1) {
      throw new RangeError(`maxBatchSize must be a whole number of at least 1, got ${options.maxBatchSize}`);
    }
    this.identify = options.identify ?? ((key) => key);
  }

  /** The value `load` gives for `key`, from a load sent after this call. */
  get(key: K): Promise<V> {
    let batch = this.collecting;
    if (!batch) {
      batch = this.collecting = { keys: [], waiting: [], byId: new Map() };
      setImmediate(() => this.send());
    }
    const id = this.identify(key);
    let callers = batch.byId.get(id);
    if (!callers) {
      batch.byId.set(id, (callers = []));
      batch.keys.push(key);
      batch.waiting.push(callers);
    }
    return new Promise<V>((resolve, reject) => callers.push({ resolve, reject }));
  }

  private send(): void {
    const batch = this.collecting!;
    this.collecting = undefined;
    for (let start = 0; start < batch.keys.length; start += this.maxBatchSize) {
      const end = start + this.maxBatchSize;
      void this.run(batch.keys.slice(start, end), batch.waiting.slice(start, end));
    }
  }

  private async run(keys: K[], waiting: Caller<V>[][]): Promise<void> {
    try {
      const values = await this.load(keys);
      if (values.length !== keys.length) {
        throw new Error(`batched load answered ${values.length} values for ${keys.length} keys`);
      }
      waiting.forEach((each, i) => each.forEach((caller) => caller.resolve(values[i] as V)));
    } catch (error) {
      for (const each of waiting) each.forEach((caller) => caller.reject(error));
    }
  }
}
