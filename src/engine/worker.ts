import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import type { Database } from '../db/database.js';
import { log as rootLog, type Logger } from '../log.js';
import { writeResultFile } from '../workflow/output-folder.js';
import { processFile } from './process-file.js';
import {
  claimFiles,
  finishFiles,
  handBack,
  heartbeat,
  type ClaimedFile,
  type FinishReport,
  type HeldFile,
  type Outcome,
} from './queue.js';
import { sweep } from './recovery.js';
import { WorkflowCache } from './workflows.js';
import { durable } from './executions.js';

export interface WorkerOptions {
  /** Files processed at once. */
  concurrency: number;
  /**
   * Files claimed ahead of free slots, so a slot never waits for a claim round trip. When
   * absent it adapts: it doubles whenever a slot sat idle while more work was waiting, and
   * halves while the queue stays deep (slow files), so fast work gets large claims and slow
   * work is not hoarded from other workers.
   */
  prefetch?: number;
  /** Only this execution's files (a `run` process); any execution's when absent. */
  executionId?: string;
  /** How long to wait for new work when the last claim found none. */
  pollIntervalMs?: number;
  /** How often this worker looks for expired leases. */
  sweepIntervalMs?: number;
  /** On stop, how long files already running may take to finish before they are handed back. */
  graceMs?: number;
  log?: Logger;
  onFinished?: (report: FinishReport) => void;
}

const MAX_PREFETCH = 1000;

/**
 * Claims files, keeps their leases alive, runs them, and records the outcomes in batches that
 * share one commit. Also sweeps for expired leases, so any live worker recovers a dead one's work.
 */
export class Worker {
  readonly id = `${hostname()}:${process.pid}:${randomUUID().slice(0, 8)}`;
  private readonly log: Logger;
  private readonly workflows: WorkflowCache;
  private readonly queued: ClaimedFile[] = [];
  private readonly running = new Map<
    string,
    { file: ClaimedFile; done: Promise<void>; lost: boolean }
  >();
  private readonly outcomes: Outcome[] = [];
  private recording: Outcome[] = [];
  private flushing: Promise<void> | undefined;
  private active = false;
  private closed = false;
  private moreWork = false;
  private depth: number;
  private starved = false;
  private wake: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private heartbeatTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Heartbeats and sweeps under way: stop() waits for them, so none outlives the pool. */
  private readonly ticks = new Set<Promise<unknown>>();

  constructor(
    private readonly db: Database,
    private readonly options: WorkerOptions,
  ) {
    this.log = (options.log ?? rootLog).child({ module: 'worker', worker: this.id });
    this.workflows = new WorkflowCache(db);
    this.depth = options.prefetch ?? options.concurrency;
  }

  start(): void {
    if (this.active) return;
    this.active = true;
    this.loop = this.claimLoop();
    this.scheduleSweep();
    this.scheduleHeartbeat();
    this.log.info({ concurrency: this.options.concurrency }, 'worker started');
  }

  /** Stops claiming, lets running files finish within the grace period, hands back the rest. */
  async stop(): Promise<void> {
    if (!this.active) return;
    this.active = false;
    this.wake?.();
    await this.loop;
    await handBack(this.db, this.id, this.queued.splice(0)).catch((e) => this.warn(e, 'hand back'));
    await this.settleRunning(this.options.graceMs ?? 10_000);
    while (this.flushing || this.outcomes.length > 0) await (this.flushing ??= this.flush());
    this.closed = true;
    const abandoned = [...this.running.values()].map((r) => r.file);
    const handedBack = await handBack(this.db, this.id, abandoned).catch((e) =>
      this.warn(e, 'hand back'),
    );
    clearTimeout(this.heartbeatTimer);
    clearTimeout(this.sweepTimer);
    await Promise.all(this.ticks);
    this.log.info({ handedBack: abandoned.length ? handedBack : 0 }, 'worker stopped');
  }

  private async claimLoop(): Promise<void> {
    while (this.active) {
      this.adjustDepth();
      const room = this.options.concurrency + this.depth - this.queued.length - this.running.size;
      if (room > 0) {
        const claimed = await claimFiles(this.db, this.id, room, this.options.executionId).catch(
          (e) => this.warn(e, 'claim', []),
        );
        this.queued.push(...this.notHeld(claimed));
        this.moreWork = claimed.length === room;
        this.startRunners();
        if (this.moreWork) continue;
      }
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.options.pollIntervalMs ?? 500);
        this.wake = () => (clearTimeout(timer), resolve());
      });
    }
  }

  /**
   * A claim lost in a server crash (claims commit asynchronously) puts a file this worker still
   * holds back to PENDING at the same attempt, and this worker may claim it again. That must not
   * start a second copy; and since the file is this worker's again, a running copy that a
   * heartbeat meanwhile reported lost may record its outcome after all.
   */
  private notHeld(claimed: ClaimedFile[]): ClaimedFile[] {
    const held = new Set(this.held().map((f) => `${f.id}:${f.attempt}`));
    return claimed.filter((file) => {
      const key = `${file.id}:${file.attempt}`;
      const running = this.running.get(key);
      if (running) running.lost = false;
      return !held.has(key);
    });
  }

  private adjustDepth(): void {
    if (this.options.prefetch !== undefined) return;
    const { concurrency } = this.options;
    if (this.starved) this.depth = Math.min(MAX_PREFETCH, this.depth * 2);
    else if (this.queued.length > this.depth / 2)
      this.depth = Math.max(concurrency, this.depth >> 1);
    this.starved = false;
  }

  private startRunners(): void {
    while (this.active && this.running.size < this.options.concurrency && this.queued.length > 0) {
      const file = this.queued.shift()!;
      const key = `${file.id}:${file.attempt}`;
      const entry = { file, lost: false, done: Promise.resolve() };
      entry.done = this.run(file).then((outcome) => {
        this.running.delete(key);
        if (outcome && !entry.lost && !this.closed) this.record(outcome);
        this.startRunners();
        if (this.moreWork || this.queued.length === 0) this.wake?.();
      });
      this.running.set(key, entry);
    }
    if (this.moreWork && this.running.size < this.options.concurrency) this.starved = true;
  }

  private async run(file: ClaimedFile): Promise<Outcome | undefined> {
    try {
      return await processFile((id) => this.workflows.get(id), file, this.log);
    } catch (error) {
      this.warn(error, `load workflow ${file.workflowId}; the lease brings the file back`);
      return undefined;
    }
  }

  private record(outcome: Outcome): void {
    this.outcomes.push(outcome);
    this.flushing ??= this.flush();
  }

  /** Writes outcomes in batches; those arriving during a write go in the next one. */
  private async flush(): Promise<void> {
    try {
      while (this.outcomes.length > 0) {
        this.recording = this.outcomes.splice(0, 500);
        await finishFiles(this.db, this.id, this.recording, durable).then(
          (report) => this.reported(report, this.recording),
          (e) =>
            this.warn(
              e,
              `record ${this.recording.length} outcomes; their leases will expire and they run again`,
            ),
        );
      }
    } finally {
      this.recording = [];
      this.flushing = undefined;
    }
  }

  private async reported(report: FinishReport, outcomes: Outcome[]): Promise<void> {
    await this.mirrorResults(report, outcomes);
    if (report.fencedOff.length > 0) {
      this.log.warn(
        { files: report.fencedOff.map((f) => f.id) },
        'fenced off: another attempt owns these files; result dropped',
      );
    }
    for (const e of report.finalized)
      this.log.info({ execution: e.id, status: e.status }, 'execution finished');
    this.options.onFinished?.(report);
  }

  /**
   * Written only once the result is recorded as COMPLETED, so the output folder never holds a
   * file that ended STOPPED, nor one whose lease another worker had taken over.
   */
  private async mirrorResults(report: FinishReport, outcomes: Outcome[]): Promise<void> {
    const completed = new Set(report.completed);
    const writes = outcomes
      .filter((o) => o.output && completed.has(o.id))
      .map((o) =>
        writeResultFile(o.output!.folder, o.output!.path, o.result).catch((e) =>
          this.warn(e, `write the output file of ${o.output!.path}`),
        ),
      );
    await Promise.all(writes);
  }

  private held(): HeldFile[] {
    return [
      ...this.queued,
      ...[...this.running.values()].map((r) => r.file),
      ...this.outcomes,
      ...this.recording,
    ];
  }

  private scheduleHeartbeat(): void {
    const leases = [...this.queued, ...[...this.running.values()].map((r) => r.file)].map(
      (f) => f.leaseSeconds,
    );
    const interval = (Math.min(30, ...leases) * 1000) / 3;
    this.heartbeatTimer = setTimeout(async () => {
      const lost = await this.tick(
        heartbeat(this.db, this.id, this.held()).catch((e) => this.warn(e, 'heartbeat', [])),
      );
      if (lost.length > 0) this.dropLost(lost);
      if (!this.closed) this.scheduleHeartbeat();
    }, interval);
  }

  /**
   * Files whose lease another worker took over: their results would be fenced off anyway, so
   * running ones are marked to drop their outcome and queued ones are not started. Outcomes
   * already waiting to be written are left to the compare-and-set (one may just have landed).
   */
  private dropLost(lost: HeldFile[]): void {
    const keys = new Set(lost.map((f) => `${f.id}:${f.attempt}`));
    const running = [...this.running].filter(([key]) => keys.has(key));
    const queued = this.queued.filter((f) => keys.has(`${f.id}:${f.attempt}`));
    if (running.length + queued.length === 0) return;
    running.forEach(([, entry]) => (entry.lost = true));
    this.queued.splice(0, this.queued.length, ...this.queued.filter((f) => !queued.includes(f)));
    const files = [...running.map(([, e]) => e.file), ...queued].map((f) => f.id);
    this.log.warn({ files }, 'lease lost: another worker took these files over');
  }

  private scheduleSweep(): void {
    this.sweepTimer = setTimeout(async () => {
      const report = await this.tick(
        sweep(this.db).catch((e) => this.warn(e, 'sweep expired leases', undefined)),
      );
      if (report && report.requeued + report.ended + report.finalized > 0) {
        this.log.info(report, 'recovered expired leases');
        this.wake?.();
      }
      if (this.active) this.scheduleSweep();
    }, this.options.sweepIntervalMs ?? 5000);
  }

  /** Tracks a heartbeat or sweep (which never rejects) until it settles. */
  private tick<T>(work: Promise<T>): Promise<T> {
    this.ticks.add(work);
    void work.finally(() => this.ticks.delete(work));
    return work;
  }

  private async settleRunning(graceMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise((resolve) => (timer = setTimeout(resolve, graceMs)));
    await Promise.race([Promise.all([...this.running.values()].map((r) => r.done)), grace]);
    clearTimeout(timer);
  }

  private warn<T>(error: unknown, what: string, fallback?: T): T {
    this.log.error({ err: error }, `worker could not ${what}`);
    return fallback as T;
  }
}
