// Counting the answers of independent Redlock nodes. redis-semaphore's RedlockMutex awaits every node
// (Promise.all) before it decides, so one node that does not answer makes each acquire, refresh and release
// as slow as that node's timeout. A vote here is decided by the first answers that settle it: a quorum of
// "yes", or enough "no" and unreachable nodes that no quorum is left. A node still silent after `timeoutMs`
// counts as unreachable; its command goes on in the background (bounded by the client's command timeout).
// A batch (the refresh of many locks by one command per node) is one vote per lock, counted from each node's
// one answer for all of them.

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
      answers.map((answer) => answer.then((yes) => [yes])),
      1,
      timeoutMs,
      (_, vote) => resolve(vote),
    );
  });
}

/**
 * `size` votes at once: each node answers once for all of them (`answers`, one per node: element i = its
 * yes or no on vote i; rejected = unreachable for all). Calls `onDecided` for each vote as soon as it is
 * decided, and resolves once every one is, at the latest after `timeoutMs`.
 */
export function countBatchVotes(
  answers: Promise<readonly boolean[]>[],
  size: number,
  timeoutMs: number,
  onDecided: (index: number, vote: Vote) => void,
): Promise<void> {
  const nodes = answers.length;
  const quorum = quorumOf(nodes);
  const yes = new Array<number>(size).fill(0);
  const no = new Array<number>(size).fill(0);
  const decided = new Array<boolean>(size).fill(false);
  let unreachable = 0;
  let undecided = size;
  return new Promise((resolve) => {
    if (size === 0) return resolve();
    const decide = (timedOut: boolean) => {
      for (let i = 0; i < size; i++) {
        if (decided[i]) continue;
        const won = yes[i]! >= quorum;
        const lost = nodes - no[i]! - unreachable < quorum;
        if (!won && !lost && !timedOut) continue;
        decided[i] = true;
        undecided--;
        const unanswered = timedOut ? nodes - yes[i]! - no[i]! - unreachable : 0;
        const reached = nodes - unreachable - unanswered;
        onDecided(i, {
          won,
          yes: yes[i]!,
          no: no[i]!,
          unreachable: unreachable + unanswered,
          nodes,
          quorum,
          quorumUnavailable: !won && reached < quorum,
        });
      }
      if (undecided > 0) return;
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => decide(true), timeoutMs);
    for (const answer of answers) {
      answer.then(
        (votes) => {
          if (undecided === 0) return;
          for (let i = 0; i < size; i++) {
            if (decided[i]) continue;
            if (votes[i]) yes[i]!++;
            else no[i]!++;
          }
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
