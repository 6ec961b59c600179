import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import * as net from 'node:net';
import * as path from 'node:path';

import { describe, expect, it } from 'vitest';

import { attach } from '../src/index';

const child = path.join(__dirname, 'fixtures', 'lifecycle-child.js');

function run(stage: string): { status: number | null; signal: NodeJS.Signals | null; stderr: string } {
  const result = spawnSync(process.execPath, [child, stage], { encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, signal: result.signal, stderr: result.stderr };
}

describe('leaving at every lifecycle stage is clean', () => {
  it.each([
    ['loaded', 0],
    ['probed', 0],
    ['attached', 0],
    ['mid-stream', 0],
    ['mid-stream-natural', 0],
    ['closed', 0],
    ['socket-destroyed', 0],
    ['worker-terminate', 0],
    ['worker-exit', 0],
    ['uncaught-exception', 1],
  ])('%s: exits with %i', (stage, expected) => {
    const result = run(stage);
    expect(result.signal).toBeNull();
    expect(result.stderr).not.toMatch(/Assertion|Aborted|FATAL|open handles|Segmentation/i);
    if (stage === 'uncaught-exception') expect(result.stderr).toMatch(/deliberate crash mid-stream/);
    else expect(result.stderr).toBe('');
    expect(result.status).toBe(expected);
  });
});

describe('garbage collection', () => {
  it('collects finished receivers and their sockets', async () => {
    expect(typeof global.gc).toBe('function');
    let finalized = 0;
    const registry = new FinalizationRegistry(() => finalized++);
    const server = net.createServer({ pauseOnConnect: true });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const port = (server.address() as net.AddressInfo).port;
    const rounds = 50;
    for (let i = 0; i < rounds; i++) {
      const accepted = once(server, 'connection');
      const client = net.connect(port, '127.0.0.1');
      const [socket] = (await accepted) as [net.Socket];
      const receiver = attach(socket, { chunkSize: 65536 });
      client.end(Buffer.alloc(100_000, 1));
      for await (const chunk of receiver) chunk.release();
      receiver.close();
      socket.destroy();
      client.destroy();
      registry.register(receiver, 'receiver');
      registry.register(socket, 'socket');
    }
    server.close();
    for (let i = 0; i < 20 && finalized < 2 * rounds * 0.9; i++) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      global.gc?.();
    }
    expect(finalized).toBeGreaterThanOrEqual(2 * rounds * 0.9);
  });
});
