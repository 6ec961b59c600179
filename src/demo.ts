/**
 * `npm run demo`: a server on loopback receives 1 GiB from the native MSG_ZEROCOPY sender
 * through tcp-zerocopy and prints throughput, receiver CPU per GB, how much was mapped,
 * and, in mode 'auto', which path auto mode chose and why. Without --mode it receives
 * twice: in mode 'auto' (the default), then in mode 'zerocopy' (the zero-copy path itself,
 * mapping whatever it can).
 *
 *   npm run demo -- [--bytes 1G] [--chunk-size 1M] [--mode auto|zerocopy|copy] [--verify]
 *
 * The receiver reads one byte of every 64-byte cache line of every chunk (so "received"
 * means the payload was touched), or checks every byte with --verify.
 */
import { once } from 'node:events';
import * as net from 'node:net';
import { parseArgs } from 'node:util';

import { attach, poolStats, probe, type AttachOptions } from './index';
import { PatternChecker, startSender } from './testing';

function parseSize(text: string): number {
  const match = /^(\d+)([KMG]?)i?B?$/i.exec(text.trim());
  if (match === null) throw new Error(`not a size: ${text}`);
  const unit = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[match[2].toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(match[1]) * unit;
}

function touchLines(data: Buffer): number {
  let sum = 0;
  for (let i = 0; i < data.length; i += 64) sum += data[i];
  return sum;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      bytes: { type: 'string', default: '1G' },
      'chunk-size': { type: 'string', default: '1M' },
      mode: { type: 'string' },
      verify: { type: 'boolean', default: false },
    },
  });
  const bytes = parseSize(values.bytes);
  const chunkSize = parseSize(values['chunk-size']);
  const modes: NonNullable<AttachOptions['mode']>[] =
    values.mode !== undefined
      ? [values.mode as NonNullable<AttachOptions['mode']>]
      : probe().supported
        ? ['auto', 'zerocopy']
        : ['auto'];

  const support = probe();
  console.log(
    `kernel ${support.kernel}: zero-copy ${support.supported ? 'supported' : `unavailable (${support.reason ?? 'unsupported'})`}`,
  );
  const results: { mode: string; cpuMsPerGB: number }[] = [];
  for (const mode of modes) {
    console.log('');
    results.push({ mode, cpuMsPerGB: await receiveOnce(mode, bytes, chunkSize, values.verify) });
  }
  if (results.length === 2) {
    const [auto, zerocopy] = results;
    console.log('');
    console.log(
      `auto vs zerocopy: ${(auto.cpuMsPerGB / zerocopy.cpuMsPerGB).toFixed(2)}x the receiver CPU per GB (same run, one transfer each: noisy)`,
    );
  }
}

async function receiveOnce(
  mode: NonNullable<AttachOptions['mode']>,
  bytes: number,
  chunkSize: number,
  verify: boolean,
): Promise<number> {
  const seed = 7;

  const server = net.createServer({ pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  console.log(
    `receiving ${(bytes / 2 ** 30).toFixed(2)} GiB on 127.0.0.1:${port} (chunkSize ${chunkSize}, mode ${mode})...`,
  );
  const sender = startSender({ port, bytes, seed, mss: 4108 });
  const [socket] = (await once(server, 'connection')) as [net.Socket];
  const receiver = attach(socket, { chunkSize, mode });

  const checker = verify ? new PatternChecker(seed) : null;
  let received = 0;
  let mapped = 0;
  let chunks = 0;
  let sink = 0;
  const cpuStart = process.cpuUsage();
  const start = process.hrtime.bigint();
  for await (const chunk of receiver) {
    if (checker !== null) checker.check(chunk.data);
    else sink += touchLines(chunk.data);
    received += chunk.data.length;
    if (chunk.mapped) mapped += chunk.data.length;
    chunks++;
    chunk.release();
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  const cpu = process.cpuUsage(cpuStart);
  socket.destroy();
  server.close();
  const sent = await sender.done;

  const gb = received / 1e9;
  const cpuMs = (cpu.user + cpu.system) / 1000;
  const stats = receiver.stats;
  console.log(`received   ${received} bytes in ${chunks} chunks${checker !== null ? ', every byte verified' : ''}`);
  console.log(`throughput ${(gb / seconds).toFixed(2)} GB/s (${(seconds * 1000).toFixed(0)} ms)`);
  console.log(
    `receiver CPU ${(cpuMs / gb).toFixed(0)} ms per GB (user ${(cpu.user / 1000 / gb).toFixed(0)}, sys ${(cpu.system / 1000 / gb).toFixed(0)})`,
  );
  console.log(
    `mapped     ${((100 * mapped) / Math.max(1, received)).toFixed(2)}% (${stats.chunksMapped} mapped chunks, ${stats.chunksCopied} copied)`,
  );
  console.log(
    `syscalls   ${stats.zerocopyCalls} zerocopy getsockopt, ${stats.recvCalls} recv, ${stats.wakeups} wake-ups`,
  );
  console.log(`pool       ${poolStats().mappings} mapping(s), ${poolStats().pinnedBytes} bytes still pinned`);
  console.log(
    `sender     ${sent.bytes} bytes, MSS ${sent.mss}, CPU ${((sent.cpuUserMs + sent.cpuSysMs) / gb).toFixed(0)} ms per GB`,
  );
  if (stats.fallbackReason !== null) console.log(`fallback   ${stats.fallbackReason}`);
  if (stats.decision !== null) console.log(`auto mode  ${stats.decision}`);
  if (received !== bytes) {
    console.error(`error: received ${received} of ${bytes} bytes`);
    process.exitCode = 1;
  }
  // eslint-disable-next-line @typescript-eslint/no-meaningless-void-operator -- reads `sink`, so the reads that feed it are not dead code
  void sink;
  return cpuMs / gb;
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
