// Two hosts on one machine: network namespaces joined by veth, 1% of packets dropped at
// random on the receiving side by nftables. Traffic stays inside those namespaces.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { probe } from '../src/index';
import { senderPath } from '../src/testing';
import { MiB } from './helpers';

const tag = `tzc${process.pid % 100000}`;
const senderNs = `${tag}s`;
const receiverNs = `${tag}r`;
// RFC 2544 benchmarking range: never routed, used only inside these namespaces.
const senderAddress = '198.18.0.1';
const receiverAddress = '198.18.0.2';

function hasTool(tool: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;
}

const skipReason =
  process.platform !== 'linux'
    ? 'needs Linux'
    : process.getuid?.() !== 0
      ? 'needs root to create network namespaces'
      : !hasTool('ip') || !hasTool('nft') || !hasTool('nstat')
        ? 'needs iproute2 (ip, nstat) and nftables (nft)'
        : null;
if (skipReason !== null) console.warn(`netns tests skipped: ${skipReason}`);

function run(...args: string[]): string {
  return execFileSync(args[0], args.slice(1), { encoding: 'utf8' });
}

function inNs(ns: string, ...args: string[]): string {
  return run('ip', 'netns', 'exec', ns, ...args);
}

/** Absolute value of one nstat counter inside a namespace (fresh namespaces start at 0). */
function counter(ns: string, name: string): number {
  const line = inNs(ns, 'nstat', '-asz', name)
    .split('\n')
    .find((l) => l.startsWith(name));
  return line === undefined ? 0 : Number(line.trim().split(/\s+/)[1]);
}

describe.skipIf(skipReason !== null)('two hosts with 1% packet loss', () => {
  beforeAll(() => {
    run('ip', 'netns', 'add', senderNs);
    run('ip', 'netns', 'add', receiverNs);
    run(
      'ip',
      'link',
      'add',
      `${tag}a`,
      'netns',
      senderNs,
      'type',
      'veth',
      'peer',
      'name',
      `${tag}b`,
      'netns',
      receiverNs,
    );
    // MTU 9000: 4096-byte payload segments (MSS 4108) fit, so pages can be mapped.
    inNs(senderNs, 'ip', 'link', 'set', `${tag}a`, 'mtu', '9000', 'up');
    inNs(receiverNs, 'ip', 'link', 'set', `${tag}b`, 'mtu', '9000', 'up');
    inNs(senderNs, 'ip', 'addr', 'add', `${senderAddress}/30`, 'dev', `${tag}a`);
    inNs(receiverNs, 'ip', 'addr', 'add', `${receiverAddress}/30`, 'dev', `${tag}b`);
    inNs(senderNs, 'ip', 'link', 'set', 'lo', 'up');
    inNs(receiverNs, 'ip', 'link', 'set', 'lo', 'up');
    inNs(
      receiverNs,
      'nft',
      'add table inet loss; add chain inet loss input { type filter hook input priority 0; }; ' +
        `add rule inet loss input iifname "${tag}b" numgen random mod 100 < 1 counter drop`,
    );
  });

  afterAll(() => {
    // Deleting the namespaces deletes the veth pair and the nftables table with them.
    spawnSync('ip', ['netns', 'del', senderNs]);
    spawnSync('ip', ['netns', 'del', receiverNs]);
  });

  it('streams 1 GiB of MSG_ZEROCOPY at MSS 4108: every byte right, retransmissions seen, some bytes mapped', async () => {
    const fixture = path.join(__dirname, 'fixtures', 'netns-receiver.js');
    const receiver = spawn('ip', ['netns', 'exec', receiverNs, process.execPath, fixture, receiverAddress, '91'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    const port = await new Promise<number>((resolve, reject) => {
      receiver.stdout.on('data', (data: Buffer) => {
        output += data.toString();
        const match = /\{"listening":(\d+)\}/.exec(output);
        if (match !== null) resolve(Number(match[1]));
      });
      receiver.on('exit', (code) => reject(new Error(`receiver exited early (${String(code)})`)));
    });
    const retransBefore = counter(senderNs, 'TcpRetransSegs');
    const sender = spawnSync(
      'ip',
      [
        'netns',
        'exec',
        senderNs,
        senderPath,
        '--host',
        receiverAddress,
        '--port',
        String(port),
        '--bytes',
        String(1024 * MiB),
        '--seed',
        '91',
        '--mss',
        '4108',
      ],
      { encoding: 'utf8', timeout: 300_000 },
    );
    expect(sender.status, sender.stderr).toBe(0);
    await new Promise((resolve) => receiver.on('close', resolve));
    const result = JSON.parse(output.trim().split('\n').pop() as string) as {
      bytes: number;
      mappedBytes: number;
      error: string | null;
    };
    const dropped = Number(/packets (\d+)/.exec(inNs(receiverNs, 'nft', 'list', 'table', 'inet', 'loss'))?.[1] ?? 0);
    const retransmitted = counter(senderNs, 'TcpRetransSegs') - retransBefore;

    expect(result.error).toBeNull();
    expect(result.bytes).toBe(1024 * MiB); // and the fixture checked every one of them
    expect(dropped).toBeGreaterThan(0);
    expect(retransmitted).toBeGreaterThan(0);
    if (probe().supported) expect(result.mappedBytes).toBeGreaterThan(0);
    console.log(
      `netns: ${retransmitted} segments retransmitted, ${dropped} packets dropped, ${((100 * result.mappedBytes) / result.bytes).toFixed(1)}% mapped`,
    );
  });
});
