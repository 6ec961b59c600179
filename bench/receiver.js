#!/usr/bin/env node
// @ts-check
// One benchmark receiver in its own process, so its CPU time is its own. Prints
// {"port":N} once listening (or connects to --connect), receives one stream, reads one
// byte of every 64-byte line of it ("received" means read), and prints one JSON report:
// {"bytes","mappedBytes","cpuUserMs","cpuSysMs","elapsedMs","syscalls","maxRssKiB"}.
//
//   node bench/receiver.js --kind zerocopy|copy|net-data|net-onread --chunk BYTES
//                          [--port P | --connect PORT (net-onread)]
'use strict';
const net = require('node:net');
const { parseArgs } = require('node:util');

const { attach } = require('../dist/index.js');

const { values } = parseArgs({
  options: {
    kind: { type: 'string' },
    chunk: { type: 'string', default: String(1 << 20) },
    connect: { type: 'string' },
    port: { type: 'string', default: '0' },
    // For profiling the package alone: skip the per-line reads (not used by run.js).
    'no-touch': { type: 'boolean', default: false },
  },
});
const kind = values.kind;
const chunkSize = Number(values.chunk);

/** @param {Uint8Array} data */
function touch(data) {
  if (values['no-touch']) return 0;
  let sum = 0;
  for (let i = 0; i < data.length; i += 64) sum += data[i];
  return sum;
}

/** @type {{ cpu: NodeJS.CpuUsage, time: bigint } | null} */
let started = null;
let bytes = 0;
let mappedBytes = 0;
let checksum = 0;

function begin() {
  started = { cpu: process.cpuUsage(), time: process.hrtime.bigint() };
}

/** @param {number | null} syscalls */
function report(syscalls) {
  if (started === null) throw new Error('no connection');
  const cpu = process.cpuUsage(started.cpu);
  const elapsedMs = Number(process.hrtime.bigint() - started.time) / 1e6;
  process.stdout.write(
    `${JSON.stringify({
      bytes,
      mappedBytes,
      cpuUserMs: cpu.user / 1000,
      cpuSysMs: cpu.system / 1000,
      elapsedMs,
      syscalls,
      maxRssKiB: process.resourceUsage().maxRSS,
      checksum,
    })}\n`,
    () => process.exit(0),
  );
}

/** @param {net.Socket} socket */
async function receivePackage(socket) {
  begin();
  const receiver = attach(socket, { chunkSize, mode: kind === 'zerocopy' ? 'zerocopy' : 'copy' });
  for await (const chunk of receiver) {
    checksum += touch(chunk.data);
    bytes += chunk.data.length;
    if (chunk.mapped) mappedBytes += chunk.data.length;
    chunk.release();
  }
  const stats = receiver.stats;
  socket.destroy();
  // The package's own calls: one epoll wake-up, plus getsockopt/recv (and FIONREAD in copy mode).
  report(stats.wakeups + stats.zerocopyCalls + stats.recvCalls * (kind === 'copy' ? 2 : 1));
}

/** @param {net.Socket} socket */
function receiveData(socket) {
  begin();
  socket.on('data', (data) => {
    checksum += touch(data);
    bytes += data.length;
  });
  socket.on('end', () => {
    socket.destroy();
    report(null);
  });
}

async function receiveOnread() {
  // Connect only when the driver says go (after it started counting our syscalls).
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  await new Promise((resolve) => process.stdin.once('data', resolve));
  process.stdin.pause();
  const buffer = Buffer.allocUnsafe(chunkSize);
  const socket = net.connect({
    port: Number(values.connect),
    host: '127.0.0.1',
    onread: {
      buffer,
      callback: (size, buf) => {
        checksum += touch(buf.subarray(0, size));
        bytes += size;
        return true;
      },
    },
  });
  socket.on('connect', begin);
  socket.on('end', () => {
    socket.destroy();
    report(null);
  });
}

if (kind === 'net-onread') {
  void receiveOnread();
} else if (kind === 'zerocopy' || kind === 'copy' || kind === 'net-data') {
  const server = net.createServer({ pauseOnConnect: kind !== 'net-data' }, (socket) => {
    server.close();
    if (kind === 'net-data') receiveData(socket);
    else void receivePackage(socket);
  });
  server.listen(Number(values.port), '127.0.0.1', () => {
    const address = /** @type {net.AddressInfo} */ (server.address());
    process.stdout.write(`${JSON.stringify({ port: address.port })}\n`);
  });
} else {
  console.error(`unknown --kind ${kind}`);
  process.exit(2);
}
