// A fault-injecting TCP proxy for tests: sits between a client and PostgreSQL (or PgBouncer) on
// loopback so a test can cut, stall or slow the wire without root, iptables or toxiproxy.
import net from 'node:net';

export type ProxyMode = 'pass' | 'blackhole';

/** `data: null` is the sender's FIN; it waits in line so a close never overtakes delayed bytes. */
interface Pending {
  due: number;
  data: Buffer | null;
}

/** One direction of a connection; a queue (not a timer per chunk) keeps the byte order intact. */
interface Lane {
  queue: Pending[];
  timer?: NodeJS.Timeout;
}

interface Link {
  client: net.Socket;
  target?: net.Socket;
  up: Lane;
  down: Lane;
}

export class FaultProxy {
  private mode: ProxyMode = 'pass';
  private latencyMs = 0;
  private refusing = false;
  private listenPort = 0;
  private readonly links = new Set<Link>();
  private readonly server = net.createServer((socket) => this.accept(socket));
  private readonly target: { host: string; port: number };

  private constructor(target: { host?: string; port: number }) {
    this.target = { host: target.host ?? '127.0.0.1', port: target.port };
  }

  static async start(target: { host?: string; port: number }): Promise<FaultProxy> {
    const proxy = new FaultProxy(target);
    await new Promise<void>((resolve, reject) => {
      proxy.server.once('error', reject);
      proxy.server.listen(0, '127.0.0.1', () => {
        proxy.server.off('error', reject);
        proxy.listenPort = (proxy.server.address() as net.AddressInfo).port;
        resolve();
      });
    });
    return proxy;
  }

  get port(): number {
    return this.listenPort;
  }

  /**
   * Client connections still open, held ones included. After a FIN cut the target side may live on
   * a little longer: a backend busy in a query only notices the FIN when it next talks.
   */
  get connections(): number {
    let open = 0;
    for (const link of this.links) if (!link.client.destroyed) open++;
    return open;
  }

  url(databaseUrl: string): string {
    const url = new URL(databaseUrl);
    url.hostname = '127.0.0.1';
    url.port = String(this.port);
    return url.toString();
  }

  /** Back to 'pass', held bytes and held connections go on, as after a healed partition. */
  setMode(mode: ProxyMode): void {
    this.mode = mode;
    if (mode !== 'pass') return;
    for (const link of this.links) {
      if (!link.target && !link.client.destroyed) this.connect(link);
      this.pump(link, link.up);
      this.pump(link, link.down);
    }
  }

  setLatency(ms: number): void {
    this.latencyMs = ms;
  }

  cutAll(how: 'rst' | 'fin'): number {
    const count = this.connections;
    for (const link of this.links) {
      // Bytes still queued were "on the wire" when it was cut.
      this.clear(link);
      for (const socket of [link.client, link.target]) {
        if (!socket) continue;
        if (how === 'rst') socket.resetAndDestroy();
        else socket.end();
      }
    }
    return count;
  }

  refuse(on: boolean): void {
    this.refusing = on;
  }

  async close(): Promise<void> {
    const closing: Promise<void>[] = [new Promise((resolve) => this.server.close(() => resolve()))];
    for (const link of this.links) {
      this.clear(link);
      for (const socket of [link.client, link.target]) {
        if (!socket || socket.closed) continue;
        closing.push(new Promise((resolve) => socket.once('close', () => resolve())));
        socket.destroy();
      }
    }
    await Promise.all(closing);
  }

  private accept(client: net.Socket): void {
    if (this.refusing) {
      client.on('error', () => {});
      client.resetAndDestroy();
      return;
    }
    const link: Link = { client, up: { queue: [] }, down: { queue: [] } };
    this.links.add(link);
    this.wire(link, client, link.up);
    if (this.mode === 'pass') this.connect(link);
  }

  private connect(link: Link): void {
    link.target = net.connect(this.target);
    this.wire(link, link.target, link.down);
    this.pump(link, link.up);
  }

  private wire(link: Link, socket: net.Socket, outgoing: Lane): void {
    socket.setNoDelay(true);
    socket.on('data', (data) => this.push(link, outgoing, data));
    socket.on('end', () => this.push(link, outgoing, null));
    // A reset (or a refused target) on one side becomes a reset on the other, like a real path.
    socket.on('error', () => {
      for (const other of [link.client, link.target]) {
        if (other && other !== socket && !other.destroyed) other.resetAndDestroy();
      }
    });
    socket.on('close', () => {
      if (link.client.destroyed && (link.target?.destroyed ?? true)) {
        this.clear(link);
        this.links.delete(link);
      }
    });
  }

  private push(link: Link, lane: Lane, data: Buffer | null): void {
    const due = Math.max(Date.now() + this.latencyMs, lane.queue.at(-1)?.due ?? 0);
    lane.queue.push({ due, data });
    this.pump(link, lane);
  }

  private pump(link: Link, lane: Lane): void {
    clearTimeout(lane.timer);
    lane.timer = undefined;
    const sink = lane === link.up ? link.target : link.client;
    while (this.mode === 'pass' && sink && lane.queue.length > 0) {
      const head = lane.queue[0]!;
      const wait = head.due - Date.now();
      if (wait > 0) {
        lane.timer = setTimeout(() => this.pump(link, lane), wait);
        return;
      }
      lane.queue.shift();
      if (sink.destroyed || sink.writableEnded) continue;
      if (head.data) sink.write(head.data);
      else sink.end();
    }
  }

  private clear(link: Link): void {
    for (const lane of [link.up, link.down]) {
      clearTimeout(lane.timer);
      lane.timer = undefined;
      lane.queue.length = 0;
    }
  }
}
