#!/usr/bin/env node
/**
 * The `tcp-zerocopy` command (package.json "bin"):
 *
 *   tcp-zerocopy doctor [--json] [--skip-self-test] [--bytes 256M]
 *   tcp-zerocopy doctor --listen [host:]port [--connections N] [--interval-ms 1000] [--json]
 *
 * Progress goes to stderr, the report to stdout. Exit status 0 whenever the checks ran,
 * also where zero-copy is unsupported (the report says why); 2 for bad arguments.
 */
import { parseArgs } from 'node:util';

import { formatConnection, formatReport, listenDoctor, runDoctor, type ListenEvent } from './doctor';

const USAGE = `usage:
  tcp-zerocopy doctor [--json] [--skip-self-test] [--bytes 256M]
      the kernel and its features, sysctls, network interfaces (MTU, header split),
      a loopback self-test in zero-copy and copy mode, and a recommendation
  tcp-zerocopy doctor --listen [host:]port [--connections N] [--interval-ms 1000] [--json]
      receive from real senders; per connection, live: bytes, % mapped, and why the
      rest was not mapped (--json: one JSON object per line)`;

/** Parses '256M', '1G', '4096'. */
function parseSize(text: string): number {
  const match = /^(\d+)([KMG]?)(?:i?B)?$/i.exec(text.trim());
  if (match === null) throw new UsageError(`not a size: ${text}`);
  const unit = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[match[2].toUpperCase() as '' | 'K' | 'M' | 'G'];
  return Number(match[1]) * unit;
}

class UsageError extends Error {}

/** '9000', ':9000', 'host:9000', '[::1]:9000'. */
export function parseListen(text: string): { host: string | undefined; port: number } {
  const match = /^(?:\[([^\]]+)\]:|([^:]*):)?(\d+)$/.exec(text.trim());
  if (match === null) throw new UsageError(`--listen wants [host:]port, got '${text}'`);
  const port = Number(match[3]);
  if (port > 65535) throw new UsageError(`port out of range: ${port}`);
  const host = match.at(1) ?? (match[2] === '' ? undefined : match[2]);
  return { host, port };
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      json: { type: 'boolean', default: false },
      'skip-self-test': { type: 'boolean', default: false },
      bytes: { type: 'string' },
      listen: { type: 'string' },
      connections: { type: 'string' },
      'interval-ms': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (positionals.length !== 1 || positionals[0] !== 'doctor') throw new UsageError('unknown command');
  const progress = (line: string): void => {
    process.stderr.write(`${line}\n`);
  };

  if (values.listen !== undefined) {
    const { host, port } = parseListen(values.listen);
    const connections = values.connections === undefined ? undefined : Number(values.connections);
    if (connections !== undefined && !(Number.isSafeInteger(connections) && connections > 0)) {
      throw new UsageError('--connections wants a positive integer');
    }
    const intervalMs = values['interval-ms'] === undefined ? 1000 : Number(values['interval-ms']);
    if (!(Number.isSafeInteger(intervalMs) && intervalMs > 0))
      throw new UsageError('--interval-ms wants a positive integer');
    const onEvent = (event: ListenEvent): void => {
      if (values.json) {
        process.stdout.write(`${JSON.stringify(event)}\n`);
      } else if (event.event === 'listening') {
        progress(`listening on ${event.host}:${event.port}; send a stream to it (Ctrl-C to stop)`);
      } else {
        process.stdout.write(`${formatConnection(event)}\n`);
      }
    };
    await listenDoctor({ host, port, connections, intervalMs, onEvent });
    return 0;
  }

  const bytes = values.bytes === undefined ? undefined : parseSize(values.bytes);
  if (bytes !== undefined && bytes < 1 << 20) throw new UsageError('--bytes must be at least 1M');
  const report = await runDoctor({
    selfTest: !values['skip-self-test'],
    ...(bytes === undefined ? {} : { bytes }),
    progress,
  });
  process.stdout.write(values.json ? `${JSON.stringify(report)}\n` : `${formatReport(report)}\n`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    if (error instanceof UsageError || (error as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') === true) {
      process.stderr.write(`tcp-zerocopy: ${(error as Error).message}\n${USAGE}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(
        `tcp-zerocopy: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
      );
      process.exitCode = 1;
    }
  },
);
