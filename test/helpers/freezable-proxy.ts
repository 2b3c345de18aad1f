// A TCP proxy in front of Postgres whose open connections a test can freeze: their bytes stop passing either
// way while both sockets stay open, as on a dropped network or a stuck backend, where no error ever comes.
import net from 'node:net';

export interface FreezableProxy {
  /** The target's URL with the proxy's host and port. */
  readonly url: string;
  /** Every connection open now stops passing data; later ones pass. */
  freezeOpen(): void;
  close(): Promise<void>;
}

export async function startFreezableProxy(targetUrl: string): Promise<FreezableProxy> {
  const target = new URL(targetUrl);
  const open = new Set<{ client: net.Socket; upstream: net.Socket; frozen: boolean }>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 5432), target.hostname);
    const pair = { client, upstream, frozen: false };
    open.add(pair);
    const forward = (from: net.Socket, to: net.Socket) =>
      from.on('data', (chunk) => {
        if (!pair.frozen) to.write(chunk);
      });
    forward(client, upstream);
    forward(upstream, client);
    const end = () => {
      open.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) socket.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(targetUrl);
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as net.AddressInfo).port);
  return {
    url: url.toString(),
    freezeOpen: () => open.forEach((pair) => (pair.frozen = true)),
    close: async () => {
      for (const { client, upstream } of open) {
        client.destroy();
        upstream.destroy();
      }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
