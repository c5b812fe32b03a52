import { Counter, Registry } from 'prom-client';

/** One registry for everything unstuck counts; the HTTP /metrics endpoint serves it. */
export const registry = new Registry();

export const dbMetrics = {
  retries: new Counter({
    name: 'unstuck_db_retries_total',
    help: 'Database operations retried, by error class',
    labelNames: ['class'] as const,
    registers: [registry],
  }),
  giveUps: new Counter({
    name: 'unstuck_db_give_ups_total',
    help: 'Database operations that failed after exhausting their retry budget, by error class',
    labelNames: ['class'] as const,
    registers: [registry],
  }),
  permanentErrors: new Counter({
    name: 'unstuck_db_permanent_errors_total',
    help: 'Database errors raised at once because retrying cannot help',
    registers: [registry],
  }),
  connectionsDiscarded: new Counter({
    name: 'unstuck_db_connections_discarded_total',
    help: 'Pooled connections destroyed because they were broken or in doubt',
    registers: [registry],
  }),
  probeWakeUps: new Counter({
    name: 'unstuck_db_probe_wake_ups_total',
    help: 'Times the server probe saw the database come back and woke waiting operations',
    registers: [registry],
  }),
};

/** Current value of a counter (summed over labels unless one is given); used by tests and reports. */
export async function counterValue(
  counter: Counter<string>,
  labels?: Record<string, string>,
): Promise<number> {
  const { values } = await counter.get();
  return values
    .filter((v) => !labels || Object.entries(labels).every(([k, l]) => v.labels[k] === l))
    .reduce((sum, v) => sum + v.value, 0);
}
