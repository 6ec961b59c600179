// mode: 'auto': picks mapping or copying for one receiver by measuring what each costs
// here, with this consumer. Pure logic over injected clocks and switches, so the decision
// is testable without a kernel that favours one side (test/auto-path.test.ts).

/** The two ways a receiver can take bytes from the kernel. */
export type ReceivePath = 'zerocopy' | 'copy';

/** What auto mode measured, in microseconds of thread CPU per MB delivered. */
export interface MeasuredCost {
  /** Mapping (zero-copy mode's path), consumer included; null until measured. */
  zerocopy: number | null;
  /** Copying (copy mode's path), consumer included; null until measured. */
  copy: number | null;
}

/** Settings and hooks of an AutoPath. */
export interface AutoPathOptions {
  /** Bytes per measurement window (default 16 MiB). */
  windowBytes?: number;
  /** Windows on the chosen path between two re-checks (default 64). */
  recheckEvery?: number;
  /**
   * Deliveries ignored after each switch before a window starts: chunks read ahead on
   * the old path are still being consumed (default 3).
   */
  settleEvents?: number;
  /** Thread CPU time now, in nanoseconds (CLOCK_THREAD_CPUTIME_ID in the package). */
  cpuNs: () => number;
  /** Puts the receiver on a path from its next wake-up on. */
  setPath: (path: ReceivePath) => void;
}

/** Below this mapped share, a zero-copy window says the stream cannot be mapped. */
const MIN_MAPPED_SHARE = 0.5;
/** Pairs of windows measured before the first decision, and at each re-check. */
const FIRST_PAIRS = 4;
const RECHECK_PAIRS = 2;
/** After this many pairs, a ratio beyond CLEAR_RATIO decides at once. */
const EARLY_PAIRS = 2;
const CLEAR_RATIO = 1.5;
/** A re-check switches only when the other path is cheaper by more than this. */
const SWITCH_MARGIN = 0.05;

interface Window {
  path: ReceivePath;
  /** Warm-up: run the path, do not count it. */
  measured: boolean;
}

interface Totals {
  bytes: number;
  mapped: number;
  ns: number;
}

/**
 * Chooses a receiver's path by measurement: runs a window of mapping and one of copying
 * (after a zero-copy warm-up), compares thread CPU per byte delivered (the consumer's
 * work on this thread included), settles on the cheaper, and measures both again every
 * `recheckEvery` windows. The thread's CPU includes whatever else the thread does, so
 * with several busy streams on one thread the figures are shared, and noisier.
 */
export class AutoPath {
  readonly #windowBytes: number;
  readonly #recheckEvery: number;
  readonly #settleEvents: number;
  readonly #cpuNs: () => number;
  readonly #setPath: (path: ReceivePath) => void;

  #path: ReceivePath = 'zerocopy'; // in use now
  #chosen: ReceivePath = 'zerocopy'; // settled on (the path between measurements)
  #plan: Window[] = [{ path: 'zerocopy', measured: false }, ...alternate('zerocopy', FIRST_PAIRS)];
  // This round's windows, µs per MB each.
  #round: Record<ReceivePath, number[]> = { zerocopy: [], copy: [] };
  #skip: number;
  #windowStartNs = 0;
  #window: Totals = emptyTotals();
  #settledBytes = 0;
  #decision = 'measuring: zero-copy warm-up window';
  #cost: MeasuredCost = { zerocopy: null, copy: null };
  #checks = 0;

  constructor(options: AutoPathOptions) {
    this.#windowBytes = options.windowBytes ?? 16 * 1024 * 1024;
    this.#recheckEvery = options.recheckEvery ?? 64;
    this.#settleEvents = options.settleEvents ?? 3;
    this.#cpuNs = options.cpuNs;
    this.#setPath = options.setPath;
    this.#skip = 0;
    this.#windowStartNs = this.#cpuNs();
  }

  /** The path in use now. */
  get path(): ReceivePath {
    return this.#path;
  }

  /** Which path, and why, in a sentence. */
  get decision(): string {
    return this.#decision;
  }

  /** The last figures measured for each path. */
  get cost(): MeasuredCost {
    return { ...this.#cost };
  }

  /** Completed decisions (the first one and every re-check). */
  get checks(): number {
    return this.#checks;
  }

  /** One delivery of `bytes`, `mappedBytes` of them over mapped pages. */
  delivered(bytes: number, mappedBytes: number): void {
    if (bytes <= 0) return;
    const current = this.#plan.at(0);
    if (current === undefined) {
      // Settled: count towards the next re-check.
      this.#settledBytes += bytes;
      if (this.#settledBytes >= this.#recheckEvery * this.#windowBytes) this.#startRecheck();
      return;
    }
    if (this.#skip > 0) {
      this.#skip--;
      if (this.#skip === 0) this.#windowStartNs = this.#cpuNs();
      return;
    }
    this.#window.bytes += bytes;
    this.#window.mapped += mappedBytes;
    if (this.#window.bytes < this.#windowBytes) return;

    const now = this.#cpuNs();
    this.#window.ns = Math.max(0, now - this.#windowStartNs);
    this.#plan.shift();
    if (current.measured) {
      this.#round[current.path].push(perMB(this.#window));
      if (current.path === 'zerocopy' && this.#window.mapped < MIN_MAPPED_SHARE * this.#window.bytes) {
        // Nothing to gain from mapping a stream that is mostly not mappable.
        this.#settle('copy', `copy: only ${percent(this.#window.mapped / this.#window.bytes)} of the stream could be mapped`);
        return;
      }
      const measured = this.#round.zerocopy.length + this.#round.copy.length;
      if (this.#plan.length === 0 || (measured === 2 * EARLY_PAIRS && this.#clear())) this.#decide();
    }
    this.#window = emptyTotals();
    this.#windowStartNs = now;
    this.#enter(this.#plan[0]);
  }

  /**
   * After the first pairs: every window of one path beat every window of the other by
   * CLEAR_RATIO, so more windows cannot change the answer (one inflated window cannot
   * make it look clear).
   */
  #clear(): boolean {
    const { zerocopy, copy } = this.#round;
    return (
      Math.min(...zerocopy) > CLEAR_RATIO * Math.max(...copy) || Math.min(...copy) > CLEAR_RATIO * Math.max(...zerocopy)
    );
  }

  /**
   * Both paths of this round measured: settle on the cheaper by the median window (a
   * window can be inflated by a burst of other work on the thread or the host; the
   * median ignores one such window per path).
   */
  #decide(): void {
    const zerocopy = median(this.#round.zerocopy);
    const copy = median(this.#round.copy);
    this.#cost = { zerocopy, copy };
    const recheck = this.#checks > 0;
    let path: ReceivePath;
    if (recheck) {
      // Keep the current path unless the other one is clearly cheaper.
      const other: ReceivePath = this.#chosen === 'zerocopy' ? 'copy' : 'zerocopy';
      const mine = this.#chosen === 'zerocopy' ? zerocopy : copy;
      const theirs = other === 'zerocopy' ? zerocopy : copy;
      path = theirs < mine * (1 - SWITCH_MARGIN) ? other : this.#chosen;
    } else {
      path = zerocopy <= copy ? 'zerocopy' : 'copy';
    }
    const cheaper = path === 'zerocopy' ? 'mapping' : 'copying';
    const dearer = path === 'zerocopy' ? 'copying' : 'mapping';
    const [mine, theirs] = path === 'zerocopy' ? [zerocopy, copy] : [copy, zerocopy];
    this.#settle(
      path,
      `${path}: ${cheaper} measured ${fmt(mine)} µs of thread CPU per MB, ${dearer} ${fmt(theirs)} ` +
        `(consumer included; ${(theirs / mine).toFixed(2)}x), re-checked every ` +
        `${Math.round((this.#recheckEvery * this.#windowBytes) / 2 ** 20)} MiB`,
    );
  }

  #settle(path: ReceivePath, decision: string): void {
    this.#checks++;
    this.#chosen = path;
    this.#decision = decision;
    this.#plan = [];
    this.#skip = 0;
    this.#settledBytes = 0;
    this.#window = emptyTotals();
    if (path !== this.#path) {
      this.#path = path;
      this.#setPath(path);
    }
  }

  #startRecheck(): void {
    // The current path first (no switch, nothing to settle), then alternating.
    this.#plan = alternate(this.#chosen, RECHECK_PAIRS);
    this.#round = { zerocopy: [], copy: [] };
    this.#window = emptyTotals();
    this.#skip = 0;
    this.#windowStartNs = this.#cpuNs();
  }

  #enter(window: Window | undefined): void {
    if (window === undefined) return;
    if (window.path !== this.#path) {
      this.#path = window.path;
      this.#setPath(window.path);
      this.#skip = this.#settleEvents;
    }
    if (this.#skip === 0) this.#windowStartNs = this.#cpuNs();
  }
}

/** `pairs` pairs of measured windows, ABBA-ordered, starting with `first`. */
function alternate(first: ReceivePath, pairs: number): Window[] {
  const second: ReceivePath = first === 'zerocopy' ? 'copy' : 'zerocopy';
  const plan: Window[] = [];
  for (let i = 0; i < pairs; i++) {
    const [a, b] = i % 2 === 0 ? [first, second] : [second, first];
    plan.push({ path: a, measured: true }, { path: b, measured: true });
  }
  return plan;
}

function median(values: number[]): number {
  if (values.length === 0) return Number.POSITIVE_INFINITY;
  const sorted = [...values].sort((x, y) => x - y);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

function emptyTotals(): Totals {
  return { bytes: 0, mapped: 0, ns: 0 };
}

/** µs per MB (10^6 bytes) = ns per KB... kept in the units the README uses. */
function perMB(totals: Totals): number {
  return totals.bytes > 0 ? totals.ns / 1000 / (totals.bytes / 1e6) : Number.POSITIVE_INFINITY;
}

function fmt(value: number): string {
  return Number.isFinite(value) ? value.toFixed(0) : 'n/a';
}

function percent(share: number): string {
  return `${(100 * share).toFixed(1)}%`;
}
