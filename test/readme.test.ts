// The README's TypeScript examples compile under `strict`, against the package's own types.
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import * as ts from 'typescript';
import { describe, expect, it } from 'vitest';

const root = path.resolve(__dirname, '..');

function typescriptBlocks(markdown: string): string[] {
  return [...markdown.matchAll(/```ts\n([\s\S]*?)```/g)].map((match) => match[1]);
}

describe('README', () => {
  const blocks = typescriptBlocks(fs.readFileSync(path.join(root, 'README.md'), 'utf8'));

  it('has a TypeScript example', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(1);
  });

  it('every TypeScript example type-checks under strict', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tcpzc-readme-'));
    try {
      const files = blocks.map((block, i) => {
        const file = path.join(dir, `example-${i}.ts`);
        fs.writeFileSync(file, `${block}\nexport {};\n`);
        return file;
      });
      const program = ts.createProgram(files, {
        strict: true,
        target: ts.ScriptTarget.ES2022,
        module: ts.ModuleKind.CommonJS,
        moduleResolution: ts.ModuleResolutionKind.Node10,
        lib: ['lib.es2022.d.ts'],
        types: ['node'],
        typeRoots: [path.join(root, 'node_modules', '@types')],
        baseUrl: root,
        paths: { 'tcp-zerocopy': ['src/index.ts'], 'tcp-zerocopy/testing': ['src/testing.ts'] },
        noEmit: true,
        skipLibCheck: true,
      });
      const diagnostics = ts.getPreEmitDiagnostics(program).map((diagnostic) => {
        const where = diagnostic.file ? `${path.basename(diagnostic.file.fileName)}: ` : '';
        return `${where}TS${diagnostic.code} ${ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')}`;
      });
      expect(diagnostics).toEqual([]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
