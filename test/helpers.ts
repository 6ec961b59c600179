import { mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

import { afterEach, expect } from 'vitest';

import { attach, type AttachOptions, type Chunk, type ReceiverStats, type ZeroCopyReceiver } from '../src/index';
import { PatternChecker, startSender, type Sender, type SenderOptions } from '../src/testing';

/** A loopback server whose accepted sockets have not started reading. */
export async function listen(
  options: { allowHalfOpen?: boolean } = {},
): Promise<{ server: net.Server; port: number; accepted: Promise<net.Socket> }> {
  const server = net.createServer({ pauseOnConnect: true, ...options });
  const accepted = once(server, 'connection').then(([socket]) => socket as net.Socket);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as net.AddressInfo).port, accepted };
}

export interface Received {
  bytes: number;
  mappedBytes: number;
  chunks: number;
  error: (Error & { code?: string }) | null;
}

/**
 * Reads `receiver` to its end, checking every byte against the pattern (from the start,
 * or from where `checker` stands) and releasing each chunk; a stream error is returned,
 * not thrown.
 */
export async function drain(
  receiver: ZeroCopyReceiver,
  seed: number | PatternChecker,
  onChunk?: (chunk: Chunk) => void,
): Promise<Received> {
  const checker = typeof seed === 'number' ? new PatternChecker(seed) : seed;
  const result: Received = { bytes: 0, mappedBytes: 0, chunks: 0, error: null };
  try {
    for await (const chunk of receiver) {
      checker.check(chunk.data);
      result.bytes += chunk.data.length;
      if (chunk.mapped) result.mappedBytes += chunk.data.length;
      result.chunks++;
      onChunk?.(chunk);
      chunk.release();
    }
  } catch (error) {
    result.error = error as Error & { code?: string };
  }
  return result;
}

/** Connects a client that is paused before it connects, so it can be attached too. */
export async function connectPaused(port: number): Promise<net.Socket> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  socket.pause();
  await once(socket, 'connect');
  return socket;
}

export const MiB = 1 << 20;

/** Resident bytes of this process's TCP mappings (smaps names them "socket:[inode]"). */
export function socketMappingRss(): number {
  let inSocket = false;
  let rss = 0;
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    if (/^[0-9a-f]+-[0-9a-f]+ /.test(line)) inSocket = line.includes('socket:[');
    else if (inSocket && line.startsWith('Rss:')) rss += Number(/(\d+)/.exec(line)?.[1] ?? 0) * 1024;
  }
  return rss;
}

/** Number of TCP mappings (VMAs) in /proc/self/maps. */
export function socketMappingCount(): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((line) => line.includes('socket:[')).length;
}

/**
 * For `toThrow()`: an error whose own properties include `properties`. (vitest types
 * expect.objectContaining() as `any`; toThrow() takes it as it would an Error.)
 */
export function errorWith(properties: Record<string, unknown>): Error {
  return expect.objectContaining(properties) as Error;
}

/** Open file descriptors of this process. */
export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Runs `task` over `items` with at most `limit` at a time. */
export async function mapLimit<T, R>(items: T[], limit: number, task: (item: T) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await task(items[index]);
    }
  });
  await Promise.all(workers);
  return results;
}

/**
 * What a test file starts on loopback, cleaned up after each test: servers closed,
 * sockets destroyed, native senders killed (tests that stop reading early make a sender
 * fail on purpose).
 */
export function loopbackFixture() {
  const servers: net.Server[] = [];
  const senders: Sender[] = [];
  const sockets: net.Socket[] = [];
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.destroy();
    for (const server of servers.splice(0)) server.close();
    for (const sender of senders.splice(0)) sender.stop();
  });

  /** A pauseOnConnect server with the native sender connected to it. */
  async function serverAndSender(
    options: Omit<SenderOptions, 'port'>,
  ): Promise<{ sender: Sender; socket: net.Socket }> {
    const { server, port, accepted } = await listen();
    servers.push(server);
    const sender = startSender({ port, ...options });
    senders.push(sender);
    const socket = await accepted;
    sockets.push(socket);
    return { sender, socket };
  }

  /** A pauseOnConnect server with a plain net.Socket client connected to it. */
  async function serverAndClient(
    options: { allowHalfOpen?: boolean } = {},
  ): Promise<{ client: net.Socket; socket: net.Socket; server: net.Server }> {
    const { server, port, accepted } = await listen(options);
    servers.push(server);
    const client = net.connect({ port, host: '127.0.0.1' });
    sockets.push(client);
    const socket = await accepted;
    sockets.push(socket);
    return { client, socket, server };
  }

  /**
   * A MSG_ZEROCOPY stream at MSS 4108 of `bytes`, attached with `options`; in mode
   * 'zerocopy' unless `options.mode` says otherwise (auto mode may choose to copy).
   */
  async function zerocopyStream(bytes: number, seed: number, options: AttachOptions = {}) {
    const { sender, socket } = await serverAndSender({ bytes, seed, mss: 4108 });
    return { receiver: attach(socket, { mode: 'zerocopy', ...options }), socket, sender };
  }

  return { servers, senders, sockets, serverAndSender, serverAndClient, zerocopyStream };
}

const SYSCTL_LOCK = path.join(os.tmpdir(), 'tcp-zerocopy-high-order-alloc.lock');
const HIGH_ORDER_ALLOC = '/proc/sys/net/core/high_order_alloc_disable';

/** net.core.high_order_alloc_disable (global, not per network namespace), or null if absent. */
export function readHighOrderAllocDisable(): string | null {
  try {
    return readFileSync(HIGH_ORDER_ALLOC, 'utf8').trim();
  } catch {
    return null;
  }
}

/** Sets net.core.high_order_alloc_disable (root only). */
export function writeHighOrderAllocDisable(value: string): void {
  writeFileSync(HIGH_ORDER_ALLOC, `${value}\n`);
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `task` holding the lock on net.core.high_order_alloc_disable, across processes
 * (vitest runs test files in parallel): the test that flips the sysctl and the tests whose
 * figures depend on it (a plain sender maps 0% only while it is 0) take turns. A lock left
 * by a dead process is taken over.
 */
export async function withHighOrderAllocLock<T>(task: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 300_000;
  for (;;) {
    try {
      mkdirSync(SYSCTL_LOCK);
      writeFileSync(path.join(SYSCTL_LOCK, 'pid'), String(process.pid));
      break;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      let owner = NaN;
      try {
        owner = Number(readFileSync(path.join(SYSCTL_LOCK, 'pid'), 'utf8'));
      } catch {
        // Being created or removed right now.
      }
      if (Number.isInteger(owner) && owner > 0 && !processAlive(owner)) {
        rmSync(SYSCTL_LOCK, { recursive: true, force: true });
        continue;
      }
      if (Date.now() > deadline) throw new Error(`${SYSCTL_LOCK} held too long (pid ${owner})`, { cause: error });
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  try {
    return await task();
  } finally {
    rmSync(SYSCTL_LOCK, { recursive: true, force: true });
  }
}

/** Bytes not mapped, by cause: these add up to stats.bytesCopied. */
export function sumOfCopyCauses(stats: ReceiverStats): number {
  return (
    stats.bytesCopiedShortRuns +
    stats.bytesCopiedUrgent +
    stats.bytesCopiedPoolFull +
    stats.bytesCopiedFallback +
    stats.bytesCopiedCopyMode +
    stats.bytesCopiedDraining
  );
}
