#!/usr/bin/env node
// @ts-check
// `npm run bench`: receiver CPU per GB and throughput, side by side in one run, for
//   (a) tcp-zerocopy zero-copy mode   (b) tcp-zerocopy copy mode
//   (c) net.Socket 'data' events      (d) net.Socket with onread reusing one buffer
//   (e) C zero-copy reference (the kernel selftest's loop)   (f) C recv()
//   (g) tcp-zerocopy auto mode (the default: picks (a) or (b) by measuring)
//   (h) copy mode again, as a control: how far apart the same code measures in one run
// each in its own process, receiving from the native sender: a MSG_ZEROCOPY pass at MSS
// 4108, then a plain-send() pass. Each receiver hands what it gets to a consumer: 'lines'
// reads one byte of every 64-byte line, 'none' reads nothing (the receive path alone),
// 'sha256' hashes every chunk, 'file' writes to a file, 'forward' sends it on to a socket
// (a C sink in another process). Chunk sizes 64K..4M, repetitions interleaved, medians
// reported with min-max.
//
// Within a repetition the receivers of a group (pass, chunk size, consumer) all run at
// once, idle but for their turn: each takes its measured bytes in --rounds streams (4 by
// default), one receiver at a time in a new shuffled order each round, so all of a
// group's receivers are measured over the same minute. This host's CPU figures swing
// slowly as well as from stream to stream: the same C receiver measured 110-180 ms/GB
// from one repetition to the next, and measured one after the other, a group's 1 GiB
// transfers paired (h) with (b) at a spread of 9-20% per repetition, 5-10% taken in turn.
// A receiver's figure is its measured streams' CPU time; what its process spent while idle
// between them is recorded beside it (betweenStreamsCpuMs). After each stream the driver
// waits 50 ms, so what the stream left behind right away does not run in the next
// receiver's, and each process takes one more stream, unmeasured, so its last measured
// stream is not its last (which ends the process's write stream or socket).
//
// Each receiver process first takes two unmeasured warm-up streams (--warmup, default
// 256M in all; 0 for none), so the figures are a running server's, not its start-up's
// (JIT, first page tables, and auto mode's first measurement, which a server makes once
// per thread and group: 160 MiB at 4 MiB chunks, up to 288 MiB if windows are measured
// again). Two, because V8 optimizes code that runs once per stream (the receiver's loop)
// on its second call: with one, a 27 ms TurboFan compile of it landed in the measured
// stream. (Code that runs once per chunk is optimized after a thousand-odd calls, within
// the measured GiB at 1 MiB chunks; lowering V8's --interrupt-budget to get there sooner
// cost more than it saved.)
// Syscalls are counted (perf) during the second warm-up stream, so the tracepoint's cost
// is not in the measured one; the count includes the connection's set-up and, for auto
// mode, any measuring windows still running.
//
// The 'file' consumer overwrites, from its start, one file this run writes in full first:
// a new file's page cache comes from freshly allocated memory, which on a VM with free
// page reporting (virtio-balloon; this project's VM) may have been handed back to the
// host and costs a host fault per block on first touch. That moved the file rows 5-10x
// from run to run, for both modes alike.
//
// Pinned (unless --unpinned, or not root, or one CPU allowed): the sender (and the
// forward sink) run on the first allowed CPU and each receiver on the second, and
// loopback's receive processing is steered to the first with RPS
// (/sys/class/net/lo/queues/rx-0/rps_cpus, restored on exit). On loopback the kernel
// otherwise does TCP receive work (and even the sender's transmits, from ACKs) in
// whichever process happens to run, which moved the receivers' CPU figures by 20-40%
// between runs; with a NIC that work is the interrupt's, not the receiver's. The
// receivers of each group run in a shuffled order (--seed), so none always follows the
// same neighbour.
//
//   npm run bench [-- --quick] [--reps N] [--bytes 1G] [--rounds 4] [--chunks 64K,256K,1M,4M] [--only a,e]
//                 [--consumers lines,none,sha256,file,forward] [--passes zerocopy,plain]
//                 [--warmup 256M] [--unpinned] [--seed N]
'use strict';
const { spawn, spawnSync } = require('node:child_process');
const { once } = require('node:events');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { parseArgs } = require('node:util');

const { probe } = require('../dist/index.js');
const { startSender } = require('../dist/testing.js');

const root = path.resolve(__dirname, '..');
// The C reference receivers are the benchmark's own: built here (not by npm install, which
// builds only the addon and the sender a consumer needs) into bench/build/.
const referenceDir = path.join(root, 'bench', 'build');
const referenceSources = path.join(root, 'bench', 'native');

/**
 * Compiles bench/native/<name>.cc into bench/build/<name> unless it is up to date.
 * @param {string} name
 */
function buildReference(name) {
  const source = path.join(referenceSources, `${name}.cc`);
  const output = path.join(referenceDir, name);
  const inputs = [source, path.join(referenceSources, 'ref_common.h'), path.join(root, 'native', 'kernel.h')];
  const built = fs.existsSync(output) ? fs.statSync(output).mtimeMs : 0;
  if (inputs.every((input) => fs.statSync(input).mtimeMs <= built)) return;
  fs.mkdirSync(referenceDir, { recursive: true });
  const cxx = process.env.CXX ?? 'g++';
  const args = ['-std=c++17', '-Wall', '-Wextra', '-O2', '-o', output, source];
  console.error(`bench: ${cxx} ${args.join(' ')}`);
  const result = spawnSync(cxx, args, { stdio: 'inherit' });
  if (result.status !== 0)
    throw new Error(`building ${name} failed (${cxx}: ${result.error?.message ?? `exit ${result.status}`})`);
}

/** @param {string} text */
function parseSize(text) {
  const match = /^(\d+)([KMG]?)$/i.exec(text.trim());
  if (match === null) throw new Error(`not a size: ${text}`);
  return (
    Number(match[1]) *
    { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[/** @type {'' | 'K' | 'M' | 'G'} */ (match[2].toUpperCase())]
  );
}

/** @param {number} bytes */
function sizeName(bytes) {
  if (bytes >= 1024 ** 3 && bytes % 1024 ** 3 === 0) return `${bytes / 1024 ** 3}G`;
  if (bytes >= 1024 ** 2 && bytes % 1024 ** 2 === 0) return `${bytes / 1024 ** 2}M`;
  return `${bytes / 1024}K`;
}

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    reps: { type: 'string', default: '3' },
    bytes: { type: 'string' },
    chunks: { type: 'string', default: '64K,256K,1M,4M' },
    only: { type: 'string' },
    consumers: { type: 'string', default: 'lines,none,sha256,file,forward' },
    passes: { type: 'string', default: 'zerocopy,plain' },
    rounds: { type: 'string', default: '4' },
    warmup: { type: 'string', default: '256M' },
    unpinned: { type: 'boolean', default: false },
    seed: { type: 'string', default: '1' },
    out: { type: 'string', default: path.join(root, 'bench', 'results') },
  },
});
/** Each receiver's measured bytes per repetition, in `rounds` streams taken in turn. */
const rounds = Math.max(1, Number(values.rounds));
const streamBytes = Math.max(
  4096,
  Math.floor(parseSize(values.bytes ?? (values.quick ? '256M' : '1G')) / rounds / 4096) * 4096,
);
const bytes = streamBytes * rounds;
const reps = Math.max(1, Number(values.reps));
/** Each receiver process first takes one unmeasured stream of this size (0: none). */
const warmupBytes = parseSize(values.warmup);
const chunks = values.chunks.split(',').map(parseSize);
/** Which receivers run with which consumer (the C ones only read or not). */
const consumerReceivers = {
  lines: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'],
  none: ['a', 'b', 'e', 'f', 'g', 'h'],
  sha256: ['a', 'b', 'c', 'd', 'g', 'h'],
  file: ['a', 'b', 'c', 'd', 'g', 'h'],
  forward: ['a', 'b', 'c', 'd', 'g', 'h'],
};
const consumers = values.consumers.split(',').map((c) => {
  if (!(c in consumerReceivers)) throw new Error(`unknown consumer ${c}`);
  return /** @type {keyof typeof consumerReceivers} */ (c);
});

/**
 * @typedef {{ id: string, name: string, kind?: string, bin?: string, connects?: boolean }} ReceiverSpec
 * @typedef {{ bytes: number, mappedBytes: number, cpuUserMs: number, cpuSysMs: number, elapsedMs: number, syscalls: number | null, maxRssKiB: number, senderBusyPercent?: number, syscallsPerGB?: number | null, path?: string, decision?: string | null, streamCpuMsPerGB?: number[], processCpuMs?: number, betweenStreamsCpuMs?: number }} Report
 */
/** @type {ReceiverSpec[]} */
const allReceivers = [
  { id: 'a', name: 'tcp-zerocopy, zero-copy mode', kind: 'zerocopy' },
  { id: 'b', name: 'tcp-zerocopy, copy mode', kind: 'copy' },
  { id: 'c', name: "net.Socket 'data'", kind: 'net-data' },
  { id: 'd', name: 'net.Socket onread (one buffer)', kind: 'net-onread', connects: true },
  { id: 'e', name: 'C zero-copy reference', bin: 'zc_ref_recv' },
  { id: 'f', name: 'C recv()', bin: 'recv_ref' },
  { id: 'g', name: 'tcp-zerocopy, auto mode', kind: 'auto' },
  // The same receiver as (b): (h) against (b) is the resolution of this run's ratios, the
  // yardstick for (g)'s 1.05x.
  { id: 'h', name: 'tcp-zerocopy, copy mode again (control)', kind: 'copy' },
];
const only = values.only?.split(',');
const receivers = allReceivers.filter((r) => only === undefined || only.includes(r.id));
const passes = [
  {
    id: 'zerocopy',
    name: 'MSG_ZEROCOPY sender, MSS 4108',
    sender: { mode: /** @type {const} */ ('zerocopy'), mss: 4108 },
  },
  { id: 'plain', name: 'plain send() sender', sender: { mode: /** @type {const} */ ('plain') } },
].filter((p) => values.passes.split(',').includes(p.id));

/**
 * Starts one receiver process for `streams` streams and warms it up; its measured streams
 * are then sent one at a time with measure(), in turn with the other receivers of its group.
 * @param {ReceiverSpec} receiver @param {typeof passes[number]} pass @param {number} chunk @param {string} consumer
 * @param {number} measuredStreams
 */
async function startReceiver(receiver, pass, chunk, consumer, measuredStreams) {
  const senderOptions = { seed: 3, ...pass.sender };
  const command = receiver.bin !== undefined ? path.join(referenceDir, receiver.bin) : process.execPath;
  const baseArgs =
    receiver.bin !== undefined
      ? consumer === 'none'
        ? ['--no-touch']
        : []
      : [path.join(__dirname, 'receiver.js'), '--kind', /** @type {string} */ (receiver.kind), '--consumer', consumer];
  /** @type {import('node:child_process').ChildProcess | null} */
  let forwardSink = null;
  if (consumer === 'forward') {
    // The forwarded stream goes to a C receiver that reads nothing, in its own process.
    const sinkProcess = spawn(path.join(referenceDir, 'recv_ref'), ['--port', '0', '--no-touch'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    forwardSink = sinkProcess;
    running.add(sinkProcess);
    sinkProcess.on('close', () => running.delete(sinkProcess));
    const [line] = /** @type {[Buffer]} */ (
      await once(/** @type {import('node:stream').Readable} */ (sinkProcess.stdout), 'data')
    );
    baseArgs.push('--forward-to', String(/\{"port":(\d+)\}/.exec(line.toString())?.[1]));
  }
  if (consumer === 'file' && receiver.bin === undefined) baseArgs.push('--file', prefilledFile());

  // Two warm-up streams: V8 optimizes a function that runs once per stream (the
  // receiver's loop) on its second call, so the second warm-up takes that compile.
  const warmupStreams = warmupBytes > 0 ? 2 : 0;
  const stdio = /** @type {const} */ (['pipe', 'pipe', 'inherit']);
  // One more stream after the measured ones, not measured itself: the last measured
  // stream is then not the process's last, and what it leaves behind happens in a gap, as
  // for the others.
  const args = [
    ...baseArgs,
    ...['--chunk', String(chunk), '--streams', String(warmupStreams + measuredStreams + 1), '--port', '0'],
  ];
  // taskset execs the receiver: the child's pid is the receiver's.
  const child = pinning.on
    ? spawn('taskset', ['-c', String(pinning.receiverCpu), command, ...args], { stdio })
    : spawn(command, args, { stdio });
  running.add(child);
  child.on('close', () => running.delete(child));
  /** Lines the receiver printed and nobody has taken yet, and who waits for the next. */
  const lines = /** @type {string[]} */ ([]);
  /** @type {((line: string) => void) | null} */
  let waiting = null;
  let partial = '';
  child.stdout.on('data', (data) => {
    partial += data.toString();
    for (let newline = partial.indexOf('\n'); newline >= 0; newline = partial.indexOf('\n')) {
      const line = partial.slice(0, newline);
      partial = partial.slice(newline + 1);
      if (waiting !== null) {
        const take = waiting;
        waiting = null;
        take(line);
      } else lines.push(line);
    }
  });
  const exited = new Promise((resolve) => child.on('close', resolve));
  /** The receiver's next line, or an error if it exits first. */
  const nextLine = () =>
    lines.length > 0
      ? Promise.resolve(/** @type {string} */ (lines.shift()))
      : /** @type {Promise<string>} */ (
          Promise.race([
            new Promise((resolve) => (waiting = resolve)),
            exited.then((code) => {
              throw new Error(`${receiver.name} exited with ${String(code)}`);
            }),
          ])
        );
  const firstLine = await nextLine();
  const listeningPort = Number(/\{"port":(\d+)\}/.exec(firstLine)?.[1]);
  /** One stream from a sender to the receiver (which connects to it, or it to the receiver). @param {number} streamBytes */
  const startStream = async (streamBytes) => {
    if (!receiver.connects) return startSender({ ...senderOptions, bytes: streamBytes, port: listeningPort });
    const sender = startSender({ ...senderOptions, bytes: streamBytes, port: 0, listen: true });
    child.stdin.write(`go ${await sender.listening}\n`);
    return sender;
  };
  /** One stream, and the receiver's report of it. @param {number} streamBytes @returns {Promise<{ report: Report, sent: { cpuUserMs: number, cpuSysMs: number } }>} */
  const stream = async (streamBytes) => {
    const sender = await startStream(streamBytes);
    const report = /** @type {Report} */ (JSON.parse(await nextLine()));
    const sent = await sender.done;
    if (report.bytes !== streamBytes)
      throw new Error(`${receiver.name} received ${report.bytes} of ${streamBytes} bytes`);
    // What the stream left behind right away (closing it, finalizers) runs before the next
    // receiver's stream starts on this CPU, not during it.
    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
    return { report, sent };
  };
  // Syscalls are counted on the second warm-up stream where there is one: perf's
  // tracepoint puts every syscall on a slower path, which must not be in measured streams.
  /** @type {number | null} */
  let syscallsPerGB = null;
  if (warmupStreams > 0) {
    // Not measured: the receiver's first streams warm it up (JIT, pool, page tables, auto
    // mode's measurement) as a server that has been running is warm.
    const half = Math.max(4096, Math.floor(warmupBytes / 2 / 4096) * 4096);
    await stream(half);
    const finishCount = perfWorks ? await countSyscalls(/** @type {number} */ (child.pid)) : null;
    await stream(half);
    if (finishCount !== null) {
      await new Promise((resolve) => setTimeout(resolve, 200)); // the receiver drains what is queued
      syscallsPerGB = perGB(await finishCount(), half);
    }
  }
  /** The measured streams' reports, summed. */
  /** @type {Report} */
  const total = { bytes: 0, mappedBytes: 0, cpuUserMs: 0, cpuSysMs: 0, elapsedMs: 0, syscalls: 0, maxRssKiB: 0 };
  let senderCpuMs = 0;
  let measured = 0;
  /** The process's CPU time at the last measured stream's end. @type {number | undefined} */
  let processCpuAtLastEnd;
  /**
   * What the process spent while idle before this stream, since the last measured one
   * ended: kept beside the figure, not in it. It is what a stream left behind (closing
   * it, 2-3 ms for a Node receiver) and what an idle process does (V8 collects garbage
   * to shrink the heap some seconds after the last allocation), which a busy server does
   * not: 2-18 ms a gap on average for the Node receivers in a trial run, 0.3-0.5 ms for
   * the C ones. @param {Report} report
   */
  const addBetweenStreams = (report) => {
    const streamCpuMs = report.cpuUserMs + report.cpuSysMs;
    if (report.processCpuMs !== undefined && processCpuAtLastEnd !== undefined)
      total.betweenStreamsCpuMs =
        (total.betweenStreamsCpuMs ?? 0) + Math.max(0, report.processCpuMs - streamCpuMs - processCpuAtLastEnd);
    processCpuAtLastEnd = report.processCpuMs;
  };
  return {
    /** Sends the next measured stream and adds its report to the total. @param {number} streamBytes */
    async measure(streamBytes) {
      // Without warm-up streams, syscalls are counted on the first measured one.
      const finishCount =
        perfWorks && warmupStreams === 0 && measured === 0
          ? await countSyscalls(/** @type {number} */ (child.pid))
          : null;
      const { report, sent } = await stream(streamBytes);
      if (finishCount !== null) syscallsPerGB = perGB(await finishCount(), report.bytes);
      for (const key of /** @type {const} */ (['bytes', 'mappedBytes', 'cpuUserMs', 'cpuSysMs', 'elapsedMs']))
        total[key] += report[key];
      total.syscalls = report.syscalls === null || total.syscalls === null ? null : total.syscalls + report.syscalls;
      total.maxRssKiB = Math.max(total.maxRssKiB, report.maxRssKiB);
      // Every path a stream was on ('copy/zerocopy' if they differed); the last decision.
      if (report.path !== undefined)
        total.path = [...new Set([...(total.path?.split('/') ?? []), report.path])].sort().join('/');
      if (report.decision !== undefined) total.decision = report.decision;
      addBetweenStreams(report);
      // Each stream's own figure, to see the spread within a transfer.
      (total.streamCpuMsPerGB ??= []).push(Math.round(cpuPerGB(report)));
      senderCpuMs += sent.cpuUserMs + sent.cpuSysMs;
      measured++;
      return report;
    },
    /** The closing stream (one chunk), then waits for the receiver (and its forward sink) to exit; the summed report. */
    async finish() {
      if (measured !== measuredStreams) throw new Error(`${receiver.name}: ${measured} of ${measuredStreams} streams`);
      addBetweenStreams((await stream(chunk)).report);
      child.stdin.end();
      const code = await exited;
      if (forwardSink !== null && forwardSink.exitCode === null) await once(forwardSink, 'close');
      if (code !== 0) throw new Error(`${receiver.name} exited with ${code}`);
      // Self-reported counts are the measured streams'.
      total.syscallsPerGB = syscallsPerGB ?? perGB(total.syscalls, total.bytes);
      // How busy the sender was while this receiver received: near 100% means the sender,
      // not the receiver, set the throughput.
      total.senderBusyPercent = (100 * senderCpuMs) / total.elapsedMs;
      return total;
    },
  };
}

// Syscalls are counted by the kernel (perf's raw_syscalls tracepoint, linux-perf) where
// that works; otherwise receivers that can count their own report those.
const perfWorks =
  spawnSync('perf', ['stat', '-x', ',', '-e', 'raw_syscalls:sys_enter', 'true'], { encoding: 'utf8' }).status === 0;

/** @param {number | null} count @param {number} streamBytes */
const perGB = (count, streamBytes) => (count === null ? null : (count * 1e9) / streamBytes);

/** Pause after each stream, so what it left behind right away does not run in the next. */
const SETTLE_MS = 50;
/**
 * Receivers and sinks still running: a failed run stops them, or it would wait for ever.
 * @type {Set<import('node:child_process').ChildProcess>}
 */
const running = new Set();
/** What this run changed outside itself, undone at exit, also on a signal. @type {(() => void)[]} */
const undoAtExit = [() => running.forEach((child) => child.kill('SIGKILL'))];
const undoAll = () => {
  for (const undo of undoAtExit.splice(0).reverse()) undo();
};
process.on('exit', undoAll);
for (const signal of /** @type {const} */ (['SIGINT', 'SIGTERM', 'SIGHUP'])) {
  process.once(signal, () => {
    undoAll();
    process.kill(process.pid, signal);
  });
}

/** @type {string | null} */
let fileForConsumer = null;
/** The file the 'file' consumer overwrites: written in full once, removed on exit. */
function prefilledFile() {
  if (fileForConsumer !== null) return fileForConsumer;
  const file = path.join(os.tmpdir(), `tcpzc-bench-file-${process.pid}.out`);
  undoAtExit.push(() => fs.rmSync(file, { force: true }));
  const fd = fs.openSync(file, 'w');
  const piece = Buffer.alloc(8 << 20);
  for (let written = 0; written < warmupBytes + bytes; written += piece.length) fs.writeSync(fd, piece);
  fs.fsyncSync(fd);
  fs.closeSync(fd);
  fileForConsumer = file;
  return file;
}

const rpsFile = '/sys/class/net/lo/queues/rx-0/rps_cpus';
/**
 * Sender and receiver on CPUs of their own, loopback's receive processing on the sender's.
 * @type {{ on: boolean, receiverCpu: number, why: string }}
 */
const pinning = setUpPinning();

function setUpPinning() {
  const off = (/** @type {string} */ why) => ({ on: false, receiverCpu: -1, why });
  if (values.unpinned) return off('unpinned (--unpinned)');
  // The CPUs this process may use (a cpuset may allow fewer than are online).
  const allowed = allowedCpus();
  if (allowed.length < 2) return off(`unpinned (${allowed.length} CPU allowed)`);
  const [senderCpu, receiverCpu] = allowed;
  if (senderCpu >= 32) return off('unpinned (CPU numbers past 31)');
  if (spawnSync('taskset', ['-V']).status !== 0) return off('unpinned (no taskset: util-linux)');
  let saved;
  try {
    saved = fs.readFileSync(rpsFile, 'utf8').trim();
    fs.writeFileSync(rpsFile, (1 << senderCpu).toString(16));
  } catch (error) {
    return off(`unpinned (cannot steer loopback with RPS: ${/** @type {Error} */ (error).message})`);
  }
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    fs.writeFileSync(rpsFile, saved);
  };
  undoAtExit.push(restore);
  // This process (and so the senders and sinks it starts) on the first CPU; receivers on
  // the second.
  const pinned = spawnSync('taskset', ['-a', '-p', '-c', String(senderCpu), String(process.pid)], {
    encoding: 'utf8',
  });
  if (pinned.status !== 0) {
    restore();
    return off(`unpinned (taskset: ${pinned.stderr.trim()})`);
  }
  return {
    on: true,
    receiverCpu,
    why: `pinned: sender on CPU ${senderCpu}, receiver on CPU ${receiverCpu}, loopback receive processing on CPU ${senderCpu} (RPS; ${rpsFile} was ${saved})`,
  };
}

/** Cpus_allowed_list of this process, e.g. "0-1,4". */
function allowedCpus() {
  const line = /^Cpus_allowed_list:\s*(.+)$/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '';
  return line.split(',').flatMap((part) => {
    const [low, high] = part.split('-').map(Number);
    if (!Number.isInteger(low)) return [];
    const last = Number.isInteger(high) ? high : low;
    return Array.from({ length: last - low + 1 }, (_, i) => low + i);
  });
}

/** A deterministic shuffle (mulberry32), so a run can be repeated. @param {number} seed */
function shuffler(seed) {
  let state = seed >>> 0;
  const random = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return /** @template T @param {T[]} items @returns {T[]} */ (items) => {
    const out = [...items];
    for (let i = out.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [out[i], out[j]] = [out[j], out[i]];
    }
    return out;
  };
}

/** Starts counting the syscalls of `pid`; resolves the count once it exits. @param {number} pid */
async function countSyscalls(pid) {
  const file = path.join(os.tmpdir(), `tcpzc-bench-perf-${pid}.csv`);
  const perf = spawn('perf', ['stat', '-x', ',', '-e', 'raw_syscalls:sys_enter', '-p', String(pid), '-o', file], {
    stdio: 'ignore',
  });
  await new Promise((resolve) => setTimeout(resolve, 150)); // attached before the transfer starts
  return async () => {
    if (perf.exitCode === null) perf.kill('SIGINT');
    await new Promise((resolve) => (perf.exitCode !== null ? resolve(null) : perf.on('close', resolve)));
    const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : '';
    fs.rmSync(file, { force: true });
    const line = text.split('\n').find((l) => l.includes('raw_syscalls:sys_enter'));
    const count = line === undefined ? Number.NaN : Number(line.split(',')[0]);
    return Number.isFinite(count) ? count : null;
  };
}

/** Median and 10th-90th percentiles of `ratios`, in words. @param {number[]} ratios */
function spread(ratios) {
  if (ratios.length === 0) return 'n/a';
  const s = [...ratios].sort((x, y) => x - y);
  const at = (/** @type {number} */ p) => s[Math.min(s.length - 1, Math.floor(p * s.length))].toFixed(2);
  return `median ${median(s).toFixed(2)}, 10th-90th percentile ${at(0.1)}-${at(0.9)} (${s.length} runs)`;
}

/** @param {number[]} xs */
function median(xs) {
  const s = [...xs].sort((x, y) => x - y);
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** CPU per GB over the measured streams. @param {Report} r */
const cpuPerGB = (r) => ((r.cpuUserMs + r.cpuSysMs) * 1e9) / r.bytes;
/** @param {Report} r */
const gbPerSecond = (r) => r.bytes / 1e9 / (r.elapsedMs / 1000);

function machine() {
  const cpus = os.cpus();
  return {
    cpu: cpus[0]?.model ?? 'unknown',
    cpus: cpus.length,
    memoryGiB: Math.round(os.totalmem() / 1024 ** 3),
    kernel: os.release(),
    node: process.version,
    zerocopy: probe().supported,
  };
}

async function main() {
  for (const r of receivers) if (r.bin !== undefined) buildReference(r.bin);
  buildReference('recv_ref'); // the forward consumer's sink
  /** @type {{ rep: number, pass: string, chunk: number, consumer: string, receiver: string, report: Report }[]} */
  const runs = [];
  /** @param {string} consumer */
  const receiversFor = (consumer) =>
    receivers.filter((r) => consumerReceivers[/** @type {keyof typeof consumerReceivers} */ (consumer)].includes(r.id));
  const total = reps * passes.length * chunks.length * consumers.reduce((n, c) => n + receiversFor(c).length, 0);
  const started = Date.now();
  console.error(
    `bench: ${sizeName(bytes)} per transfer in ${rounds} streams of ${sizeName(streamBytes)}, in turn with the other receivers of its group${warmupBytes > 0 ? ` (after ${sizeName(warmupBytes)} to warm up)` : ''}, ${reps} repetitions, ${total} transfers; ` +
      `syscalls ${perfWorks ? `counted by perf (raw_syscalls:sys_enter)${warmupBytes > 0 ? ' on the second warm-up stream' : ''}` : 'self-reported where possible (install linux-perf to count all)'}; ${pinning.why}`,
  );
  const shuffle = shuffler(Number(values.seed));
  for (let rep = 1; rep <= reps; rep++) {
    for (const pass of passes) {
      for (const chunk of chunks) {
        for (const consumer of consumers) {
          // Every receiver of the group is started and warmed up, then each takes one
          // stream in turn, `rounds` times, in a new order each round: all of them are
          // measured over the same minute, and the host's slower swings (the same C
          // receiver measured 110-180 ms/GB from one repetition to the next) fall on all.
          const group = [];
          for (const receiver of shuffle(receiversFor(consumer)))
            group.push({ receiver, handle: await startReceiver(receiver, pass, chunk, consumer, rounds) });
          for (let round = 0; round < rounds; round++)
            for (const { handle } of shuffle(group)) await handle.measure(streamBytes);
          for (const { receiver, handle } of group) {
            const report = await handle.finish();
            runs.push({ rep, pass: pass.id, chunk, consumer, receiver: receiver.id, report });
            console.error(
              `[${String(runs.length).padStart(3)}/${total}] rep ${rep} ${pass.id.padEnd(8)} ${sizeName(chunk).padStart(4)} ${consumer.padEnd(7)} ` +
                `(${receiver.id}) ${receiver.name.padEnd(31)} ${cpuPerGB(report).toFixed(0).padStart(5)} ms/GB ` +
                `${gbPerSecond(report).toFixed(2).padStart(5)} GB/s ${((100 * report.mappedBytes) / report.bytes).toFixed(1).padStart(5)}% mapped` +
                (report.decision ? ` ${report.decision}` : ''),
            );
          }
        }
      }
    }
  }

  const rows = [];
  for (const pass of passes) {
    for (const consumer of consumers) {
      for (const chunk of chunks) {
        for (const receiver of receiversFor(consumer)) {
          const reports = runs
            .filter(
              (x) => x.pass === pass.id && x.chunk === chunk && x.consumer === consumer && x.receiver === receiver.id,
            )
            .map((x) => x.report);
          const cpu = reports.map(cpuPerGB);
          const speed = reports.map(gbPerSecond);
          const syscalls = reports.map((r) => r.syscallsPerGB).filter((s) => s !== null && s !== undefined);
          rows.push({
            pass: pass.id,
            consumer,
            chunk,
            receiver: receiver.id,
            name: receiver.name,
            cpuMsPerGB: { median: median(cpu), min: Math.min(...cpu), max: Math.max(...cpu) },
            gbPerSecond: { median: median(speed), min: Math.min(...speed), max: Math.max(...speed) },
            mappedPercent: median(reports.map((r) => (100 * r.mappedBytes) / r.bytes)),
            syscallsPerGB: syscalls.length > 0 ? median(/** @type {number[]} */ (syscalls)) : null,
            peakRssMiB: Math.max(...reports.map((r) => r.maxRssKiB / 1024)),
            senderBusyPercent: median(reports.map((r) => r.senderBusyPercent ?? 0)),
            paths: [...new Set(reports.flatMap((r) => r.path?.split('/') ?? []))].sort().join('/'),
          });
        }
      }
    }
  }
  /** @param {string} pass @param {number} chunk @param {string} id @param {string} [consumer] */
  const row = (pass, chunk, id, consumer = 'lines') =>
    rows.find((r) => r.pass === pass && r.chunk === chunk && r.receiver === id && r.consumer === consumer);
  // Ratios pair the runs of one repetition (interleaved, so close in time and in what else
  // the host was doing) and take the median of those ratios: steadier on a noisy host than
  // a ratio of two medians.
  /** @param {{ pass: string, chunk: number, consumer: string }} r @param {string} id @param {number} rep */
  const cpuIn = (r, id, rep) => {
    const run = runs.find(
      (x) =>
        x.rep === rep && x.pass === r.pass && x.chunk === r.chunk && x.consumer === r.consumer && x.receiver === id,
    );
    return run === undefined ? undefined : cpuPerGB(run.report);
  };
  /** @param {{ pass: string, chunk: number, consumer: string, receiver: string }} r @param {string[]} others compared with the cheapest of these in each repetition */
  const pairedRatio = (r, others) => {
    const ratios = [];
    for (let rep = 1; rep <= reps; rep++) {
      const mine = cpuIn(r, r.receiver, rep);
      const theirs = others.map((id) => cpuIn(r, id, rep));
      if (mine === undefined || theirs.some((x) => x === undefined)) return null;
      ratios.push(mine / Math.min(.../** @type {number[]} */ (theirs)));
    }
    return ratios.length > 0 ? median(ratios) : null;
  };
  for (const r of rows) {
    // The cheaper mode by its median over the repetitions, then paired with it. (The cheaper
    // of the two in each repetition would be biased low: with two noisy equals, the smaller
    // of each pair is below both their means.)
    const a = row(r.pass, r.chunk, 'a', r.consumer);
    const b = row(r.pass, r.chunk, 'b', r.consumer);
    const best = a === undefined || b === undefined ? null : a.cpuMsPerGB.median <= b.cpuMsPerGB.median ? 'a' : 'b';
    Object.assign(r, {
      cpuVsNetSocket: pairedRatio(r, ['c']),
      cpuVsCReference: pairedRatio(r, ['e']),
      cpuVsBestMode: best === null ? null : pairedRatio(r, [best]),
      cpuVsCopyMode: r.receiver === 'h' ? pairedRatio(r, ['b']) : null,
    });
  }

  // Every repetition's ratio to (b), over all rows: (h) runs the same code, (g) where it
  // copied runs (b)'s code after its probe. Their spreads side by side.
  /** @param {string} id @param {(report: Report) => boolean} keep */
  const ratiosToCopyMode = (id, keep) =>
    runs
      .filter((x) => x.receiver === id && keep(x.report))
      .map((x) => {
        const copyMode = cpuIn(x, 'b', x.rep);
        return copyMode === undefined ? null : cpuPerGB(x.report) / copyMode;
      })
      .filter((ratio) => ratio !== null);
  const targets = evaluateTargets(row, {
    control: ratiosToCopyMode('h', () => true),
    auto: ratiosToCopyMode('g', (report) => report.path === 'copy'),
  });
  const result = {
    date: new Date().toISOString(),
    machine: machine(),
    bytesPerTransfer: bytes,
    streamsPerTransfer: rounds,
    warmupBytes,
    reps,
    chunks,
    consumers,
    syscallsCountedBy: perfWorks
      ? `perf raw_syscalls:sys_enter, whole receiver process${warmupBytes > 0 ? ', second warm-up stream' : ''}`
      : 'receivers themselves',
    pinning: pinning.why,
    seed: Number(values.seed),
    rows,
    targets,
    runs,
  };
  fs.mkdirSync(values.out, { recursive: true });
  const stamp = result.date.slice(0, 19).replace(/:/g, '-');
  const base = path.join(values.out, stamp);
  fs.writeFileSync(`${base}.json`, `${JSON.stringify(result, null, 2)}\n`);
  const markdown = renderMarkdown(result);
  fs.writeFileSync(`${base}.md`, markdown);
  fs.writeFileSync(`${base}.svg`, renderSvg(result));
  console.log(markdown);
  console.error(`wrote ${base}.json, .md and .svg in ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

/**
 * The targets of the benchmark issue, each met or missed on this run's medians.
 * @param {(pass: string, chunk: number, id: string) => any} row
 * @param {{ control: number[], auto: number[] }} toCopyMode per-repetition ratios to (b)
 */
function evaluateTargets(row, toCopyMode) {
  const targets = [];
  const has = (/** @type {string} */ id) => receivers.some((r) => r.id === id);
  if (has('a') && has('e') && consumers.includes('none') && passes.some((p) => p.id === 'zerocopy')) {
    const limits = chunks.filter((c) => c >= 256 << 10).map((c) => ({ chunk: c, limit: c >= 1 << 20 ? 1.1 : 1.25 }));
    const ratios = limits.map((l) => ({ ...l, ratio: row('zerocopy', l.chunk, 'a', 'none').cpuVsCReference }));
    targets.push({
      target: 'package alone (no consumer): (a) / (e) CPU <= 1.10 at 1M and 4M, <= 1.25 at 256K',
      measured: ratios.map((r) => `${sizeName(r.chunk)}: ${r.ratio.toFixed(2)}x`).join(', '),
      met: ratios.length > 0 && ratios.every((r) => r.ratio <= r.limit),
    });
  }
  if (has('a') && has('b') && has('g')) {
    const all = passes.flatMap((p) =>
      consumers.flatMap((consumer) =>
        chunks.map((c) => ({ pass: p.id, consumer, chunk: c, r: row(p.id, c, 'g', consumer) })),
      ),
    );
    const over = all.filter((x) => x.r !== undefined && x.r.cpuVsBestMode > 1.05);
    const worst = all.reduce(
      (w, x) => (x.r !== undefined && (w === null || x.r.cpuVsBestMode > w.r.cpuVsBestMode) ? x : w),
      /** @type {any} */ (null),
    );
    targets.push({
      target: 'auto mode (g) <= 1.05x the cheaper of (a) and (b) CPU, every row',
      measured:
        `worst ${worst.r.cpuVsBestMode.toFixed(2)}x (${worst.pass}, ${worst.consumer}, ${sizeName(worst.chunk)})` +
        (over.length > 0
          ? `; over in ${over.length} of ${all.length}: ${over.map((x) => `${x.pass}/${x.consumer}/${sizeName(x.chunk)} ${x.r.cpuVsBestMode.toFixed(2)}x`).join(', ')}`
          : `; ${all.length} rows`),
      met: over.length === 0,
    });
  }
  if (has('b') && has('h')) {
    const all = passes.flatMap((p) =>
      consumers.flatMap((consumer) => chunks.map((c) => row(p.id, c, 'h', consumer)).filter((r) => r !== undefined)),
    );
    const over = all.filter((r) => r.cpuVsCopyMode > 1.05 || r.cpuVsCopyMode < 1 / 1.05);
    const apart = all.map((r) => Math.max(r.cpuVsCopyMode, 1 / r.cpuVsCopyMode));
    targets.push({
      target: 'control, not a target: (h) against (b), the same code twice in one run',
      measured:
        `outside 0.95-1.05x in ${over.length} of ${all.length} rows, furthest ${Math.max(...apart).toFixed(2)}x apart` +
        (over.length > 0
          ? `: ${over.map((r) => `${r.pass}/${r.consumer}/${sizeName(r.chunk)} ${r.cpuVsCopyMode.toFixed(2)}x`).join(', ')}`
          : '') +
        `; per repetition, (h)/(b) ${spread(toCopyMode.control)}` +
        (has('g') ? `, (g)/(b) where (g) copied ${spread(toCopyMode.auto)}` : ''),
      met: null,
    });
  }
  if (has('a') && consumers.includes('lines') && passes.some((p) => p.id === 'zerocopy')) {
    const mapped = chunks.map((c) => ({ chunk: c, percent: row('zerocopy', c, 'a').mappedPercent }));
    targets.push({
      target: '>= 99% of bytes mapped from the MSG_ZEROCOPY sender at MSS 4108 (zero-copy mode)',
      measured: mapped.map((m) => `${sizeName(m.chunk)}: ${m.percent.toFixed(2)}%`).join(', '),
      met: mapped.every((m) => m.percent >= 99),
    });
  }
  return targets;
}

/** @param {any} result */
function renderMarkdown(result) {
  const m = result.machine;
  const lines = [
    `Machine: ${m.cpus} x ${m.cpu}, ${m.memoryGiB} GiB, Linux ${m.kernel}, Node ${m.node}. ` +
      `Date: ${result.date.slice(0, 10)}. ${sizeName(result.bytesPerTransfer)} per transfer${(result.streamsPerTransfer ?? 1) > 1 ? ` in ${result.streamsPerTransfer} streams, taken in turn with the group's other receivers` : ''}${result.warmupBytes > 0 ? ` after ${sizeName(result.warmupBytes)} of warm-up in two streams per receiver process` : ''}, median of ${result.reps} (min-max); ratios are medians of each repetition's ratio. ` +
      `${result.pinning === undefined ? '' : `${result.pinning[0].toUpperCase()}${result.pinning.slice(1)}. `}` +
      `Syscalls/GB: ${result.syscallsCountedBy}.`,
    '',
  ];
  const consumerNames = {
    lines: 'reads one byte of every 64-byte line',
    none: 'no consumer (the receive path alone)',
    sha256: 'sha256 of every chunk (node:crypto)',
    file: 'writes to a file',
    forward: 'forwards to another socket',
  };
  for (const pass of passes) {
    for (const consumer of result.consumers) {
      lines.push(
        `**${pass.name}; consumer: ${consumerNames[/** @type {keyof typeof consumerNames} */ (consumer)]}**`,
        '',
      );
      lines.push(
        '| receiver | chunk | CPU ms/GB | GB/s | mapped | syscalls/GB | peak RSS MiB | sender busy | CPU vs net.Socket | CPU vs C zero-copy | CPU vs best of (a),(b) |',
      );
      lines.push('|---|---|---|---|---|---|---|---|---|---|---|');
      for (const r of result.rows.filter((/** @type {any} */ x) => x.pass === pass.id && x.consumer === consumer)) {
        const range = (/** @type {{median:number,min:number,max:number}} */ v, /** @type {number} */ digits) =>
          `${v.median.toFixed(digits)} (${v.min.toFixed(digits)}-${v.max.toFixed(digits)})`;
        const ratio = (/** @type {number | null} */ x) => (x === null ? '' : `${x.toFixed(2)}x`);
        lines.push(
          `| (${r.receiver}) ${r.name}${r.receiver === 'g' ? ` [${r.paths}]` : ''} | ${sizeName(r.chunk)} | ${range(r.cpuMsPerGB, 0)} | ${range(r.gbPerSecond, 2)} | ` +
            `${r.mappedPercent.toFixed(1)}% | ${r.syscallsPerGB === null ? 'n/a' : r.syscallsPerGB.toFixed(0)} | ${r.peakRssMiB.toFixed(0)} | ` +
            `${r.senderBusyPercent.toFixed(0)}% | ${ratio(r.cpuVsNetSocket)} | ${ratio(r.cpuVsCReference)} | ${ratio(r.cpuVsBestMode)} |`,
        );
      }
      lines.push('');
    }
  }
  lines.push('| target | measured | |', '|---|---|---|');
  for (const t of result.targets) {
    lines.push(`| ${t.target} | ${t.measured} | ${t.met === null ? '' : t.met ? 'met' : '**missed**'} |`);
  }
  lines.push('');
  return lines.join('\n');
}

/** CPU per GB by chunk size, one line per receiver, one panel per sender. @param {any} result */
function renderSvg(result) {
  const colors = { a: '#d62728', b: '#ff7f0e', c: '#1f77b4', d: '#17becf', e: '#2ca02c', f: '#7f7f7f', g: '#9467bd' };
  // (h), the control, would draw over (b).
  const charted = receivers.filter((r) => r.id in colors);
  const width = 900;
  const height = 440;
  const panelWidth = 380;
  const top = 50;
  const plotHeight = 280;
  // The line-reading consumer, as in the README's first table.
  const chartConsumer = result.consumers.includes('lines') ? 'lines' : result.consumers[0];
  const maxCpu =
    Math.max(
      ...result.rows
        .filter((/** @type {any} */ r) => r.consumer === chartConsumer)
        .map((/** @type {any} */ r) => r.cpuMsPerGB.median),
    ) * 1.1;
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="${width / 2}" y="20" text-anchor="middle" font-size="15">Receiver CPU per GB by chunk size, consumer '${chartConsumer}' (lower is better), Linux ${result.machine.kernel}, ${result.date.slice(0, 10)}</text>`,
  ];
  passes.forEach((pass, p) => {
    const left = 60 + p * (panelWidth + 70);
    const x = (/** @type {number} */ i) =>
      left + (chunks.length === 1 ? panelWidth / 2 : (i * panelWidth) / (chunks.length - 1));
    const y = (/** @type {number} */ v) => top + plotHeight - (v / maxCpu) * plotHeight;
    parts.push(`<text x="${left + panelWidth / 2}" y="${top - 12}" text-anchor="middle">${pass.name}</text>`);
    parts.push(
      `<line x1="${left}" y1="${top + plotHeight}" x2="${left + panelWidth}" y2="${top + plotHeight}" stroke="black"/>`,
    );
    parts.push(`<line x1="${left}" y1="${top}" x2="${left}" y2="${top + plotHeight}" stroke="black"/>`);
    for (let t = 0; t <= 4; t++) {
      const v = (maxCpu * t) / 4;
      parts.push(`<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(0)}</text>`);
      parts.push(`<line x1="${left}" y1="${y(v)}" x2="${left + panelWidth}" y2="${y(v)}" stroke="#ddd"/>`);
    }
    chunks.forEach((c, i) =>
      parts.push(`<text x="${x(i)}" y="${top + plotHeight + 16}" text-anchor="middle">${sizeName(c)}</text>`),
    );
    parts.push(
      `<text x="${left - 45}" y="${top + plotHeight / 2}" transform="rotate(-90 ${left - 45} ${top + plotHeight / 2})" text-anchor="middle">CPU ms per GB</text>`,
    );
    for (const receiver of charted) {
      const points = chunks
        .map((c, i) => {
          const r = result.rows.find(
            (/** @type {any} */ z) =>
              z.pass === pass.id && z.chunk === c && z.receiver === receiver.id && z.consumer === chartConsumer,
          );
          return r === undefined ? null : `${x(i).toFixed(1)},${y(r.cpuMsPerGB.median).toFixed(1)}`;
        })
        .filter((pt) => pt !== null);
      const color = colors[/** @type {keyof typeof colors} */ (receiver.id)];
      parts.push(`<polyline points="${points.join(' ')}" fill="none" stroke="${color}" stroke-width="2"/>`);
      for (const pt of points) {
        const [px, py] = /** @type {string} */ (pt).split(',');
        parts.push(`<circle cx="${px}" cy="${py}" r="3" fill="${color}"/>`);
      }
    }
  });
  charted.forEach((receiver, i) => {
    const lx = 60 + (i % 3) * 280;
    const ly = top + plotHeight + 45 + Math.floor(i / 3) * 20;
    parts.push(
      `<rect x="${lx}" y="${ly - 9}" width="14" height="4" fill="${colors[/** @type {keyof typeof colors} */ (receiver.id)]}"/>`,
    );
    parts.push(`<text x="${lx + 20}" y="${ly - 4}">(${receiver.id}) ${receiver.name}</text>`);
  });
  parts.push('</svg>');
  return `${parts.join('\n')}\n`;
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
  undoAll();
});
