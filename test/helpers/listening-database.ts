// A test database with a started PgNotificationHub on it, for the tests of what LISTEN/NOTIFY drives. Its
// waits re-check on no timer, so only notifications (or a reconnect) wake a waiter in these tests.
import { afterEach, beforeEach } from 'vitest';
import { PgNotificationHub } from '../../src/shared/notifications.js';
import { createTestDatabase, type TestDatabase } from './database.js';

export interface ListeningDatabase {
  readonly db: TestDatabase;
  readonly hub: PgNotificationHub;
}

/** A fresh database and hub per test (beforeEach), stopped and dropped after it. */
export function useListeningDatabase(): ListeningDatabase {
  let db: TestDatabase | undefined;
  let hub: PgNotificationHub | undefined;
  beforeEach(async () => {
    db = await createTestDatabase();
    hub = new PgNotificationHub(db.url, { reconnectDelayMs: 50 });
    await hub.start();
  });
  afterEach(async () => {
    await hub?.stop();
    await db?.drop();
  });
  return {
    get db() {
      return db!;
    },
    get hub() {
      return hub!;
    },
  };
}
