// The package as npm ships it: what `npm pack` holds, and a fresh tarball installed into an
// empty project (offline, from npm's cache) builds only the addon and the sender, loads,
// and runs its bin. Packs with --ignore-scripts: `prepare` would rewrite dist/ under the
// tests running in parallel (npm test compiles it first).
import { execFile, execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { promisify } from 'node:util';

import { describe, expect, it } from 'vitest';

import type { DoctorReport } from '../src/doctor';

const root = path.resolve(__dirname, '..');
const pkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
  license: string;
  bin: Record<string, string>;
  dependencies: Record<string, string>;
  engines: Record<string, string>;
};

interface PackResult {
  filename: string;
  integrity: string;
  files: { path: string }[];
}

/** Whether /usr/include/node holds headers of this Node's major (its V8 and module version). */
function systemHeadersAreThisNode(): boolean {
  let header: string;
  try {
    header = fs.readFileSync('/usr/include/node/node_version.h', 'utf8');
  } catch {
    return false;
  }
  const major = /#define NODE_MAJOR_VERSION (\d+)/.exec(header)?.[1];
  return major !== undefined && `v${major}` === process.version.split('.')[0];
}

// Asynchronous where it takes long: a worker blocked for a minute misses vitest's RPC timeout.
const run = promisify(execFile);

function pack(args: string[]): PackResult {
  const out = execFileSync('npm', ['pack', '--json', '--ignore-scripts', ...args], {
    cwd: root,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  return (JSON.parse(out) as PackResult[])[0];
}

describe('npm pack', () => {
  const files = pack(['--dry-run']).files.map((file) => file.path);

  it('ships the addon sources, the compiled TypeScript, README, LICENSE, and nothing else', () => {
    const sources = fs.readdirSync(path.join(root, 'native')).map((name) => `native/${name}`);
    const compiled = fs.readdirSync(path.join(root, 'dist')).map((name) => `dist/${name}`);
    expect(files.sort()).toEqual(
      ['LICENSE', 'README.md', 'binding.gyp', 'package.json', ...sources, ...compiled].sort(),
    );
    for (const entry of ['dist/index.js', 'dist/index.d.ts', 'dist/testing.js', 'dist/cli.js', 'native/sender.cc']) {
      expect(files).toContain(entry);
    }
    // Not for consumers: the benchmark's C receivers, tests, TypeScript sources, builds.
    expect(files.filter((file) => /^(bench|test|src|build|scripts|node_modules)\//.test(file))).toEqual([]);
  });

  it('has an MIT LICENSE, as package.json says', () => {
    expect(pkg.license).toBe('MIT');
    const license = fs.readFileSync(path.join(root, 'LICENSE'), 'utf8');
    expect(license).toMatch(/^MIT License\n\nCopyright \(c\) \d{4} tcp-zerocopy contributors\n/);
  });

  it('every shipped source map carries its sources (they resolve without src/)', () => {
    const maps = files.filter((file) => file.endsWith('.js.map'));
    expect(maps.length).toBe(files.filter((file) => file.endsWith('.js')).length);
    for (const map of maps) {
      const parsed = JSON.parse(fs.readFileSync(path.join(root, map), 'utf8')) as {
        sources: string[];
        sourcesContent?: (string | null)[];
      };
      const source = path.join(root, 'src', path.basename(map, '.js.map') + '.ts');
      expect(parsed.sourcesContent, map).toEqual([fs.readFileSync(source, 'utf8')]);
    }
  });

  it('the bin is dist/cli.js, a node script', () => {
    expect(pkg.bin).toEqual({ 'tcp-zerocopy': 'dist/cli.js' });
    expect(fs.readFileSync(path.join(root, 'dist', 'cli.js'), 'utf8').startsWith('#!/usr/bin/env node\n')).toBe(true);
  });
});

describe('a fresh tarball installed into an empty project', () => {
  it('builds only the addon and the sender, loads, and runs `tcp-zerocopy doctor`', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpzc-install-'));
    try {
      const tarball = pack(['--pack-destination', dir]).filename;
      const project = path.join(dir, 'project');
      fs.mkdirSync(project);
      const spec = `file:../${tarball}`;
      fs.writeFileSync(
        path.join(project, 'package.json'),
        JSON.stringify({ name: 'consumer', version: '1.0.0', private: true, dependencies: { [pkg.name]: spec } }),
      );
      // Offline: npm's cache holds the dependencies' tarballs (npm ci put them there) but
      // not their registry metadata, so the project gets a lockfile that names them by
      // integrity, taken from this repository's own lockfile.
      const ours = (
        JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8')) as {
          packages: Record<string, { dev?: boolean }>;
        }
      ).packages;
      const integrity = `sha512-${crypto
        .createHash('sha512')
        .update(fs.readFileSync(path.join(dir, tarball)))
        .digest('base64')}`;
      const packages: Record<string, unknown> = {
        '': { name: 'consumer', version: '1.0.0', dependencies: { [pkg.name]: spec } },
        [`node_modules/${pkg.name}`]: {
          version: pkg.version,
          resolved: spec,
          integrity,
          hasInstallScript: true,
          license: pkg.license,
          dependencies: pkg.dependencies,
          bin: pkg.bin,
          engines: pkg.engines,
        },
      };
      for (const [key, entry] of Object.entries(ours)) {
        if (key !== '' && entry.dev !== true) packages[key] = entry;
      }
      fs.writeFileSync(
        path.join(project, 'package-lock.json'),
        JSON.stringify({ name: 'consumer', version: '1.0.0', lockfileVersion: 3, requires: true, packages }),
      );
      // node-gyp needs Node's headers; offline, take the installed ones if they are this
      // Node's (`npm run test:node` gives its own). The consumer's toolchain runs without
      // the sanitizer runtime `npm run test:asan` preloads.
      const env: NodeJS.ProcessEnv = { ...process.env };
      delete env.LD_PRELOAD;
      if (env.npm_config_nodedir === undefined && systemHeadersAreThisNode()) env.npm_config_nodedir = '/usr';
      await run('npm', ['ci', '--offline', '--no-audit', '--no-fund'], { cwd: project, env, maxBuffer: 64 << 20 });

      const installed = path.join(project, 'node_modules', pkg.name);
      const release = path.join(installed, 'build', 'Release');
      const built = fs
        .readdirSync(release, { withFileTypes: true })
        .filter((entry) => entry.isFile())
        .map((entry) => entry.name)
        .sort();
      expect(built).toEqual(['tcp_zerocopy.node', 'zc_sender']);
      expect(fs.existsSync(path.join(installed, 'bench'))).toBe(false);

      const { stdout: loaded } = await run(
        process.execPath,
        [
          '-e',
          `const zc = require('tcp-zerocopy'); const t = require('tcp-zerocopy/testing');
             console.log(JSON.stringify({ probe: zc.probe(), sender: require('fs').existsSync(t.senderPath) }))`,
        ],
        { cwd: project },
      );
      const { probe, sender } = JSON.parse(loaded) as {
        probe: { supported: boolean; features: { nativeAddon: boolean } };
        sender: boolean;
      };
      expect(probe.features.nativeAddon).toBe(true);
      expect(sender).toBe(true);

      const { stdout: doctor } = await run(
        path.join(project, 'node_modules', '.bin', 'tcp-zerocopy'),
        ['doctor', '--json', '--skip-self-test'],
        { cwd: project },
      );
      const report = JSON.parse(doctor) as DoctorReport;
      expect(report.package).toEqual({ name: pkg.name, version: pkg.version });
      expect(report.kernel.features.find((f) => f.since === 'runtime' && f.name.includes('addon'))?.available).toBe(
        true,
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }, 300_000);
});
