#!/usr/bin/env node
// @ts-check
// One benchmark receiver in its own process, so its CPU time is its own. Prints
// {"port":N} once listening (or {"ready":true} for net-onread, which connects to the port on
// each "go PORT" line of stdin), receives streams, hands every piece of them to one
// consumer, and prints one JSON report per stream:
// {"bytes","mappedBytes","cpuUserMs","cpuSysMs","elapsedMs","syscalls","maxRssKiB",
// "processCpuMs","path"}.
//
//   node bench/receiver.js --kind zerocopy|copy|auto|net-data|net-onread --chunk BYTES
//                          [--consumer lines|none|sha256|file|forward] [--streams N]
//                          [--port P] [--forward-to PORT] [--file PATH]
//
// --streams N: receive N connections one after the other, then exit. The driver uses the
// first ones to warm the process up (JIT, pool, page tables) as a long-running server is
// warm, and measures the rest in turn with other receivers'. net-onread connects once per
// "go PORT" line on stdin.
//
// Consumers: 'lines' reads one byte of every 64-byte line; 'none' reads nothing (the
// receive path's own cost); 'sha256' hashes every chunk with node:crypto; 'file' writes
// the stream to a file in the OS temp dir (deleted afterwards), or with --file over an
// existing file from its start (kept); 'forward' sends it on to another socket
// (--forward-to: a sink in another process).
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { once } = require('node:events');
const { parseArgs } = require('node:util');

const { attach } = require('../dist/index.js');

const { values } = parseArgs({
  options: {
    kind: { type: 'string' },
    chunk: { type: 'string', default: String(1 << 20) },
    port: { type: 'string', default: '0' },
    consumer: { type: 'string', default: 'lines' },
    'forward-to': { type: 'string' },
    file: { type: 'string' },
    streams: { type: 'string', default: '1' },
    // Kept for bench/profile.sh: the same as --consumer none.
    'no-touch': { type: 'boolean', default: false },
  },
});
const kind = values.kind;
const chunkSize = Number(values.chunk);
const consumer = values['no-touch'] ? 'none' : values.consumer;
const streams = Math.max(1, Number(values.streams));
/** Streams received so far, the current one included. */
let streamNumber = 0;
if (!['lines', 'none', 'sha256', 'file', 'forward'].includes(/** @type {string} */ (consumer))) {
  console.error(`unknown --consumer ${consumer}`);
  process.exit(2);
}

/** @param {Uint8Array} data */
function touch(data) {
  let sum = 0;
  for (let i = 0; i < data.length; i += 64) sum += data[i];
  return sum;
}

/** @type {{ cpu: NodeJS.CpuUsage, time: bigint } | null} */
let started = null;
let bytes = 0;
let mappedBytes = 0;
let checksum = 0;
/** @type {string | null} */
let filePath = null;

/** A new stream starts: counts begin afresh. */
function begin() {
  streamNumber++;
  bytes = 0;
  mappedBytes = 0;
  checksum = 0;
  started = { cpu: process.cpuUsage(), time: process.hrtime.bigint() };
}

/** Whether the current stream is the last this process receives. */
const lastStream = () => streamNumber >= streams;

/** A synchronous consumer of one piece of the stream (lines, none, sha256). @param {Uint8Array} data */
function consumeSync(data) {
  if (consumer === 'lines') checksum += touch(data);
  else if (consumer === 'sha256') checksum += crypto.createHash('sha256').update(data).digest()[0];
}

/** Reports the stream that ended; exits after the last. @param {number | null} syscalls @param {Record<string, unknown>} [extra] */
function report(syscalls, extra = {}) {
  if (started === null) throw new Error('no connection');
  const now = process.cpuUsage();
  const cpu = process.cpuUsage(started.cpu);
  const elapsedMs = Number(process.hrtime.bigint() - started.time) / 1e6;
  const last = lastStream();
  if (last && filePath !== null) fs.rmSync(filePath, { force: true });
  process.stdout.write(
    `${JSON.stringify({
      bytes,
      mappedBytes,
      cpuUserMs: cpu.user / 1000,
      cpuSysMs: cpu.system / 1000,
      elapsedMs,
      syscalls,
      maxRssKiB: process.resourceUsage().maxRSS,
      // The process's CPU time so far: the driver tells what it spent between streams.
      processCpuMs: (now.user + now.system) / 1000,
      checksum,
      ...extra,
    })}\n`,
    () => {
      if (last) process.exit(0);
    },
  );
}

/** @type {import('node:stream').Writable | null} */
let sink = null;
/** @type {number | null} */
let fileFd = null;

/**
 * The per-chunk loop, a function of its own so that V8 optimizes it once (on its second
 * stream) and the code after it cannot deoptimize it.
 * @param {import('../dist/index.js').ZeroCopyReceiver} receiver
 */
async function consumeChunks(receiver) {
  for await (const chunk of receiver) {
    consumeSync(chunk.data);
    bytes += chunk.data.length;
    if (chunk.mapped) mappedBytes += chunk.data.length;
    chunk.release();
  }
}

/** @param {net.Socket} socket */
async function receivePackage(socket) {
  const mode = kind === 'zerocopy' ? 'zerocopy' : kind === 'copy' ? 'copy' : 'auto';
  begin();
  const last = lastStream();
  const receiver = attach(socket, { chunkSize, mode });
  if (sink !== null) {
    // The package's safe way to hand chunks to asynchronous writers: each chunk is
    // released in its write callback.
    await receiver.pipeTo(sink, { end: last });
    bytes = receiver.stats.bytesMapped + receiver.stats.bytesCopied;
    mappedBytes = receiver.stats.bytesMapped;
  } else {
    await consumeChunks(receiver);
  }
  const stats = receiver.stats;
  socket.destroy();
  // The package's own calls: one epoll wake-up, plus getsockopt/recv (and FIONREAD when copying).
  report(stats.wakeups + stats.zerocopyCalls + stats.recvCalls * (stats.path === 'copy' ? 2 : 1), {
    path: stats.path,
    decision: stats.decision ?? null,
  });
}

/** @param {net.Socket} socket */
function receiveData(socket) {
  begin();
  const last = lastStream();
  socket.on('data', (data) => {
    consumeSync(data);
    bytes += data.length;
  });
  if (sink !== null) {
    const to = sink;
    socket.pipe(to, { end: last });
    // Reported once the sink has written it all: an empty write calls back after the
    // writes queued before it.
    if (last) to.on('finish', () => report(null));
    else socket.on('end', () => to.write(Buffer.alloc(0), () => report(null)));
    return;
  }
  socket.on('end', () => {
    socket.destroy();
    report(null);
  });
}

/** Connects once per "go PORT" line on stdin (sent after the driver started counting). */
function receiveOnread() {
  process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
  const buffer = Buffer.allocUnsafe(chunkSize);
  let pending = '';
  process.stdin.on('data', (data) => {
    pending += data.toString();
    for (let newline = pending.indexOf('\n'); newline >= 0; newline = pending.indexOf('\n')) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      const port = /^go (\d+)$/.exec(line.trim())?.[1];
      if (port !== undefined) connectOnread(Number(port), buffer);
    }
  });
}

/** @param {number} port @param {Buffer} buffer */
function connectOnread(port, buffer) {
  const socket = net.connect({
    port,
    host: '127.0.0.1',
    onread: {
      buffer,
      callback: (size, buf) => {
        bytes += size;
        // The buffer is reused by the next read: write it out (a file) or copy it
        // (a socket) before returning; pause while the socket's buffer is full.
        if (fileFd !== null) {
          fs.writeSync(fileFd, buf, 0, size);
        } else if (sink !== null) {
          if (!sink.write(Buffer.from(buf.subarray(0, size)))) {
            sink.once('drain', () => socket.resume());
            return false;
          }
        } else {
          consumeSync(buf.subarray(0, size));
        }
        return true;
      },
    },
  });
  socket.on('connect', begin);
  socket.on('end', () => {
    socket.destroy();
    if (!lastStream()) {
      if (sink !== null) sink.write(Buffer.alloc(0), () => report(null));
      else report(null);
      return;
    }
    process.stdin.pause();
    if (fileFd !== null) fs.closeSync(fileFd);
    if (sink !== null) sink.end(() => report(null));
    else report(null);
  });
}

async function main() {
  if (consumer === 'file') {
    // --file: overwrite in place (the page cache it has stays), and leave it.
    const given = values.file;
    if (given === undefined) filePath = path.join(os.tmpdir(), `tcpzc-bench-${process.pid}.out`);
    const target = given ?? /** @type {string} */ (filePath);
    const flags = given === undefined ? 'w' : 'r+';
    if (kind === 'net-onread') fileFd = fs.openSync(target, flags);
    else sink = fs.createWriteStream(target, { flags });
  } else if (consumer === 'forward') {
    const socket = net.connect({ port: Number(values['forward-to']), host: '127.0.0.1' });
    await once(socket, 'connect');
    sink = socket;
  }
  if (kind === 'net-onread') {
    receiveOnread();
  } else if (kind === 'zerocopy' || kind === 'copy' || kind === 'auto' || kind === 'net-data') {
    let accepted = 0;
    const server = net.createServer({ pauseOnConnect: kind !== 'net-data' }, (socket) => {
      if (++accepted >= streams) server.close();
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
}

void main();
