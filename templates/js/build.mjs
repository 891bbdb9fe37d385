// Builds plugin.js into a WebAssembly component with componentize-js
// (pinned in package.json): dist/{{name}}.wasm.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

const { component } = await componentize({
  sourcePath: here('./plugin.js'),
  witPath: here('./wit'),
  worldName: 'plugboard:plugin/plugin',
  // No fetch or HTTP server unless the plugin needs them: smaller and
  // faster per call.
  disableFeatures: ['http', 'fetch-event'],
});
await mkdir(here('./dist'), { recursive: true });
await writeFile(here('./dist/{{name}}.wasm'), component);
console.log(`dist/{{name}}.wasm: ${component.byteLength} bytes`);
