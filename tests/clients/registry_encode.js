#!/usr/bin/env node
// Encodes one record the way a producer using Confluent's wire format through a schema registry does,
// with a serializer nobody here wrote (@kafkajs/confluent-schema-registry): it registers the schema under
// the subject itself and frames the value with the id the registry gave it. Prints {"id", "value"} with
// the value in base64, for tests/integration/test_schema_registry.py to send.
//
//   node registry_encode.js --url http://127.0.0.1:8081 --subject T-value --schema X.avsc --record '{...}'
'use strict';

const fs = require('node:fs');
const { parseArgs } = require('node:util');
const { SchemaRegistry, SchemaType } = require('@kafkajs/confluent-schema-registry');

const { values: options } = parseArgs({
  options: {
    url: { type: 'string' },
    subject: { type: 'string' },
    schema: { type: 'string' },
    record: { type: 'string' },
  },
});

async function main() {
  const registry = new SchemaRegistry({ host: options.url });
  const schema = fs.readFileSync(options.schema, 'utf8');
  const { id } = await registry.register({ type: SchemaType.AVRO, schema }, { subject: options.subject });
  const value = await registry.encode(id, JSON.parse(options.record));
  process.stdout.write(JSON.stringify({ id, value: value.toString('base64') }) + '\n');
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
