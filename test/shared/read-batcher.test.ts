// ReadBatcher (src/shared/read-batcher.ts) with an in-memory load: what it gives the load and whom each
// answer or failure reaches. Its use on Postgres is test/worker/pg-store-batches.test.ts.
import { describe, expect, it } from 'vitest';
import { ReadBatcher } from '../../src/shared/read-batcher.js';

/** A load that records the keys of each call and answers each key doubled, failing on a key of 0. */
function doubling() {
  const loads: number[][] = [];
  const load = async (keys: readonly number[]) => {
    loads.push([...keys]);
    if (keys.includes(0)) throw new Error('no zeros');
    return keys.map((k) => k * 2);
  };
  return { loads, load };
}

describe('ReadBatcher', () => {
  it('when a key is asked twice at once › the load gets it once and both callers its value', async () => {
    const { loads, load } = doubling();
    const batcher = new ReadBatcher(load);

    expect(await Promise.all([batcher.get(1), batcher.get(2), batcher.get(1)])).toEqual([2, 4, 2]);
    expect(loads).toEqual([[1, 2]]);
  });

  it('when keys are composite › identify says which are the same read', async () => {
    const loads: { id: number; since: number }[][] = [];
    const batcher = new ReadBatcher(
      async (keys: readonly { id: number; since: number }[]) => {
        loads.push([...keys]);
        return keys.map((k) => k.id + k.since);
      },
      { identify: (k) => `${k.id} ${k.since}` },
    );

    const answers = await Promise.all([
      batcher.get({ id: 1, since: 10 }),
      batcher.get({ id: 1, since: 10 }),
      batcher.get({ id: 1, since: 20 }),
    ]);

    expect(answers).toEqual([11, 11, 21]);
    expect(loads).toEqual([
      [
        { id: 1, since: 10 },
        { id: 1, since: 20 },
      ],
    ]);
  });

  it('when more keys are asked at once than maxBatchSize › each load gets at most that many, and a failing one rejects only its callers', async () => {
    const { loads, load } = doubling();
    const batcher = new ReadBatcher(load, { maxBatchSize: 2 });

    const answers = await Promise.allSettled([1, 2, 0, 3, 4].map((k) => batcher.get(k)));

    expect(loads).toEqual([[1, 2], [0, 3], [4]]);
    expect(answers.map((a) => (a.status === 'fulfilled' ? a.value : 'rejected'))).toEqual([
      2,
      4,
      'rejected',
      'rejected',
      8,
    ]);
  });

  it('when keys are asked after a batch was sent › they go into a batch of their own', async () => {
    const { loads, load } = doubling();
    const batcher = new ReadBatcher(load);

    await batcher.get(1);
    await batcher.get(1);

    expect(loads).toEqual([[1], [1]]);
  });

  it('when the load answers another number of values than keys › its callers are rejected, saying so', async () => {
    const batcher = new ReadBatcher(async (keys: readonly number[]) => keys.slice(1));

    await expect(Promise.all([batcher.get(1), batcher.get(2)])).rejects.toThrow(
      'batched load answered 1 values for 2 keys',
    );
  });

  it('when maxBatchSize is not a whole number of at least 1 › the constructor throws, naming it', () => {
    const { load } = doubling();
    expect(() => new ReadBatcher(load, { maxBatchSize: 0 })).toThrow(
      'maxBatchSize must be a whole number of at least 1, got 0',
    );
  });
});
