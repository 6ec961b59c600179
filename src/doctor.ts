/**
 * `tcp-zerocopy doctor`: what this host can map, and why bytes were not mapped.
 *
 * `runDoctor()` reports the kernel and each feature the package uses (with the kernel
 * version that brings it), the sysctls that matter, every network interface's MTU, the
 * TCP payload it leaves and whether the NIC splits headers from data, then receives a
 * loopback stream from the package's sender in zero-copy and copy mode and recommends a
 * mode and chunk size. `listenDoctor()` receives from real remote senders and reports,
 * per connection, how much was mapped and why the rest was not.
 */
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import { packageRoot } from './binding';
import { attach, probe, type ReceiverStats } from './index';
import { senderPath, startSender } from './testing';

const PAGE = 4096;
const MiB = 1 << 20;

/** One kernel or runtime feature the package uses, and where it comes from. */
export interface DoctorFeature {
  /** Short name, e.g. 'TCP_ZEROCOPY_RECEIVE'. */
  name: string;
  /** Kernel version that brings it ('runtime' for features of Node itself). */
  since: string;
  /** Whether this host has it. */
  available: boolean;
  /** What the package uses it for. */
  usedFor: string;
}

/** A sysctl that changes what can be mapped, with what its value means here. */
export interface DoctorSysctl {
  /** Dotted name, e.g. 'net.core.high_order_alloc_disable'. */
  name: string;
  /** The value as the kernel prints it, or null where it cannot be read. */
  value: string | null;
  /** What this value means for zero-copy receive. */
  meaning: string;
}

/** One network interface: what its MTU leaves per TCP segment and whether the NIC splits headers. */
export interface DoctorInterface {
  name: string;
  mtu: number | null;
  /** 'up', 'down', 'unknown' (as /sys/class/net/<name>/operstate says). */
  state: string;
  loopback: boolean;
  /** TCP payload per segment over IPv4 with TCP timestamps (MTU - 20 - 20 - 12, without timestamps - 40). */
  tcpPayload: number | null;
  /** Whole 4 KiB pages one segment's payload can fill. */
  pagesPerSegment: number;
  /** The payload is a whole number of pages (every payload byte can be mapped). */
  wholePages: boolean;
  /** Upper bound on the share of payload that can be mapped, given header/data split (0 to 1). */
  mappableShare: number;
  /** Header/data split as `ethtool -g` reports it: 'on', 'off', 'auto', 'n/a' (unsupported) or 'unknown'. */
  headerSplit: string;
  /** Why headerSplit is 'unknown', or what it means. */
  headerSplitNote: string;
  /** One line for a person. */
  verdict: string;
}

/** Where bytes that were not mapped went, by cause (bytes). */
export interface CopiedBecause {
  /** Payload runs shorter than a page: MTU, no header/data split, the sender's pages. */
  shortRuns: number;
  /** Bytes after an urgent (MSG_OOB) mark. */
  urgent: number;
  /** The pool was at its pinned-bytes cap (chunks not released fast enough). */
  poolFull: number;
  /** Zero-copy unavailable or failed with a kernel error ('auto' then copies for good). */
  fallback: number;
  /** The receiver ran in mode 'copy'. */
  copyMode: number;
  /** Drained by copying after the socket was destroyed. */
  draining: number;
}

/** One loopback transfer of the self-test. */
export interface SelfTestRun {
  /** 'zerocopy' maps what it can; 'copy' never maps. */
  mode: 'zerocopy' | 'copy' | 'auto';
  /** 'zerocopy': the package's MSG_ZEROCOPY sender at MSS 4108; 'plain': plain send() at the default MSS. */
  sender: 'zerocopy' | 'plain';
  chunkSize: number;
  bytes: number;
  /** Share of bytes delivered over mapped pages (0 to 1). */
  mappedShare: number;
  /** Receiver (this process) CPU time per GB (10^9 bytes), user + system, from process.cpuUsage(). */
  cpuMsPerGB: number;
  userMsPerGB: number;
  sysMsPerGB: number;
  /** Throughput in GB/s. */
  gbPerSecond: number;
  copiedBecause: CopiedBecause;
  fallbackReason: string | null;
}

/** The loopback self-test, or why it did not run. */
export interface SelfTest {
  ran: boolean;
  /** Why it did not run (or why zero-copy runs were skipped). */
  note: string | null;
  runs: SelfTestRun[];
}

/** What doctor recommends for attach(). */
export interface DoctorRecommendation {
  mode: 'auto' | 'copy';
  chunkSize: number;
  /** Why, one reason a line. */
  reasons: string[];
}

/** Everything `tcp-zerocopy doctor` found; `--json` prints this object. */
export interface DoctorReport {
  package: { name: string; version: string };
  node: string;
  platform: string;
  kernel: {
    release: string;
    /** Zero-copy receive works in this process. */
    supported: boolean;
    /** Why not, when `supported` is false. */
    reason: string | null;
    features: DoctorFeature[];
  };
  sysctls: DoctorSysctl[];
  interfaces: DoctorInterface[];
  selfTest: SelfTest;
  recommendation: DoctorRecommendation;
}

/** Options of runDoctor(). */
export interface DoctorOptions {
  /** Run the loopback self-test (default true). */
  selfTest?: boolean;
  /** Bytes per self-test transfer (default 256 MiB). */
  bytes?: number;
  /** Chunk sizes the self-test tries (default 256 KiB, 1 MiB, 4 MiB). */
  chunkSizes?: number[];
  /** Progress lines, as the checks run. */
  progress?: (line: string) => void;
}

/** Parses '6.18.44-foo' into [6, 18, 44]. */
export function kernelVersion(release: string): [number, number, number] {
  const match = /^(\d+)\.(\d+)(?:\.(\d+))?/.exec(release);
  if (match === null) return [0, 0, 0];
  return [Number(match[1]), Number(match[2]), Number(match.at(3) ?? 0)];
}

function atLeast(release: string, major: number, minor: number): boolean {
  const [a, b] = kernelVersion(release);
  return a > major || (a === major && b >= minor);
}

function kernelRelease(): string {
  const fromProbe = probe().kernel;
  if (fromProbe !== '') return fromProbe;
  try {
    return fs.readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  } catch {
    return '';
  }
}

function features(release: string): DoctorFeature[] {
  const found = probe().features;
  return [
    {
      name: 'mmap() on a TCP socket + TCP_ZEROCOPY_RECEIVE',
      since: '4.18',
      available: found.zerocopyReceive,
      usedFor: 'mapping received payload pages',
    },
    {
      name: 'inq and err in tcp_zerocopy_receive',
      since: '5.7',
      available: found.inqAndError,
      usedFor: 'socket errors reported in the same call',
    },
    {
      name: 'TCP_RECEIVE_ZEROCOPY_FLAG_TLB_CLEAN_HINT (and copybuf)',
      since: '5.11',
      available: found.tlbCleanHint,
      usedFor: 'no TLB flush for the pool’s empty ranges',
    },
    {
      name: 'receive timestamps in tcp_zerocopy_receive',
      since: '5.12',
      available: found.rxTimestamps,
      usedFor: 'not used',
    },
    {
      name: 'MSG_ZEROCOPY send (SO_ZEROCOPY on TCP)',
      since: '4.14',
      available: release !== '' && atLeast(release, 4, 14),
      usedFor: 'the package’s sender (tcp-zerocopy/testing): mappable pages on loopback',
    },
    {
      name: 'io_uring zero-copy receive (IORING_OP_RECV_ZC)',
      since: '6.15',
      available: release !== '' && atLeast(release, 6, 15),
      usedFor: 'not used: needs a NIC with header split and flow steering (see README, Deploying on real NICs)',
    },
    {
      name: 'native addon built and loaded',
      since: 'runtime',
      available: found.nativeAddon,
      usedFor: 'everything native; without it attach() copies through net.Socket',
    },
    {
      name: 'external Buffers over foreign memory (no V8 sandbox)',
      since: 'runtime',
      available: found.externalBuffers,
      usedFor: 'handing mapped pages to JS without a copy',
    },
    {
      name: 'direct Buffers (the addon runs in the Node it was built for)',
      since: 'runtime',
      available: found.directBuffers,
      usedFor: 'pages given back at release() with no event-loop wake-up per chunk',
    },
  ];
}

function readProc(file: string): string | null {
  try {
    return fs.readFileSync(file, 'utf8').trim().replace(/\s+/g, ' ');
  } catch {
    return null;
  }
}

function sysctls(): DoctorSysctl[] {
  const highOrder = readProc('/proc/sys/net/core/high_order_alloc_disable');
  const rmem = readProc('/proc/sys/net/ipv4/tcp_rmem');
  const optmem = readProc('/proc/sys/net/core/optmem_max');
  let highOrderMeaning: string;
  if (highOrder === '0') {
    highOrderMeaning =
      'senders on this host build packets from high-order (multi-page) fragments: a plain send() sender ' +
      '(Node net.Socket, curl, netcat) delivers 0% mappable bytes over loopback; only a MSG_ZEROCOPY ' +
      'sender (the package’s) does. sysctl -w net.core.high_order_alloc_disable=1 (root, global) makes plain ' +
      'loopback senders mappable. Remote senders are not affected (their NIC decides).';
  } else if (highOrder === '1') {
    highOrderMeaning =
      'senders on this host build packets from single pages: a plain send() sender over loopback is ' +
      'mappable (measured 99.99% at MSS 4108, 93.7% at the default loopback MSS). At the default MSS every ' +
      '64 KiB segment ends in a run shorter than a page, so the receiver maps 15 pages and copies one run per ' +
      'segment: measured 3-10x the CPU of copying. Global: every socket on the host allocates its send ' +
      'buffers page by page. Remote senders are not affected.';
  } else {
    highOrderMeaning = 'not present on this kernel: loopback senders use whatever the kernel allocates';
  }
  let rmemMeaning = 'not readable';
  if (rmem !== null) {
    const max = Number(rmem.split(' ')[2]);
    rmemMeaning =
      `min default max of the TCP receive buffer. The kernel caps SO_RCVLOWAT (the chunk a wake-up waits ` +
      `for) at half the receive buffer, which autotuning grows up to max: chunks above ${formatBytes(max / 2)} ` +
      `wake up before they are full.`;
  }
  let optmemMeaning = 'not readable';
  if (optmem !== null) {
    optmemMeaning =
      Number(optmem) < 65536
        ? 'small: MSG_ZEROCOPY senders on this host run out of option memory for completions and copy ' +
          '(ENOBUFS); raise it to 131072 or more'
        : 'enough for MSG_ZEROCOPY senders to track their completions (the package’s sender uses them)';
  }
  return [
    { name: 'net.core.high_order_alloc_disable', value: highOrder, meaning: highOrderMeaning },
    { name: 'net.ipv4.tcp_rmem', value: rmem, meaning: rmemMeaning },
    { name: 'net.core.optmem_max', value: optmem, meaning: optmemMeaning },
  ];
}

let ethtoolMissing: boolean | null = null;

function headerSplit(name: string): { state: string; note: string } {
  if (ethtoolMissing === true) {
    return { state: 'unknown', note: 'ethtool is not installed (Debian: apt-get install ethtool)' };
  }
  let output: string;
  try {
    output = execFileSync('ethtool', ['-g', name], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 5000,
    });
    ethtoolMissing = false;
  } catch (error) {
    const err = error as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') {
      ethtoolMissing = true;
      return { state: 'unknown', note: 'ethtool is not installed (Debian: apt-get install ethtool)' };
    }
    ethtoolMissing = false;
    const reason = (err.stderr ?? '').trim().split('\n')[0] || err.message;
    return { state: 'unknown', note: `the driver reports no ring parameters (${reason})` };
  }
  const match = /TCP data split:\s*(\S+)/.exec(output);
  if (match === null) {
    return {
      state: 'unknown',
      note: 'ethtool does not show "TCP data split" (ethtool >= 6.1 and a driver that reports it)',
    };
  }
  const state = match[1];
  const notes: Record<string, string> = {
    on: 'the NIC puts headers and payload in separate buffers',
    off: 'supported by the driver but off: try ethtool -G <if> tcp-data-split on',
    auto: 'the driver decides (usually on with large MTUs or when a feature asks for it)',
    'n/a': 'the driver cannot split headers from data: received payload is not page-aligned',
  };
  return { state, note: notes[state] ?? 'as ethtool reports it' };
}

function interfaces(): DoctorInterface[] {
  let names: string[];
  try {
    names = fs.readdirSync('/sys/class/net').sort();
  } catch {
    return [];
  }
  const timestamps = readProc('/proc/sys/net/ipv4/tcp_timestamps') !== '0';
  return names.map((name) => {
    const base = path.join('/sys/class/net', name);
    const mtuText = readProc(path.join(base, 'mtu'));
    const mtu = mtuText === null ? null : Number(mtuText);
    const state = readProc(path.join(base, 'operstate')) ?? 'unknown';
    const loopback = readProc(path.join(base, 'type')) === '772';
    const tcpPayload = mtu === null ? null : Math.max(0, mtu - 40 - (timestamps ? 12 : 0));
    const pagesPerSegment = tcpPayload === null ? 0 : Math.floor(tcpPayload / PAGE);
    const wholePages = tcpPayload !== null && pagesPerSegment > 0 && tcpPayload % PAGE === 0;
    const mappableShare = tcpPayload === null || tcpPayload === 0 ? 0 : (pagesPerSegment * PAGE) / tcpPayload;
    const measured = { name, mtu, state, loopback, tcpPayload, pagesPerSegment, wholePages, mappableShare };
    if (loopback) {
      return {
        ...measured,
        headerSplit: 'n/a',
        headerSplitNote: 'loopback has no NIC: the sender’s pages are handed over as they are',
        verdict: 'loopback: mappable from a MSG_ZEROCOPY sender, or from any sender with high_order_alloc_disable=1',
      };
    }
    const split = headerSplit(name);
    let verdict: string;
    if (pagesPerSegment === 0) {
      verdict = `MTU ${mtu ?? '?'} leaves ${tcpPayload ?? '?'} B per segment, less than a page: nothing received here can be mapped (needs MTU >= ${PAGE + 40 + (timestamps ? 12 : 0)})`;
    } else if (split.state === 'on' || split.state === 'auto') {
      verdict = wholePages
        ? 'whole pages per segment and header split: received payload can be mapped'
        : `header split, ${pagesPerSegment} page(s) per segment: up to ${(mappableShare * 100).toFixed(1)}% mappable (MTU ${PAGE * pagesPerSegment + 40 + (timestamps ? 12 : 0)} would make it 100%)`;
    } else if (split.state === 'unknown') {
      verdict = `payload can fill ${pagesPerSegment} page(s) per segment (up to ${(mappableShare * 100).toFixed(1)}%) if the NIC splits headers; not known here`;
    } else {
      verdict = 'no header/data split: payload is not page-aligned, expect about 0% mapped';
    }
    return {
      ...measured,
      headerSplit: split.state,
      headerSplitNote: split.note,
      verdict,
    };
  });
}

/** Splits bytes not mapped by cause, from a receiver's stats. */
export function copiedBecause(stats: ReceiverStats): CopiedBecause {
  return {
    shortRuns: stats.bytesCopiedShortRuns,
    urgent: stats.bytesCopiedUrgent,
    poolFull: stats.bytesCopiedPoolFull,
    fallback: stats.bytesCopiedFallback,
    copyMode: stats.bytesCopiedCopyMode,
    draining: stats.bytesCopiedDraining,
  };
}

function touchLines(data: Buffer): number {
  let sum = 0;
  for (let i = 0; i < data.length; i += 64) sum += data[i];
  return sum;
}

let sink = 0;

/** One transfer over loopback from the package's sender into attach(), in this process. */
async function transfer(
  mode: SelfTestRun['mode'],
  sender: SelfTestRun['sender'],
  chunkSize: number,
  bytes: number,
): Promise<SelfTestRun> {
  const server = net.createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const child = startSender({
    port,
    bytes,
    seed: 1,
    mode: sender,
    ...(sender === 'zerocopy' ? { mss: 4108 } : {}),
  });
  try {
    // A sender that fails (cannot connect, bad option) ends the wait too.
    const failed = child.done.then(() => {
      throw new Error('the sender exited before connecting');
    });
    failed.catch(() => undefined);
    const [socket] = (await Promise.race([once(server, 'connection'), failed])) as [net.Socket];
    const receiver = attach(socket, { chunkSize, mode });
    let received = 0;
    let mapped = 0;
    const cpuStart = process.cpuUsage();
    const start = process.hrtime.bigint();
    for await (const chunk of receiver) {
      sink += touchLines(chunk.data);
      received += chunk.data.length;
      if (chunk.mapped) mapped += chunk.data.length;
      chunk.release();
    }
    const seconds = Number(process.hrtime.bigint() - start) / 1e9;
    const cpu = process.cpuUsage(cpuStart);
    socket.destroy();
    await child.done;
    const gb = Math.max(received, 1) / 1e9;
    const stats = receiver.stats;
    return {
      mode,
      sender,
      chunkSize,
      bytes: received,
      mappedShare: received === 0 ? 0 : mapped / received,
      cpuMsPerGB: (cpu.user + cpu.system) / 1000 / gb,
      userMsPerGB: cpu.user / 1000 / gb,
      sysMsPerGB: cpu.system / 1000 / gb,
      gbPerSecond: gb / Math.max(seconds, 1e-9),
      copiedBecause: copiedBecause(stats),
      fallbackReason: stats.fallbackReason,
    };
  } finally {
    child.stop();
    server.close();
  }
}

function describeRun(run: SelfTestRun): string {
  return (
    `${run.mode.padEnd(8)} ${formatBytes(run.chunkSize).padStart(8)} chunks, ${run.sender} sender: ` +
    `${(run.mappedShare * 100).toFixed(2)}% mapped, ${run.cpuMsPerGB.toFixed(0)} ms CPU/GB ` +
    `(user ${run.userMsPerGB.toFixed(0)}, sys ${run.sysMsPerGB.toFixed(0)}), ${run.gbPerSecond.toFixed(2)} GB/s`
  );
}

async function selfTest(options: DoctorOptions): Promise<SelfTest> {
  const progress = options.progress ?? (() => undefined);
  if (options.selfTest === false) return { ran: false, note: 'skipped (--skip-self-test)', runs: [] };
  if (!fs.existsSync(senderPath)) {
    return {
      ran: false,
      note: `the package’s sender is not built (${senderPath}): run npm rebuild tcp-zerocopy`,
      runs: [],
    };
  }
  const bytes = options.bytes ?? 256 * MiB;
  const chunkSizes = options.chunkSizes ?? [256 * 1024, MiB, 4 * MiB];
  const supported = probe().supported;
  const runs: SelfTestRun[] = [];
  try {
    await selfTestRuns(bytes, chunkSizes, supported, runs, progress);
  } catch (error) {
    // A report with what ran, not a crash: doctor is what people run when things fail.
    const message = error instanceof Error ? error.message : String(error);
    progress(`self-test failed: ${message}`);
    return { ran: runs.length > 0, note: `self-test failed: ${message}`, runs };
  }
  return {
    ran: true,
    note: supported ? null : `zero-copy runs skipped: ${probe().reason ?? 'unsupported'}`,
    runs,
  };
}

async function selfTestRuns(
  bytes: number,
  chunkSizes: number[],
  supported: boolean,
  runs: SelfTestRun[],
  progress: (line: string) => void,
): Promise<void> {
  const modes: ('zerocopy' | 'copy')[] = supported ? ['zerocopy', 'copy'] : ['copy'];
  const total = modes.length * chunkSizes.length + 1;
  let step = 0;
  // Not counted: compiles the read loop and makes the pool's mappings.
  progress('self-test: warming up...');
  for (const mode of modes) await transfer(mode, 'zerocopy', MiB, 32 * MiB);
  for (const chunkSize of chunkSizes) {
    for (const mode of modes) {
      step++;
      progress(
        `self-test ${step}/${total}: ${formatBytes(bytes)} over loopback, mode ${mode}, ${formatBytes(chunkSize)} chunks...`,
      );
      const run = await transfer(mode, 'zerocopy', chunkSize, bytes);
      progress(`  ${describeRun(run)}`);
      runs.push(run);
    }
  }
  step++;
  const plainBytes = Math.min(bytes, 64 * MiB);
  progress(
    `self-test ${step}/${total}: ${formatBytes(plainBytes)} from a plain send() sender (as a Node client sends), mode auto...`,
  );
  const plain = await transfer('auto', 'plain', MiB, plainBytes);
  progress(`  ${describeRun(plain)}`);
  runs.push(plain);
}

function recommend(report: Omit<DoctorReport, 'recommendation'>): DoctorRecommendation {
  const reasons: string[] = [];
  const runs = report.selfTest.runs.filter((run) => run.sender === 'zerocopy');
  const best = (mode: string): SelfTestRun | undefined =>
    runs.filter((run) => run.mode === mode).sort((a, b) => a.cpuMsPerGB - b.cpuMsPerGB)[0];
  const zc = best('zerocopy');
  const copy = best('copy');
  if (!report.kernel.supported) {
    reasons.push(
      `zero-copy is unavailable here (${report.kernel.reason ?? 'unsupported'}): attach() copies either way`,
    );
    return { mode: 'copy', chunkSize: copy?.chunkSize ?? MiB, reasons };
  }
  const remote = report.interfaces.filter((i) => !i.loopback && i.state !== 'down');
  const mappableNic = remote.some((i) => i.pagesPerSegment > 0 && (i.headerSplit === 'on' || i.headerSplit === 'auto'));
  const unknownNic = remote.some((i) => i.pagesPerSegment > 0 && i.headerSplit === 'unknown');
  if (zc === undefined || copy === undefined) {
    reasons.push('no self-test figures: auto maps what arrives in whole pages and copies the rest');
    return { mode: 'auto', chunkSize: MiB, reasons };
  }
  reasons.push(
    `loopback self-test: zero-copy ${zc.cpuMsPerGB.toFixed(0)} ms CPU/GB at ${formatBytes(zc.chunkSize)} chunks ` +
      `(${(zc.mappedShare * 100).toFixed(2)}% mapped), copy ${copy.cpuMsPerGB.toFixed(0)} ms CPU/GB at ${formatBytes(copy.chunkSize)}`,
  );
  if (zc.mappedShare < 0.9) {
    reasons.push('the package’s own sender was not mapped over loopback: something on this host prevents mapping');
    return { mode: 'copy', chunkSize: copy.chunkSize, reasons };
  }
  if (zc.cpuMsPerGB > copy.cpuMsPerGB * 1.1) {
    reasons.push(
      'mapping cost more CPU than copying here (page-table work, e.g. under a hypervisor): use copy, or auto ' +
        'if memory bandwidth matters more than CPU',
    );
    return { mode: 'copy', chunkSize: copy.chunkSize, reasons };
  }
  if (!mappableNic && remote.length > 0) {
    reasons.push(
      unknownNic
        ? 'whether remote traffic can be mapped depends on header split, which is unknown here: run doctor --listen with a real sender'
        : 'no interface here delivers whole pages (MTU or header split): remote traffic arrives copied; auto notices and copies with little overhead',
    );
  }
  const plain = report.selfTest.runs.find((run) => run.sender === 'plain');
  if (plain !== undefined && plain.mappedShare > 0.5 && plain.cpuMsPerGB > copy.cpuMsPerGB * 1.5) {
    reasons.push(
      `a plain loopback sender is ${(plain.mappedShare * 100).toFixed(1)}% mappable here but cost ` +
        `${plain.cpuMsPerGB.toFixed(0)} ms CPU/GB (sub-page runs in every segment): use mode 'copy' for such peers`,
    );
  }
  reasons.push('auto maps what arrives in whole pages and copies the rest, stopping to try after a streak of misses');
  return { mode: 'auto', chunkSize: Math.max(zc.chunkSize, MiB), reasons };
}

/** Runs every check and the self-test; never throws for an unsupported host (it says why). */
export async function runDoctor(options: DoctorOptions = {}): Promise<DoctorReport> {
  const progress = options.progress ?? (() => undefined);
  progress('checking the kernel...');
  const release = kernelRelease();
  const found = probe();
  const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as {
    name: string;
    version: string;
  };
  const partial: Omit<DoctorReport, 'recommendation'> = {
    package: { name: pkg.name, version: pkg.version },
    node: process.version,
    platform: `${process.platform} ${process.arch}`,
    kernel: { release, supported: found.supported, reason: found.reason ?? null, features: features(release) },
    sysctls: sysctls(),
    interfaces: [],
    selfTest: { ran: false, note: null, runs: [] },
  };
  progress('checking network interfaces...');
  partial.interfaces = process.platform === 'linux' ? interfaces() : [];
  partial.selfTest =
    process.platform === 'linux'
      ? await selfTest(options)
      : { ran: false, note: `zero-copy receive needs Linux (this is ${process.platform})`, runs: [] };
  // eslint-disable-next-line @typescript-eslint/no-meaningless-void-operator -- reads `sink`, so the reads that feed it are not dead code
  void sink;
  return { ...partial, recommendation: recommend(partial) };
}

/** '256 MiB', '1.5 GiB', '4 KiB', '12 B'. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 || Number.isInteger(value) ? value.toFixed(0) : value.toFixed(1)} ${units[unit]}`;
}

/** The report as text for a person. */
export function formatReport(report: DoctorReport): string {
  const lines: string[] = [];
  const { kernel } = report;
  lines.push(`${report.package.name} ${report.package.version}, Node ${report.node}, ${report.platform}`);
  lines.push(
    `kernel ${kernel.release || '?'}: zero-copy receive ${kernel.supported ? 'supported' : `unavailable: ${kernel.reason ?? '?'}`}`,
  );
  lines.push('', 'features:');
  for (const feature of kernel.features) {
    const since = feature.since === 'runtime' ? 'runtime' : `Linux ${feature.since}`;
    lines.push(`  [${feature.available ? 'x' : ' '}] ${feature.name} (${since}): ${feature.usedFor}`);
  }
  lines.push('', 'sysctls:');
  for (const sysctl of report.sysctls) {
    lines.push(`  ${sysctl.name} = ${sysctl.value ?? '(unreadable)'}`);
    lines.push(`      ${sysctl.meaning}`);
  }
  lines.push('', 'interfaces (TCP payload per segment over IPv4 with timestamps):');
  for (const i of report.interfaces) {
    lines.push(
      `  ${i.name} (${i.state}): MTU ${i.mtu ?? '?'}, payload ${i.tcpPayload ?? '?'} B = ${i.pagesPerSegment} whole page(s)` +
        `${i.wholePages ? ' exactly' : ''}, header split ${i.headerSplit}`,
    );
    lines.push(`      ${i.verdict}`);
    if (i.headerSplit === 'unknown') lines.push(`      header split unknown: ${i.headerSplitNote}`);
  }
  lines.push('', 'loopback self-test (receiver CPU from process.cpuUsage(), one byte read per 64):');
  if (report.selfTest.note !== null) lines.push(`  ${report.selfTest.note}`);
  for (const run of report.selfTest.runs) lines.push(`  ${describeRun(run)}`);
  const { recommendation } = report;
  lines.push(
    '',
    `recommendation: attach(socket, { mode: '${recommendation.mode}', chunkSize: ${recommendation.chunkSize} })`,
  );
  for (const reason of recommendation.reasons) lines.push(`  - ${reason}`);
  return lines.join('\n');
}

/** One connection's figures, as `doctor --listen` prints them. */
export interface ListenConnectionReport {
  /** 'progress' while the stream runs, 'closed' at its end. */
  event: 'progress' | 'closed';
  /** 1 for the first connection accepted, then 2, ... */
  id: number;
  /** The peer, 'address:port'. */
  remote: string;
  bytes: number;
  bytesMapped: number;
  /** bytesMapped / bytes (0 before any byte). */
  mappedShare: number;
  /** Bytes not mapped, by cause. */
  copiedBecause: CopiedBecause;
  /** 'zerocopy' or 'copy' (after a fallback). */
  path: 'zerocopy' | 'copy';
  fallbackReason: string | null;
  /** The stream's error code (ECONNRESET, ...), when it ended with one. */
  error: string | null;
  /** What the figures say, one line. */
  diagnosis: string;
}

/** What `doctor --listen` emits: its address once, then connection reports. */
export type ListenEvent = { event: 'listening'; host: string; port: number } | ListenConnectionReport;

/** Options of listenDoctor(). */
export interface ListenOptions {
  /** Address to listen on (default '0.0.0.0'). */
  host?: string;
  port: number;
  /** Stop after this many connections have ended (default: run until stopped). */
  connections?: number;
  /** How often a running connection reports progress, in ms (default 1000). */
  intervalMs?: number;
  chunkSize?: number;
  onEvent: (event: ListenEvent) => void;
}

/** Why a connection's bytes were not mapped, in one line. */
export function diagnose(report: Omit<ListenConnectionReport, 'diagnosis'>): string {
  if (report.bytes === 0) return 'no data yet';
  if (report.mappedShare >= 0.99) return 'whole pages: mapped';
  const causes = report.copiedBecause;
  const top = (Object.entries(causes) as [keyof CopiedBecause, number][]).sort((a, b) => b[1] - a[1])[0];
  const explain: Record<keyof CopiedBecause, string> = {
    shortRuns:
      'payload arrived in runs shorter than a page: an MTU that leaves less than 4096 B per segment, a NIC ' +
      'without header/data split, or (on loopback) a plain sender with net.core.high_order_alloc_disable=0',
    urgent: 'urgent (MSG_OOB) data: mapping stops at each urgent mark',
    poolFull: 'the pool was at its pinned-bytes cap: release chunks sooner or raise configure({ maxPinnedBytes })',
    fallback: `zero-copy failed and the receiver copies for good: ${report.fallbackReason ?? 'unavailable'}`,
    copyMode: 'the receiver ran in copy mode',
    draining: 'copied while draining a destroyed socket',
  };
  return `${(report.mappedShare * 100).toFixed(2)}% mapped; mostly ${top[0]}: ${explain[top[0]]}`;
}

/**
 * Listens for real senders and reports each connection live: bytes, share mapped and, for
 * the rest, why. Resolves when `connections` connections have ended (or never).
 */
export async function listenDoctor(options: ListenOptions): Promise<void> {
  const host = options.host ?? '0.0.0.0';
  const intervalMs = options.intervalMs ?? 1000;
  const server = net.createServer({ pauseOnConnect: true });
  let nextId = 1;
  let ended = 0;
  let finish: () => void = () => undefined;
  const finished = new Promise<void>((resolve) => (finish = resolve));

  server.on('connection', (socket: net.Socket) => {
    const id = nextId++;
    const remote = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    socket.on('error', () => undefined);
    // 'zerocopy': the question is what this path maps; 'auto' may settle on copying.
    const receiver = attach(socket, { chunkSize: options.chunkSize ?? MiB, mode: 'zerocopy' });
    let bytes = 0;
    let error: string | null = null;
    const report = (event: 'progress' | 'closed'): void => {
      const stats = receiver.stats;
      const base = {
        event,
        id,
        remote,
        bytes,
        bytesMapped: stats.bytesMapped,
        mappedShare: bytes === 0 ? 0 : stats.bytesMapped / bytes,
        copiedBecause: copiedBecause(stats),
        path: stats.path,
        fallbackReason: stats.fallbackReason,
        error,
      };
      options.onEvent({ ...base, diagnosis: diagnose(base) });
    };
    const timer = setInterval(() => report('progress'), intervalMs);
    void (async () => {
      try {
        for await (const chunk of receiver) {
          bytes += chunk.data.length;
          chunk.release();
        }
      } catch (caught) {
        const err = caught as Partial<NodeJS.ErrnoException>;
        error = String(err.code ?? err.message);
      }
      clearInterval(timer);
      report('closed');
      socket.destroy();
      ended++;
      if (options.connections !== undefined && ended >= options.connections) {
        server.close();
        finish();
      }
    })();
  });
  server.listen(options.port, host);
  await once(server, 'listening');
  const address = server.address() as net.AddressInfo;
  options.onEvent({ event: 'listening', host: address.address, port: address.port });
  await finished;
}

/** A connection report as one line for a person. */
export function formatConnection(report: ListenConnectionReport): string {
  const c = report.copiedBecause;
  const parts = [
    `short runs ${formatBytes(c.shortRuns)}`,
    `urgent ${formatBytes(c.urgent)}`,
    `pool full ${formatBytes(c.poolFull)}`,
    `kernel errors/fallback ${formatBytes(c.fallback)}`,
  ];
  if (c.copyMode > 0) parts.push(`copy mode ${formatBytes(c.copyMode)}`);
  if (c.draining > 0) parts.push(`draining ${formatBytes(c.draining)}`);
  const head =
    `#${report.id} ${report.remote} ${report.event === 'closed' ? 'closed' : 'receiving'}: ` +
    `${formatBytes(report.bytes)}, ${(report.mappedShare * 100).toFixed(2)}% mapped; not mapped: ${parts.join(', ')}`;
  const tail = report.error !== null ? ` (ended with ${report.error})` : '';
  return report.event === 'closed' ? `${head}${tail}\n    ${report.diagnosis}` : head;
}
