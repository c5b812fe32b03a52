import { cpus, loadavg } from 'node:os';
import pg from 'pg';

/** What the numbers were measured on: the machine is shared, so its load matters. */
export async function machineLine(url: string): Promise<string> {
  const client = new pg.Client(url);
  client.on('error', () => undefined);
  await client.connect();
  const { rows } = await client.query<{ server_version: string }>('SHOW server_version');
  await client.end();
  const load = loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
  return `machine: ${cpus().length} cores, load ${load}, node ${process.version}, PostgreSQL ${rows[0]!.server_version}`;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
