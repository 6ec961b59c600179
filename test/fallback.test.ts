// Runs in its own process (vitest forks per file): it breaks this process's page pool.
import * as net from 'node:net';

import { afterAll, describe, expect, it } from 'vitest';

import { native } from '../src/binding';
import { attach, probe } from '../src/index';
import { startSender, type Sender } from '../src/testing';
import { drain, listen, MiB } from './helpers';

const servers: net.Server[] = [];
const senders: Sender[] = [];
afterAll(() => {
  for (const server of servers) server.close();
  for (const sender of senders) sender.stop();
});

async function stream(seed: number) {
  const { server, port, accepted } = await listen();
  servers.push(server);
  const sender = startSender({ port, bytes: 32 * MiB, seed, mss: 4108 });
  senders.push(sender);
  return accepted;
}

// A real kernel error: the pool's ranges are no longer TCP mappings, so
// getsockopt(TCP_ZEROCOPY_RECEIVE) fails with EINVAL once a page is queued.
describe.skipIf(!probe().supported)('after a zero-copy error other than end of stream', () => {
  it('breaks the pool for real', () => {
    expect(native?._breakPoolForTesting()).toBe(true);
  });

  it("'auto' switches the socket to copying for good, losing nothing, and says why", async () => {
    const socket = await stream(81);
    const receiver = attach(socket, { mode: 'auto' });
    const received = await drain(receiver, 81);
    expect(received.error).toBeNull();
    expect(received.bytes).toBe(32 * MiB);
    expect(received.mappedBytes).toBe(0);
    expect(receiver.stats.path).toBe('copy');
    expect(receiver.stats.fallbackReason).toBe('getsockopt(TCP_ZEROCOPY_RECEIVE) EINVAL');
    expect(receiver.stats.decision).toBe('copy: getsockopt(TCP_ZEROCOPY_RECEIVE) EINVAL');
    expect(receiver.stats.zerocopyCalls).toBe(1);
    expect(receiver.stats.bytesCopiedFallback).toBe(32 * MiB);
    socket.destroy();
  });

  it("'zerocopy' fails the stream with the kernel's error instead", async () => {
    const socket = await stream(82);
    const receiver = attach(socket, { mode: 'zerocopy' });
    const received = await drain(receiver, 82);
    expect(received.bytes).toBe(0);
    expect(received.error).toBeInstanceOf(Error);
    expect(received.error).toMatchObject({ code: 'EINVAL', syscall: 'getsockopt' });
    socket.destroy();
  });
});
