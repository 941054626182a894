// Runs SQL on FHIR v2 ViewDefinitions with @medplum/core's evalSqlOnFhir, a runner
// someone else wrote, so the tests can check cdss's views and their own runner with it.
//
//   node sof.mjs VIEW.json [VIEW.json ...] FHIR_FOLDER
//
// Reads every *.ndjson file of FHIR_FOLDER (a screen's fhir/ output), runs each view
// over all of its resources and prints {"<view name>": [rows...], ...} as JSON.
// Any error ends it with a message and exit status 1.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { evalSqlOnFhir } from '@medplum/core';

function main(args) {
  if (args.length < 2) {
    throw new Error('usage: node sof.mjs VIEW.json [VIEW.json ...] FHIR_FOLDER');
  }
  const folder = args.pop();
  const resources = [];
  for (const file of readdirSync(folder).filter((f) => f.endsWith('.ndjson')).sort()) {
    const lines = readFileSync(join(folder, file), 'utf8').split('\n');
    lines.forEach((line, i) => {
      if (line.trim()) {
        try {
          resources.push(JSON.parse(line));
        } catch (err) {
          throw new Error(`${file} line ${i + 1}: ${err.message}`);
        }
      }
    });
  }
  if (resources.length === 0) {
    throw new Error(`no resources in ${folder}`);
  }
  const out = {};
  for (const path of args) {
    const view = JSON.parse(readFileSync(path, 'utf8'));
    if (view.resourceType !== 'ViewDefinition' || !view.name) {
      throw new Error(`${path} is not a named ViewDefinition`);
    }
    if (view.name in out) {
      throw new Error(`two views are named ${view.name}`);
    }
    try {
      out[view.name] = evalSqlOnFhir(view, resources);
    } catch (err) {
      throw new Error(`view ${view.name} (${path}): ${err.message}`);
    }
  }
  return out;
}

try {
  process.stdout.write(JSON.stringify(main(process.argv.slice(2))) + '\n');
} catch (err) {
  process.stderr.write(`sof.mjs: ${err.message}\n`);
  process.exit(1);
}
