// The error codes the package throws are one exported union, with a type guard.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';

import { describe, expect, expectTypeOf, it } from 'vitest';

import {
  attach,
  configure,
  isTcpZeroCopyError,
  TCP_ZEROCOPY_ERROR_CODES,
  type TcpZeroCopyError,
  type TcpZeroCopyErrorCode,
} from '../src/index';
import { listen } from './helpers';

const srcDir = path.resolve(__dirname, '..', 'src');

function thrown(task: () => unknown): unknown {
  try {
    task();
  } catch (error) {
    return error;
  }
  throw new Error('did not throw');
}

describe('error codes', () => {
  it('the union lists every code in the sources, and only those', () => {
    const used = new Set<string>();
    for (const file of fs.readdirSync(srcDir)) {
      const text = fs.readFileSync(path.join(srcDir, file), 'utf8');
      for (const match of text.matchAll(/codedError\(\s*\w+,\s*'([A-Z_]+)'/g)) used.add(match[1]);
    }
    used.add('ABORT_ERR'); // abortError()
    expect([...used].sort()).toEqual([...TCP_ZEROCOPY_ERROR_CODES].sort());
  });

  it("the guard accepts the package's errors and narrows their code", () => {
    const errors = [
      thrown(() => attach({} as unknown as net.Socket)),
      thrown(() => attach(new net.Socket())),
      thrown(() => configure({ maxPinnedBytes: -1 })),
    ];
    expect(errors.map((error) => isTcpZeroCopyError(error) && error.code)).toEqual([
      'ERR_INVALID_ARG_TYPE',
      'ERR_SOCKET_NOT_CONNECTED',
      'ERR_OUT_OF_RANGE',
    ]);
    const error: unknown = errors[0];
    if (isTcpZeroCopyError(error)) {
      expectTypeOf(error).toEqualTypeOf<TcpZeroCopyError>();
      expectTypeOf(error.code).toEqualTypeOf<TcpZeroCopyErrorCode>();
    }
  });

  it('an aborted attach is one of them (ABORT_ERR)', async () => {
    const { server, accepted } = await listen();
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    const socket = await accepted;
    try {
      const controller = new AbortController();
      controller.abort();
      const error = thrown(() => attach(socket, { signal: controller.signal }));
      expect(isTcpZeroCopyError(error) && error.code).toBe('ABORT_ERR');
      expect((error as Error).name).toBe('AbortError');
    } finally {
      client.destroy();
      socket.destroy();
      server.close();
    }
  });

  it("rejects Node's own errors with the same code, plain errors and non-errors", () => {
    const nodeError = thrown(() => Buffer.alloc('x' as unknown as number));
    expect((nodeError as { code?: string }).code).toBe('ERR_INVALID_ARG_TYPE');
    expect(isTcpZeroCopyError(nodeError)).toBe(false);
    const fake = Object.assign(new Error('tcp-zerocopy: fake'), { code: 'ERR_TCPZC_UNSUPPORTED' });
    expect(isTcpZeroCopyError(fake)).toBe(false);
    for (const value of [null, undefined, 'ERR_TCPZC_UNSUPPORTED', { code: 'ERR_TCPZC_UNSUPPORTED' }]) {
      expect(isTcpZeroCopyError(value)).toBe(false);
    }
  });
});
