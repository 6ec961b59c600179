import { once } from 'node:events';
import * as net from 'node:net';

import type { Chunk, ZeroCopyReceiver } from '../src/index';
import { PatternChecker } from '../src/testing';

/** A loopback server whose accepted sockets have not started reading. */
export async function listen(): Promise<{ server: net.Server; port: number; accepted: Promise<net.Socket> }> {
  const server = net.createServer({ pauseOnConnect: true });
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
 * Reads `receiver` to its end, checking every byte against the pattern and releasing
 * each chunk; a stream error is returned, not thrown.
 */
export async function drain(receiver: ZeroCopyReceiver, seed: number, onChunk?: (chunk: Chunk) => void): Promise<Received> {
  const checker = new PatternChecker(seed);
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
