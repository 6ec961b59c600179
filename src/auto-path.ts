// mode: 'auto': picks mapping or copying by measuring what each costs here, with this
// consumer. One AutoPath is shared by the receivers of one thread that have the same
// chunkSize and autoGroup: a server's connections learn the answer once, and a new
// connection starts on the cheaper path instead of measuring from scratch. Pure logic
// over injected clocks and switches, so the decision is testable without a kernel that
// favours one side (test/auto-path.test.ts).

/** The two ways a receiver can take bytes from the kernel. */
export type ReceivePath = 'zerocopy' | 'copy';

/** What auto mode measured, in microseconds of the process's CPU time per MB delivered. */
export interface MeasuredCost {
  /** Mapping (zero-copy mode's path), consumer included; null until measured. */
  zerocopy: number | null;
  /** Copying (copy mode's path), consumer included; null until measured. */
  copy: number | null;
}

/** Settings and hooks of an AutoPath. */
export interface AutoPathOptions {
  /** Bytes per measurement window (default 8 MiB). */
  windowBytes?: number;
  /**
   * Windows' worth of bytes on the chosen path between two re-checks when the paths
   * measured within 25% of each other (default 128). The clearer the choice, the rarer the
   * re-check (up to 16 times as far apart): a re-check runs the dearer path for a while,
   * and that costs in proportion to how much dearer it is. A close decision (under 1.5x)
   * that no re-check backs yet, the first one or a switch, is checked again after an
   * eighth of this.
   */
  recheckEvery?: number;
  /** CPU time now, in nanoseconds (the process's, all threads, in the package). */
  cpuNs: () => number;
  /**
   * Page faults the process has taken so far (minor ones: memory touched for the first
   * time), to tell a window that paid for fresh memory. Without it, none is told.
   */
  pageFaults?: () => number;
}

/** One receiver's part in an AutoPath. */
export interface AutoPathMember {
  /**
   * One delivery of `bytes`, `mappedBytes` of them over mapped pages. `fresh`: received
   * on the path this member is on now (false for chunks read ahead before the last
   * switch, which measure the old path).
   */
  delivered(bytes: number, mappedBytes: number, fresh?: boolean): void;
  /** The receiver is done: it no longer follows or feeds the measurement. */
  leave(): void;
  /** The path this receiver is on now. */
  readonly path: ReceivePath;
  /** Which path, and why, in a sentence. */
  readonly decision: string;
  /** The last figures measured for each path. */
  readonly cost: MeasuredCost;
}

/** Below this mapped share, a zero-copy window says the stream cannot be mapped. */
const MIN_MAPPED_SHARE = 0.5;
/** Pairs of windows measured before the first decision. */
const FIRST_PAIRS = 4;
/** After this many pairs, a ratio beyond CLEAR_RATIO decides at once. */
const EARLY_PAIRS = 2;
const CLEAR_RATIO = 1.5;
/** A re-check switches only when the other path is cheaper by more than this. */
const SWITCH_MARGIN = 0.05;
/** Pairs measured again, pooled with the re-check's, before a re-check switches. */
const CONFIRM_PAIRS = 2;
/**
 * Re-check distance: recheckEvery windows, times (ratio - 1) * RECHECK_STRETCH, within
 * [1, MAX_RECHECK_STRETCH]. The dearer path's windows in a re-check cost about (ratio - 1)
 * windows' worth of extra CPU, so this keeps re-checking under 1% of the CPU at any ratio
 * up to 5x (at the default 8 MiB windows, every 1 GiB up to 1.25x, every 16 GiB from 5x),
 * or under 2% where its windows pay for fresh memory and are measured again.
 */
const RECHECK_STRETCH = 4;
const MAX_RECHECK_STRETCH = 16;
/** A close decision that nothing backs yet is checked again this much sooner. */
const SOON_DIVISOR = 8;
/**
 * A measured window in which the process faulted in fresh memory for more than this share
 * of the bytes delivered paid for a first use (memory a path took up for the first time, or
 * again after the other path ran), not for the path: it is measured again, once. Seen: a
 * forwarder at 4 MiB chunks started reusing blocks for its copies in the middle of the
 * measurement and faulted 1,000-2,000 pages (1.1-2.3 ms per MB, against 0.3-0.6 without) in
 * two or three of its four copy windows; where that hit both of the first two, mapping
 * looked clearly cheaper at twice copying's cost. Other windows faulted 0-121 pages per
 * 4,096. On this project's VM a first touch costs a host fault, about 20 µs a page.
 * Mapping takes no such faults (the kernel inserts the pages). The window measured again
 * no longer follows a switch, so what the other path left running (threadpool writes) is
 * charged to neither: a slight lean towards the path that faulted, where it faulted.
 */
const FIRST_USE_SHARE = 1 / 16;
const PAGE_BYTES = 4096;

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
 * Chooses the path by measurement: runs windows of mapping and of copying (after a
 * warm-up window of each), compares the process's CPU time per byte delivered (the consumers'
 * work included, also what they hand to the threadpool, such as file writes), settles on
 * the cheaper, and measures both again after `recheckEvery` windows' worth of bytes (further
 * apart the clearer the choice, sooner for a close choice not yet measured twice). Every
 * member follows the path under measurement or chosen, so the thread's receivers spend
 * their CPU on one path at a time; a member whose own stream cannot be
 * mapped (a plain sender, a NIC without header split) copies on its own.
 */
export class AutoPath {
  readonly #windowBytes: number;
  readonly #recheckEvery: number;
  readonly #cpuNs: () => number;
  readonly #pageFaults: () => number;
  readonly #members = new Set<Member>();

  #path: ReceivePath = 'zerocopy'; // in use now
  #chosen: ReceivePath = 'zerocopy'; // settled on (the path between measurements)
  // A warm-up window of each path first, not counted: a path's first chunks pay for its
  // first use (for copying, fresh Buffer memory: a file writer at 4 MiB chunks measured
  // 2.9-3.6 ms per MB in its first copy window, 0.26-0.35 in the next ones).
  #plan: Window[] = [
    { path: 'zerocopy', measured: false },
    { path: 'copy', measured: false },
    ...alternate('copy', FIRST_PAIRS),
  ];
  // This round's windows, µs per MB each.
  #round: Record<ReceivePath, number[]> = { zerocopy: [], copy: [] };
  // After a switch: the window starts at the first chunk received on the new path.
  #awaitingFresh = false;
  #windowStartNs = 0;
  #windowStartFaults = 0;
  // The window in progress is a second try of one that paid for a first use.
  #windowRetried = false;
  #window: Totals = emptyTotals();
  #settledBytes = 0;
  #recheckBytes: number;
  #decision = 'measuring: warm-up windows';
  #cost: MeasuredCost = { zerocopy: null, copy: null };
  #checks = 0;
  // The ratio of the last decision (the other path's cost to the chosen one's).
  #lastRatio = 1;
  // A re-check found the other path cheaper: this round measures it again before the switch.
  #confirming = false;

  constructor(options: AutoPathOptions) {
    this.#windowBytes = options.windowBytes ?? 8 * 1024 * 1024;
    this.#recheckEvery = options.recheckEvery ?? 128;
    this.#recheckBytes = this.#recheckEvery * this.#windowBytes;
    this.#cpuNs = options.cpuNs;
    this.#pageFaults = options.pageFaults ?? (() => 0);
    this.#startWindowClock();
  }

  /** The path in use now (members that copy on their own aside). */
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

  /** Members now. */
  get members(): number {
    return this.#members.size;
  }

  /** A receiver joins: it is put on the group's path at once. */
  join(setPath: (path: ReceivePath) => void): AutoPathMember {
    if (this.#members.size === 0) {
      // CPU the thread spent while nobody received belongs to no path.
      this.#window = emptyTotals();
      this.#windowRetried = false;
      this.#startWindowClock();
    }
    const member = new Member(this, setPath, this.#windowBytes, this.#recheckEvery * this.#windowBytes);
    this.#members.add(member);
    if (this.#path !== 'zerocopy') setPath(this.#path);
    return member;
  }

  /** @internal */
  leave(member: Member): void {
    this.#members.delete(member);
  }

  /**
   * @internal A member consumed a chunk it had read ahead on the old path. Another member
   * may already have started the window on the new path: the consumer's work on this
   * chunk would land in it, so the window starts again after it. (A switch leaves a few
   * such chunks per member; one that is never consumed costs nothing.)
   */
  staleDelivered(): void {
    if (this.#plan.length === 0 || this.#awaitingFresh) return;
    this.#window = emptyTotals();
    this.#awaitingFresh = true;
  }

  /**
   * @internal A delivery of a member that follows the group, received on the group's
   * current path (members copying on their own are known unmappable: their bytes would
   * pass for mapping in a zero-copy window).
   */
  delivered(bytes: number, mappedBytes: number): void {
    if (bytes <= 0) return;
    const current = this.#plan.at(0);
    if (current === undefined) {
      // Settled: count towards the next re-check.
      this.#settledBytes += bytes;
      if (this.#settledBytes >= this.#recheckBytes) this.#startRecheck();
      return;
    }
    if (this.#awaitingFresh) {
      // The first chunk on the new path: its receive cost went before, so it marks the
      // window's start rather than count in it.
      this.#awaitingFresh = false;
      this.#startWindowClock();
      return;
    }
    this.#window.bytes += bytes;
    this.#window.mapped += mappedBytes;
    if (this.#window.bytes < this.#windowBytes) return;

    const now = this.#cpuNs();
    this.#window.ns = Math.max(0, now - this.#windowStartNs);
    if (
      current.measured &&
      current.path === 'zerocopy' &&
      this.#window.mapped < MIN_MAPPED_SHARE * this.#window.bytes
    ) {
      // Mostly copies (peers found unmappable only at the end of a probe): not a
      // measurement of mapping. The same window again.
      this.#window = emptyTotals();
      this.#startWindowClock(now);
      return;
    }
    if (current.measured && !this.#windowRetried && this.#paidForFirstUse()) {
      // It paid for fresh memory (FIRST_USE_SHARE): a first use, not the path. Once more.
      this.#windowRetried = true;
      this.#window = emptyTotals();
      this.#startWindowClock(now);
      return;
    }
    this.#windowRetried = false;
    this.#plan.shift();
    if (current.measured) {
      this.#round[current.path].push(perMB(this.#window));
      const measured = this.#round.zerocopy.length + this.#round.copy.length;
      if (this.#plan.length === 0 || (measured === 2 * EARLY_PAIRS && this.#clear())) this.#decide();
    }
    this.#window = emptyTotals();
    this.#startWindowClock(now);
    this.#enter(this.#plan[0]);
  }

  /** The window starts now: its CPU time and page faults count from here. */
  #startWindowClock(nowNs = this.#cpuNs()): void {
    this.#windowStartNs = nowNs;
    this.#windowStartFaults = this.#pageFaults();
  }

  /** The window just completed faulted in fresh memory for over FIRST_USE_SHARE of its bytes. */
  #paidForFirstUse(): boolean {
    const faults = this.#pageFaults() - this.#windowStartFaults;
    return faults * PAGE_BYTES > FIRST_USE_SHARE * this.#window.bytes;
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
   * Both paths of this round measured: settle on the cheaper by each path's lower median
   * window (the second cheapest of four, the cheaper of two). Noise here only ever adds:
   * a burst of other work on the thread or the host, a garbage collection, or the page
   * faults of memory a path touches for the first time (seen: a forwarder at 4 MiB chunks
   * paid about 1,000 faults, 3 ms per MB, in two of its first four copy windows, and the
   * plain median chose mapping at twice copying's cost). The lower median ignores up to
   * half of a path's windows if they are inflated. (Work that spills from one window into
   * the next, such as threadpool writes still running at a switch, can also make a window
   * read low; the first round's ABBA order spreads that over both paths.)
   */
  #decide(): void {
    const zerocopy = lowerMedian(this.#round.zerocopy);
    const copy = lowerMedian(this.#round.copy);
    const recheck = this.#checks > 0;
    let path: ReceivePath;
    if (recheck) {
      // Keep the current path unless the other one is clearly cheaper.
      const other: ReceivePath = this.#chosen === 'zerocopy' ? 'copy' : 'zerocopy';
      const mine = this.#chosen === 'zerocopy' ? zerocopy : copy;
      const theirs = other === 'zerocopy' ? zerocopy : copy;
      path = theirs < mine * (1 - SWITCH_MARGIN) ? other : this.#chosen;
      if (path !== this.#chosen && !this.#confirming) {
        // A switch is trusted only once measured twice: a burst of other work on the
        // process (seen: 3-7x for 10-20 ms, over two or three windows at 1 MiB chunks)
        // can make the settled path look dear, and a switch on that ratio would stay
        // for up to 16 times the re-check distance. Two more pairs, pooled with these.
        // The re-check ended on the other path: these start on the current one.
        this.#confirming = true;
        this.#plan = alternate(this.#chosen, CONFIRM_PAIRS, false);
        return;
      }
    } else {
      path = zerocopy <= copy ? 'zerocopy' : 'copy';
    }
    this.#cost = { zerocopy, copy };
    const chosenWay = path === 'zerocopy' ? 'mapping' : 'copying';
    const otherWay = path === 'zerocopy' ? 'copying' : 'mapping';
    const [mine, theirs] = path === 'zerocopy' ? [zerocopy, copy] : [copy, zerocopy];
    const ratio = theirs / mine;
    // How far to the next re-check goes by the ratio only as far as the last measurement
    // backs it: a burst over the other path's windows can inflate one re-check's ratio
    // (seen: 3.2x where the first decision and later re-checks measured 1.1-1.2x), and 16
    // times the distance on the wrong path costs far more than one re-check too many.
    // Nothing backs a first decision or a switch: a clear first decision (every window
    // CLEAR_RATIO apart) stretches by its ratio, a clear switch not at all, and a close one
    // (under CLEAR_RATIO) is checked again soon. A first decision is measured at start-up
    // (the first connection's first MBs, code not yet optimised): with no consumer, the
    // bench's auto receiver copied most of the measured GiB while mapping cost at least
    // 10% less in 12 of 20 runs at 1 MiB chunks, 3 of 20 with these rules. Checking again
    // costs three windows of the dearer path, once: under 1.5x, less than half a window's
    // worth more each.
    const backed = !recheck ? ratio : path === this.#chosen ? Math.min(ratio, this.#lastRatio) : 1;
    const unbacked = !recheck || path !== this.#chosen;
    this.#lastRatio = ratio;
    const soon = unbacked && !(ratio >= CLEAR_RATIO);
    const stretch = soon
      ? 1 / SOON_DIVISOR
      : Number.isNaN(backed)
        ? 1
        : Math.min(MAX_RECHECK_STRETCH, Math.max(1, (backed - 1) * RECHECK_STRETCH));
    this.#recheckBytes = Math.round(stretch * this.#recheckEvery * this.#windowBytes);
    this.#checks++;
    this.#chosen = path;
    // A re-check keeps a path that measured up to SWITCH_MARGIN dearer: said as such.
    const comparison = ratio >= 1 || Number.isNaN(ratio) ? `${ratio.toFixed(2)}x` : 'kept: within 5%';
    this.#decision =
      `${path}: ${chosenWay} measured ${fmt(mine)} µs of CPU per MB, ${otherWay} ${fmt(theirs)} ` +
      `(consumer included; ${comparison}), ${soon ? 'checked again after' : 're-checked every'} ` +
      `${Math.round(this.#recheckBytes / 2 ** 20)} MiB`;
    this.#plan = [];
    this.#confirming = false;
    this.#awaitingFresh = false;
    this.#windowRetried = false;
    this.#settledBytes = 0;
    this.#window = emptyTotals();
    this.#switchTo(path);
  }

  #startRecheck(): void {
    // The current path first (no switch, nothing to settle), then alternating.
    this.#plan = recheckPlan(this.#chosen);
    this.#round = { zerocopy: [], copy: [] };
    this.#confirming = false;
    this.#window = emptyTotals();
    this.#awaitingFresh = false;
    this.#windowRetried = false;
    this.#startWindowClock();
  }

  #enter(window: Window | undefined): void {
    if (window === undefined) return;
    if (window.path !== this.#path) {
      // Chunks read ahead on the old path are still to be consumed: members leave them
      // out (not fresh), and the window starts with the first one on the new path.
      this.#switchTo(window.path);
      this.#awaitingFresh = true;
    } else {
      this.#startWindowClock();
    }
  }

  #switchTo(path: ReceivePath): void {
    if (path === this.#path) return;
    this.#path = path;
    for (const member of this.#members) member.groupSwitched(path);
  }
}

/** A receiver in an AutoPath: follows the group, or copies on its own when unmappable. */
class Member implements AutoPathMember {
  readonly #group: AutoPath;
  readonly #setPath: (path: ReceivePath) => void;
  readonly #probeBytes: number;
  readonly #recheckBytes: number;
  #left = false;
  // What it was on and why when it left: its stats stay as they were at its end.
  #final: { path: ReceivePath; decision: string; cost: MeasuredCost } | null = null;
  // Its own stream's mappability, judged per `probeBytes` it receives on zero-copy.
  #zerocopyBytes = 0;
  #zerocopyMapped = 0;
  #ownDecision: string | null = null; // set while it copies on its own
  #ownBytes = 0;
  // Looking again after copying on its own: it maps for one probe, outside the group's
  // windows (in them, its bytes would count only while it follows and its CPU always).
  #reprobing = false;

  constructor(group: AutoPath, setPath: (path: ReceivePath) => void, probeBytes: number, recheckBytes: number) {
    this.#group = group;
    this.#setPath = setPath;
    this.#probeBytes = probeBytes;
    this.#recheckBytes = recheckBytes;
  }

  get following(): boolean {
    return this.#ownDecision === null;
  }

  get path(): ReceivePath {
    return this.#final?.path ?? (this.following ? this.#group.path : this.#reprobing ? 'zerocopy' : 'copy');
  }

  get decision(): string {
    return this.#final?.decision ?? this.#ownDecision ?? this.#group.decision;
  }

  get cost(): MeasuredCost {
    return this.#final?.cost ?? this.#group.cost;
  }

  delivered(bytes: number, mappedBytes: number, fresh = true): void {
    if (this.#left || bytes <= 0) return;
    if (this.#reprobing) {
      if (fresh) this.#probe(bytes, mappedBytes);
      return;
    }
    if (!this.following) {
      // Looked at again now and then: the path to the peer may have changed.
      this.#ownBytes += bytes;
      if (this.#ownBytes >= this.#recheckBytes) {
        this.#ownDecision = `zerocopy: looking again whether this stream can be mapped (${this.#ownDecision ?? ''})`;
        this.#zerocopyBytes = 0;
        this.#zerocopyMapped = 0;
        this.#reprobing = true;
        this.#setPath('zerocopy');
      }
      return;
    }
    // Read ahead before the last switch: neither a probe of this stream's mappability nor
    // a measurement of the path it is on now.
    if (!fresh) {
      this.#group.staleDelivered();
      return;
    }
    // Probed for as long as it follows: a stream can stop being mappable (a zero-copy error
    // made its source copy for good, the route to the peer changed), and its copies would
    // then make every zero-copy window of the group "mostly copies", measured again and
    // again, so the group would never decide.
    if (this.#group.path === 'zerocopy' && !this.#probe(bytes, mappedBytes)) return;
    this.#group.delivered(bytes, mappedBytes);
  }

  /**
   * Counts a delivery on zero-copy towards the probe of this stream's mappability, one
   * probe per `probeBytes` on zero-copy. False once a probe found it mostly unmappable: it
   * copies on its own from here on. A re-probe that finds it mappable puts it back on the
   * group's path.
   */
  #probe(bytes: number, mappedBytes: number): boolean {
    this.#zerocopyBytes += bytes;
    this.#zerocopyMapped += mappedBytes;
    if (this.#zerocopyBytes < this.#probeBytes) return true;
    const share = this.#zerocopyMapped / this.#zerocopyBytes;
    this.#zerocopyBytes = 0;
    this.#zerocopyMapped = 0;
    if (share < MIN_MAPPED_SHARE) {
      // Nothing to gain from mapping a stream that is mostly not mappable.
      this.#ownDecision = `copy: only ${percent(share)} of the stream could be mapped`;
      this.#ownBytes = 0;
      this.#reprobing = false;
      this.#setPath('copy');
      return false;
    }
    if (this.#reprobing) {
      this.#reprobing = false;
      this.#ownDecision = null;
      if (this.#group.path !== 'zerocopy') this.#setPath(this.#group.path);
    }
    return true;
  }

  leave(): void {
    if (this.#left) return;
    this.#final = { path: this.path, decision: this.decision, cost: this.cost };
    this.#left = true;
    this.#group.leave(this);
  }

  /** The group moved to `path`. */
  groupSwitched(path: ReceivePath): void {
    if (!this.following) return;
    this.#setPath(path);
  }
}

/**
 * A re-check: the current path, a warm-up window of the other (it has not run for a
 * while), then other, current, other: two measured windows of each, never two of one path
 * in a row, so a burst of other work over two windows (seen at 1 MiB chunks, where a
 * window lasts about 5 ms) inflates one window of each path, and each path's cheaper
 * window passes it by; back to back, it made both of one path's windows dear.
 */
function recheckPlan(current: ReceivePath): Window[] {
  const other: ReceivePath = current === 'zerocopy' ? 'copy' : 'zerocopy';
  return [
    { path: current, measured: true },
    { path: other, measured: false },
    { path: other, measured: true },
    { path: current, measured: true },
    { path: other, measured: true },
  ];
}

/**
 * `pairs` pairs of measured windows starting with `first`: ABBA-ordered (so a drift over
 * the measurement, such as threadpool writes that run on after a switch, weighs on both
 * paths alike), or alternating.
 */
function alternate(first: ReceivePath, pairs: number, abba = true): Window[] {
  const second: ReceivePath = first === 'zerocopy' ? 'copy' : 'zerocopy';
  const plan: Window[] = [];
  for (let i = 0; i < pairs; i++) {
    const [a, b] = abba && i % 2 === 1 ? [second, first] : [first, second];
    plan.push({ path: a, measured: true }, { path: b, measured: true });
  }
  return plan;
}

/** The middle value, or the lower of the two middle ones. */
function lowerMedian(values: number[]): number {
  if (values.length === 0) return Number.POSITIVE_INFINITY;
  const sorted = [...values].sort((x, y) => x - y);
  return sorted[(sorted.length - 1) >> 1];
}

function emptyTotals(): Totals {
  return { bytes: 0, mapped: 0, ns: 0 };
}

/** µs per MB (10^6 bytes), the units the README uses. */
function perMB(totals: Totals): number {
  return totals.bytes > 0 ? totals.ns / 1000 / (totals.bytes / 1e6) : Number.POSITIVE_INFINITY;
}

function fmt(value: number): string {
  return Number.isFinite(value) ? value.toFixed(0) : 'n/a';
}

function percent(share: number): string {
  return `${(100 * share).toFixed(1)}%`;
}

/**
 * One AutoPath per (autoGroup, chunkSize) in this thread (module state is per thread),
 * kept while unused: a server's connections come and go, and the next one should find
 * what the last ones measured, decided or not. Bounded, so group names made per
 * connection do not pile up: past MAX_GROUPS the least recently joined group that has no
 * receiver is dropped.
 */
const groups = new Map<string, AutoPath>();
const MAX_GROUPS = 64;

/** The shared AutoPath of receivers with this group name and chunk size. */
export function autoPathFor(group: string, chunkSize: number, options: AutoPathOptions): AutoPath {
  const key = `${String(chunkSize)}:${group}`;
  let auto = groups.get(key);
  if (auto === undefined) {
    auto = new AutoPath(options);
  } else {
    groups.delete(key); // re-inserted below: the map's order is the order of use
  }
  groups.set(key, auto);
  if (groups.size > MAX_GROUPS) {
    for (const [oldKey, old] of groups) {
      if (old.members === 0 && old !== auto) {
        groups.delete(oldKey);
        break;
      }
    }
  }
  return auto;
}
