// Builds notifier.js into a WebAssembly component with componentize-js
// (pinned in package.json): dist/garage-notifier-js.wasm. The world is
// plugin-with-http: the plugin calls wasi:http/outgoing-handler itself.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';

const here = (p) => fileURLToPath(new URL(p, import.meta.url));

const { component } = await componentize({
  sourcePath: here('./notifier.js'),
  witPath: here('../../../wit'),
  worldName: 'plugboard:plugin/plugin-with-http',
  disableFeatures: ['fetch-event'],
});
await mkdir(here('./dist'), { recursive: true });
await writeFile(here('./dist/garage-notifier-js.wasm'), component);
console.log(`dist/garage-notifier-js.wasm: ${component.byteLength} bytes`);
