// `tcp-zerocopy doctor`, run as a user runs it: the compiled CLI (dist/cli.js, the
// package's "bin") in its own process. Network tests on loopback only.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as readline from 'node:readline';

import { afterEach, describe, expect, it } from 'vitest';

import type { DoctorReport, ListenConnectionReport, ListenEvent } from '../src/doctor';
import { probe } from '../src/index';
import { startSender, type Sender } from '../src/testing';
import { MiB, readHighOrderAllocDisable, withHighOrderAllocLock } from './helpers';

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'cli.js');

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runCli(args: string[], cliPath = cli): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [cliPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (data: Buffer) => (stdout += data.toString()));
    child.stderr.on('data', (data: Buffer) => (stderr += data.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

const children: ChildProcessWithoutNullStreams[] = [];
const senders: Sender[] = [];
afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill();
  for (const sender of senders.splice(0)) sender.stop();
});

/** Starts `doctor --listen` for one connection; events arrive as parsed JSON lines. */
async function startListen(): Promise<{
  port: number;
  closed: Promise<ListenConnectionReport>;
  events: ListenEvent[];
}> {
  const child = spawn(
    process.execPath,
    [cli, 'doctor', '--listen', '127.0.0.1:0', '--connections', '1', '--interval-ms', '100', '--json'],
    { stdio: ['pipe', 'pipe', 'pipe'] },
  );
  children.push(child);
  const events: ListenEvent[] = [];
  let onListening: (port: number) => void = () => undefined;
  let onClosed: (report: ListenConnectionReport) => void = () => undefined;
  const listening = new Promise<number>((resolve) => (onListening = resolve));
  const closed = new Promise<ListenConnectionReport>((resolve) => (onClosed = resolve));
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    const event = JSON.parse(line) as ListenEvent;
    events.push(event);
    if (event.event === 'listening') onListening(event.port);
    if (event.event === 'closed') onClosed(event);
  });
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  const port = await Promise.race([
    listening,
    exited.then((code) => Promise.reject(new Error(`doctor --listen exited with ${String(code)}`))),
  ]);
  return {
    port,
    events,
    closed: closed.then(async (report) => {
      expect(await exited).toBe(0); // it stops after --connections 1
      return report;
    }),
  };
}

describe('tcp-zerocopy doctor', () => {
  it('--json prints one report: kernel features, sysctls, interfaces, self-test, recommendation', async () => {
    const run = await runCli(['doctor', '--json']);
    expect(run.code).toBe(0);
    const lines = run.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const report = JSON.parse(lines[0]) as DoctorReport;

    expect(report.package.name).toBe('tcp-zerocopy');
    expect(report.kernel.release).toBe(os.release());
    expect(report.kernel.supported).toBe(probe().supported);
    const since = Object.fromEntries(report.kernel.features.map((f) => [f.name, f.since]));
    expect(Object.values(since)).toEqual(expect.arrayContaining(['4.18', '5.7', '5.11', '6.15']));
    for (const feature of report.kernel.features) expect(typeof feature.available).toBe('boolean');

    expect(report.sysctls.map((s) => s.name)).toEqual([
      'net.core.high_order_alloc_disable',
      'net.ipv4.tcp_rmem',
      'net.core.optmem_max',
    ]);
    expect(report.sysctls[1].value).toBe(
      fs.readFileSync('/proc/sys/net/ipv4/tcp_rmem', 'utf8').trim().replace(/\s+/g, ' '),
    );

    const names = fs.readdirSync('/sys/class/net').sort();
    expect(report.interfaces.map((i) => i.name)).toEqual(names);
    const lo = report.interfaces.find((i) => i.name === 'lo');
    expect(lo?.loopback).toBe(true);
    for (const i of report.interfaces) {
      expect(i.mtu).toBe(Number(fs.readFileSync(`/sys/class/net/${i.name}/mtu`, 'utf8')));
      expect(i.tcpPayload).toBe((i.mtu ?? 0) - 52); // IPv4 + TCP + timestamps (on here)
      expect(i.pagesPerSegment).toBe(Math.floor((i.tcpPayload ?? 0) / 4096));
      expect(['on', 'off', 'auto', 'n/a', 'unknown']).toContain(i.headerSplit);
    }

    // The self-test: 256 MiB per transfer from the package's sender.
    expect(report.selfTest.ran).toBe(true);
    const fromOurSender = report.selfTest.runs.filter((r) => r.sender === 'zerocopy');
    expect(fromOurSender.length).toBeGreaterThanOrEqual(3);
    for (const run of fromOurSender) {
      expect(run.bytes).toBe(256 * MiB);
      expect(run.cpuMsPerGB).toBeGreaterThan(0);
      expect(run.cpuMsPerGB).toBeCloseTo(run.userMsPerGB + run.sysMsPerGB, 6);
      if (run.mode === 'copy') expect(run.mappedShare).toBe(0);
      // At 1 MiB (the default) and above every page is mapped; smaller chunks see a few
      // sub-page runs (0.1-0.4% at 256 KiB here), counted as short runs.
      if (run.mode === 'zerocopy') expect(run.mappedShare).toBeGreaterThanOrEqual(run.chunkSize >= MiB ? 0.99 : 0.95);
      if (run.mode === 'zerocopy')
        expect(run.copiedBecause.shortRuns).toBeCloseTo(run.bytes * (1 - run.mappedShare), 0);
    }
    if (probe().supported) expect(fromOurSender.some((r) => r.mode === 'zerocopy')).toBe(true);
    expect(['auto', 'copy']).toContain(report.recommendation.mode);
    expect(report.recommendation.chunkSize).toBeGreaterThanOrEqual(4096);
    expect(report.recommendation.reasons.length).toBeGreaterThan(0);
    // Progress went to stderr while it ran.
    expect(run.stderr).toMatch(/self-test 1\/\d+: 256 MiB over loopback/);
  });

  it('prints a readable report without --json', async () => {
    const run = await runCli(['doctor', '--skip-self-test']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/^kernel \S+: zero-copy receive (supported|unavailable)/m);
    expect(run.stdout).toContain('net.core.high_order_alloc_disable = ');
    expect(run.stdout).toMatch(/^ {2}lo \(\w+\): MTU \d+/m);
    expect(run.stdout).toMatch(/^recommendation: attach\(socket, \{ mode: '(auto|copy)', chunkSize: \d+ \}\)/m);
  });

  it('exits 0 and says why where zero-copy is unsupported (here: no addon built)', async () => {
    // The compiled package without its build/ directory, as after an install without a toolchain.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpzc-doctor-'));
    try {
      fs.cpSync(path.join(root, 'dist'), path.join(dir, 'dist'), { recursive: true });
      fs.copyFileSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
      fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
      const run = await runCli(['doctor', '--json'], path.join(dir, 'dist', 'cli.js'));
      expect(run.code).toBe(0);
      const report = JSON.parse(run.stdout) as DoctorReport;
      expect(report.kernel.supported).toBe(false);
      expect(report.kernel.reason).toMatch(/native addon did not load/);
      expect(report.selfTest.ran).toBe(false);
      expect(report.selfTest.note).toMatch(/sender is not built/);
      expect(report.recommendation.mode).toBe('copy');
      expect(report.recommendation.reasons[0]).toMatch(/zero-copy is unavailable here \(native addon did not load/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('exits 2 on bad arguments', async () => {
    expect((await runCli(['doctor', '--listen', 'nonsense'])).code).toBe(2);
    expect((await runCli(['frobnicate'])).code).toBe(2);
    expect((await runCli(['doctor', '--no-such-flag'])).code).toBe(2);
    expect((await runCli(['doctor', '--bytes', '1K'])).code).toBe(2);
  });
});

describe.skipIf(!probe().supported)('tcp-zerocopy doctor --listen', () => {
  it("reports the package's sender (another process) live, about 100% mapped", async () => {
    const { port, closed, events } = await startListen();
    // A pause mid-stream, so that a live report comes while the connection is open.
    const sender = startSender({ port, bytes: 128 * MiB, seed: 5, mss: 4108, pauseAt: 64 * MiB, pauseMs: 600 });
    senders.push(sender);
    const report = await closed;
    await sender.done;
    expect(report.bytes).toBe(128 * MiB);
    expect(report.mappedShare).toBeGreaterThanOrEqual(0.99);
    expect(report.error).toBeNull();
    expect(report.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(report.diagnosis).toBe('whole pages: mapped');
    const live = events.filter((e): e is ListenConnectionReport => e.event === 'progress' && e.bytes > 0);
    expect(live.length).toBeGreaterThan(0);
    expect(live[0].bytes).toBeLessThan(128 * MiB);
  });

  it('reports a plain sender as about 0% mapped, because of short runs', async (context) => {
    await withHighOrderAllocLock(async () => {
      if (readHighOrderAllocDisable() === '1')
        context.skip('net.core.high_order_alloc_disable=1 makes plain senders mappable');
      const { port, closed } = await startListen();
      const sender = startSender({ port, bytes: 64 * MiB, seed: 6, mode: 'plain' });
      senders.push(sender);
      const report = await closed;
      expect(report.bytes).toBe(64 * MiB);
      expect(report.mappedShare).toBeLessThan(0.01);
      expect(report.copiedBecause.shortRuns / report.bytes).toBeGreaterThan(0.99);
      expect(report.diagnosis).toMatch(/mostly shortRuns: payload arrived in runs shorter than a page/);
    });
  });
});

describe('tcp-zerocopy/doctor', () => {
  it('is importable by name, as package.json exports it', async () => {
    const { runDoctor } = (await import(
      require.resolve('tcp-zerocopy/doctor', { paths: [root] })
    )) as typeof import('../src/doctor');
    const report = await runDoctor({ selfTest: false });
    expect(report.selfTest).toEqual({ ran: false, note: 'skipped (--skip-self-test)', runs: [] });
    expect(report.kernel.supported).toBe(probe().supported);
  });
});
