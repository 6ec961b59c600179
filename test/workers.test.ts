import { once } from 'node:events';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

import { describe, expect, it } from 'vitest';

import { probe } from '../src/index';
import { startSender } from '../src/testing';
import { MiB } from './helpers';

// Workers run the compiled package (dist/), as a user's worker would.
const workerScript = `
const { parentPort, workerData } = require('node:worker_threads');
const net = require('node:net');
const { attach, probe } = require(workerData.entry);
const { PatternChecker } = require(workerData.testing);
const server = net.createServer({ pauseOnConnect: true }, async (socket) => {
  const receiver = attach(socket, { mode: probe().supported ? 'zerocopy' : 'auto' });
  const checker = new PatternChecker(workerData.seed);
  let mapped = 0;
  for await (const chunk of receiver) {
    checker.check(chunk.data);
    if (chunk.mapped) mapped += chunk.data.length;
    chunk.release();
  }
  socket.destroy();
  server.close();
  parentPort.postMessage({ bytes: checker.offset, mapped });
});
server.listen(0, '127.0.0.1', () => parentPort.postMessage({ port: server.address().port }));
`;

/** Starts the receiving worker; resolves its port, then its report. */
function startWorker(seed: number) {
  const root = path.resolve(__dirname, '..');
  const worker = new Worker(workerScript, {
    eval: true,
    workerData: { entry: path.join(root, 'dist/index.js'), testing: path.join(root, 'dist/testing.js'), seed },
  });
  const messages: Promise<unknown>[] = [];
  const resolvers: ((value: unknown) => void)[] = [];
  for (let i = 0; i < 2; i++) messages.push(new Promise((resolve) => resolvers.push(resolve)));
  let received = 0;
  worker.on('message', (message: unknown) => resolvers[received++]?.(message));
  const failed = new Promise<never>((_resolve, reject) => worker.on('error', reject));
  return {
    worker,
    port: Promise.race([messages[0], failed]).then((message) => (message as { port: number }).port),
    report: Promise.race([messages[1], failed]).then((message) => message as { bytes: number; mapped: number }),
  };
}

describe('worker_threads', () => {
  it("receives on the worker's own loop, byte-exact, with mapping", async () => {
    const { worker, port, report } = startWorker(51);
    const exited = once(worker, 'exit');
    const sender = startSender({ port: await port, bytes: 64 * MiB, seed: 51, mss: 4108 });
    const result = await report;
    await sender.done;
    expect(result.bytes).toBe(64 * MiB);
    if (probe().supported) expect(result.mapped / result.bytes).toBeGreaterThan(0.95);
    const [code] = (await exited) as [number];
    expect(code).toBe(0);
  });

  it('terminating a worker mid-stream is clean', async () => {
    const { worker, port } = startWorker(52);
    const sender = startSender({ port: await port, bytes: 1024 * MiB, seed: 52, mss: 4108 });
    await new Promise((resolve) => setTimeout(resolve, 150));
    // Exit code 1 is what terminate() reports; an abort would take this whole process.
    expect(await worker.terminate()).toBe(1);
    sender.stop();
  });
});
