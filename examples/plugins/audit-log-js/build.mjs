// Builds audit-log.js into a WebAssembly component with componentize-js
// (pinned in package.json): dist/audit-log-js.wasm.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

const { component } = await componentize({
  sourcePath: here('./audit-log.js'),
  witPath: here('../../../wit'),
  worldName: 'plugboard:plugin/plugin',
  // No fetch or HTTP server: this plugin needs no network, and leaving them
  // out keeps the component smaller and faster per call.
  disableFeatures: ['http', 'fetch-event'],
});
await mkdir(here('./dist'), { recursive: true });
await writeFile(here('./dist/audit-log-js.wasm'), component);
console.log(`dist/audit-log-js.wasm: ${component.byteLength} bytes`);
