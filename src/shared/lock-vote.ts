// Counting the answers of independent Redlock nodes. redis-semaphore's RedlockMutex awaits every node
// (Promise.all) before it decides, so one node that does not answer makes each acquire, refresh and release
// as slow as that node's timeout. A vote here is decided by the first answers that settle it: a quorum of
// "yes", or enough "no" and unreachable nodes that no quorum is left. A node still silent after `timeoutMs`
// counts as unreachable; its command goes on in the background (bounded by the client's command timeout).
// A batch (the refresh of many locks by one command per node) is one vote per lock, counted from each node's
// one answer for all of them.

import type { RedisClient } from './redis.js';

export interface Vote {
  /** A quorum of nodes said yes. */
  readonly won: boolean;
  readonly yes: number;
  readonly no: number;
  /** Nodes whose command failed (refused, timed out, not connected) or that were still silent. */
  readonly unreachable: number;
  readonly nodes: number;
  readonly quorum: number;
  /** Lost because too few nodes could be reached: no answer of theirs could have made a quorum. */
  readonly quorumUnavailable: boolean;
}

/** A majority: 2 of 3, 3 of 5. */
export function quorumOf(nodes: number): number {
  return Math.floor(nodes / 2) + 1;
}

/** Resolves as soon as `answers` (one per node: true = yes, false = no, rejected = unreachable) decide. */
export function countVotes(answers: Promise<boolean>[], timeoutMs: number): Promise<Vote> {
  return new Promise((resolve) => {
    void countBatchVotes(
      answers.map((answer) => answer.then((yes) => (yes ? [] : [0]))),
      1,
      timeoutMs,
      (_, vote) => resolve(vote),
    );
  });
}

/**
 * `size` votes at once: each node answers once for all of them (`answers`, one per node: the indexes of the
 * votes it says no to, yes to all the others; rejected = unreachable for all). Calls `onDecided` for each
 * vote as soon as it is decided, and resolves once every one is, at the latest after `timeoutMs`. Votes with
 * the same counts share one Vote object, and the counting allocates nothing per vote: a refresh batch of
 * thousands of locks whose nodes all say yes costs one pass.
 */
export function countBatchVotes(
  answers: Promise<readonly number[]>[],
  size: number,
  timeoutMs: number,
  onDecided: (index: number, vote: Vote) => void,
): Promise<void> {
  const nodes = answers.length;
  const quorum = quorumOf(nodes);
  /** Per vote, the nodes that said no; every other node that answered said yes. */
  const no = new Uint8Array(size);
  const decided = new Uint8Array(size);
  let answered = 0;
  let unreachable = 0;
  let undecided = size;
  const shared = new Map<number, Vote>();
  const voteOf = (yes: number, no: number, unreached: number): Vote => {
    const key = (yes * (nodes + 1) + no) * (nodes + 1) + unreached;
    let vote = shared.get(key);
    if (!vote) {
      const won = yes >= quorum;
      vote = {
        won,
        yes,
        no,
        unreachable: unreached,
        nodes,
        quorum,
        quorumUnavailable: !won && nodes - unreached < quorum,
      };
      shared.set(key, vote);
    }
    return vote;
  };
  return new Promise((resolve) => {
    if (size === 0) return resolve();
    const decide = (timedOut: boolean) => {
      const unanswered = timedOut ? nodes - answered - unreachable : 0;
      for (let i = 0; i < size; i++) {
        if (decided[i]) continue;
        const noes = no[i]!;
        const yes = answered - noes;
        const won = yes >= quorum;
        const lost = nodes - noes - unreachable < quorum;
        if (!won && !lost && !timedOut) continue;
        decided[i] = 1;
        undecided--;
        onDecided(i, voteOf(yes, noes, unreachable + unanswered));
      }
      if (undecided > 0) return;
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => decide(true), timeoutMs);
    for (const answer of answers) {
      answer.then(
        (noTo) => {
          if (undecided === 0) return;
          answered++;
          for (const i of noTo) no[i]!++;
          decide(false);
        },
        () => {
          if (undecided === 0) return;
          unreachable++;
          decide(false);
        },
      );
    }
  });
}

export function describeVote(vote: Vote): string {
  return `${vote.unreachable} of ${vote.nodes} lock nodes unreachable, ${vote.quorum} needed`;
}

/**
 * Why a vote found its nodes out of reach: with several, how the quorum answered; with one, its connection's
 * error (`cause`).
 */
export function unreachableReason(vote: Vote, cause: string): string {
  return vote.nodes > 1
    ? `lock quorum unavailable: ${describeVote(vote)}`
    : `the lock node is unreachable: ${cause}`;
}

/**
 * `command` on every node, one answer each for a vote: a node's failure goes to `onNodeError` (its
 * connection's handling) and rejects its answer; `cause()` is the first failure's message, if one came.
 */
export function askNodes<T>(
  clients: readonly RedisClient[],
  command: (client: RedisClient) => Promise<T>,
  onNodeError?: (client: RedisClient, error: unknown) => void,
): { answers: Promise<T>[]; cause: () => string | undefined } {
  let cause: string | undefined;
  const answers = clients.map((client) =>
    command(client).catch((error: unknown) => {
      cause ??= error instanceof Error ? error.message : String(error);
      onNodeError?.(client, error);
      throw error;
    }),
  );
  return { answers, cause: () => cause };
}
