// net.core.high_order_alloc_disable=1 makes a plain send() sender mappable on loopback:
// its packets are then built from single pages, which TCP_ZEROCOPY_RECEIVE can map.
// Root only (the sysctl is global). It is restored afterwards, and the tests whose figures
// depend on it take turns with this one (withHighOrderAllocLock).
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as net from 'node:net';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import type { DoctorReport } from '../src/doctor';
import { attach, probe } from '../src/index';
import { fillPattern } from '../src/testing';
import {
  drain,
  listen,
  MiB,
  readHighOrderAllocDisable,
  withHighOrderAllocLock,
  writeHighOrderAllocDisable,
} from './helpers';

const isRoot = process.getuid?.() === 0;
const present = readHighOrderAllocDisable() !== null;
const BYTES = 64 * MiB;

/** A plain Node client (net.connect + write) sends BYTES of the pattern; attach() receives them. */
async function plainNodeClient(seed: number): Promise<{ bytes: number; mappedBytes: number; shortRuns: number }> {
  const { server, port, accepted } = await listen();
  const client = net.connect({ port, host: '127.0.0.1' });
  try {
    await once(client, 'connect');
    const socket = await accepted;
    const receiver = attach(socket, { mode: 'zerocopy' });
    void (async () => {
      for (let offset = 0; offset < BYTES; offset += MiB) {
        const block = Buffer.allocUnsafe(MiB);
        fillPattern(block, offset, seed);
        if (!client.write(block)) await once(client, 'drain');
      }
      client.end();
    })();
    const received = await drain(receiver, seed);
    expect(received.error).toBeNull();
    socket.destroy();
    return { bytes: received.bytes, mappedBytes: received.mappedBytes, shortRuns: receiver.stats.bytesCopiedShortRuns };
  } finally {
    client.destroy();
    server.close();
  }
}

describe.skipIf(!isRoot || !present || !probe().supported)('net.core.high_order_alloc_disable', () => {
  it('at 1 a plain Node client on loopback is mappable (at 0 it is not), and doctor says so', async () => {
    await withHighOrderAllocLock(async () => {
      const original = readHighOrderAllocDisable() as string;
      try {
        writeHighOrderAllocDisable('0');
        const off = await plainNodeClient(21);
        expect(off.bytes).toBe(BYTES);
        expect(off.mappedBytes).toBe(0);
        expect(off.shortRuns).toBe(BYTES);

        writeHighOrderAllocDisable('1');
        const on = await plainNodeClient(22);
        expect(on.bytes).toBe(BYTES);
        // Measured 93.7% at the default loopback MSS with a C sender; the rest are runs
        // shorter than a page where a segment boundary falls inside a page.
        expect(on.mappedBytes / on.bytes).toBeGreaterThan(0.8);

        const run = spawnSync(
          process.execPath,
          [path.join(__dirname, '..', 'dist', 'cli.js'), 'doctor', '--json', '--skip-self-test'],
          {
            encoding: 'utf8',
          },
        );
        expect(run.status).toBe(0);
        const report = JSON.parse(run.stdout) as DoctorReport;
        const sysctl = report.sysctls.find((s) => s.name === 'net.core.high_order_alloc_disable');
        expect(sysctl?.value).toBe('1');
        expect(sysctl?.meaning).toMatch(/plain send\(\) sender over loopback is mappable/);
      } finally {
        writeHighOrderAllocDisable(original);
      }
      expect(readHighOrderAllocDisable()).toBe(original);
    });
  });
});
