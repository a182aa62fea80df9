// The Node example of docs/producers.md: a driver and an order in, the order's answer out (kafkajs).
//
// It publishes a driver going online (driver_status) and its position (driver_locations.<region>), both
// keyed by the driver id, then an AssignmentRequested (driver_assignment.requests.<region>) keyed by its
// orderId, in JSON or in Confluent-framed Avro (avsc) with the fixed schema ids of schemas/avro/ids.json,
// and reads driver_assignment.responses until the order's answer comes.
//
// kafkajs 2's DefaultPartitioner is the Java client's murmur2 (kafkajs 1 called it
// JavaCompatiblePartitioner; LegacyPartitioner, kafkajs 1's default, hashes differently). It is named
// below, which also silences kafkajs's warning about the change of default.
//
//   npm ci && KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 node dispatch_example.js
//   VALUE_FORMAT=avro node dispatch_example.js
//
// Settings (environment): KAFKA_BOOTSTRAP_SERVERS, GEODISPATCH_TOPIC_PREFIX, DRIVER_ID, ORDER_ID,
// VALUE_FORMAT (json or avro), GEODISPATCH_SCHEMAS (the folder of the .avsc files and ids.json; by default
// the repository's schemas/avro), CONSUMER_GROUP, SETTLE_S, ANSWER_TIMEOUT_S. Prints one JSON line per
// record it produced and one with the answer; exits 1 when no answer comes in time.
'use strict'

const fs = require('fs')
const path = require('path')
const { Kafka, Partitioners, logLevel } = require('kafkajs')

const env = (name, fallback) => process.env[name] || fallback
const PREFIX = env('GEODISPATCH_TOPIC_PREFIX', '')
const DRIVER_ID = env('DRIVER_ID', 'drv-node-example')
const ORDER_ID = env('ORDER_ID', `ord-node-${Date.now()}`)
const SETTLE_MS = Number(env('SETTLE_S', '2')) * 1000
const ANSWER_TIMEOUT_MS = Number(env('ANSWER_TIMEOUT_S', '60')) * 1000
const VALUE_FORMAT = env('VALUE_FORMAT', 'json')
// The schemas of the repository, where this file lies in examples/node/; copy them beside your code.
const SCHEMAS = env('GEODISPATCH_SCHEMAS', path.join(__dirname, '..', '..', 'schemas', 'avro'))

const RESTAURANT = [40.7128, -74.006]
const CUSTOMER = [40.7589, -73.9851]
const DRIVER = [40.7165, -74.006] // ~400 m north of the restaurant

// The topic's region: trunc(lat/10)_trunc(lng/10), truncating toward zero (40.7128, -74.006: 4_-7).
const regionKey = (lat, lng) => `${Math.trunc(lat / 10)}_${Math.trunc(lng / 10)}`
// ISO-8601 in UTC with milliseconds and Z, as the pipeline writes.
const iso = (offsetMs = 0) => new Date(Date.now() + offsetMs).toISOString()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

// JSON, or the Confluent wire format: byte 0, the schema id (4 bytes, big-endian), the Avro body.
function makeEncoder (valueFormat) {
  if (valueFormat !== 'json' && valueFormat !== 'avro') {
    throw new Error(`VALUE_FORMAT must be json or avro, got ${JSON.stringify(valueFormat)}`)
  }
  if (valueFormat === 'json') return { avro: false, encode: (name, value) => JSON.stringify(value) }
  const avro = require('avsc') // only needed for Avro
  const schemas = new Map() // record name -> { id, type }
  const ids = JSON.parse(fs.readFileSync(path.join(SCHEMAS, 'ids.json'), 'utf8'))
  for (const [key, file] of Object.entries(ids)) {
    if (key.startsWith('_')) continue
    const id = Number(key)
    const schema = JSON.parse(fs.readFileSync(path.join(SCHEMAS, file), 'utf8'))
    // A later version of a schema has a higher id: keep the highest per name.
    if ((schemas.get(schema.name)?.id ?? 0) < id) schemas.set(schema.name, { id, type: avro.Type.forSchema(schema) })
  }
  return {
    avro: true,
    // value: an object of the schema's fields; a missing optional field takes its default.
    encode: (name, value) => {
      const { id, type } = schemas.get(name)
      const header = Buffer.alloc(5) // header[0] is the magic byte 0
      header.writeUInt32BE(id, 1)
      return Buffer.concat([header, type.toBuffer(value)])
    }
  }
}

async function publish (producer, topic, key, value) {
  // Keys are UTF-8 strings: kafkajs hashes Buffer.from(key), the key's UTF-8 bytes.
  const [metadata] = await producer.send({ topic: PREFIX + topic, messages: [{ key, value }] })
  console.log(JSON.stringify({ produced: metadata.topicName, partition: metadata.partition, offset: Number(metadata.baseOffset), key }))
}

async function main () {
  const encoder = makeEncoder(VALUE_FORMAT)
  const kafka = new Kafka({
    clientId: 'geodispatch-node-example',
    brokers: env('KAFKA_BOOTSTRAP_SERVERS', '127.0.0.1:9092').split(','),
    logLevel: logLevel.WARN
  })
  // acks: -1 (all) is kafkajs's default for send(); its idempotent mode is still marked experimental.
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  const consumer = kafka.consumer({ groupId: env('CONSUMER_GROUP', 'geodispatch-example-node') })
  await producer.connect()
  await consumer.connect()

  let settle
  const answered = new Promise((resolve) => { settle = resolve })
  const seen = new Set() // at least once: the same answer may come twice
  // The first time, from the earliest answer, so that an answer written before the group joined is read.
  await consumer.subscribe({ topics: [PREFIX + 'driver_assignment.responses'], fromBeginning: true })
  await consumer.run({
    // kafkajs commits the offsets of handled messages itself (autoCommit), after eachMessage returns.
    eachMessage: async ({ partition, message }) => {
      const answer = JSON.parse(message.value.toString('utf8'))
      const marker = `${answer.orderId}/${answer.status}`
      if (seen.has(marker)) return
      seen.add(marker)
      if (answer.orderId === ORDER_ID) {
        settle({ answer, partition, offset: Number(message.offset), key: message.key.toString('utf8') })
      }
    }
  })

  try {
    // What driver gateways send: the driver goes online, then reports where it is.
    await publish(producer, 'driver_status', DRIVER_ID, encoder.encode('DriverStatus',
      { driver_id: DRIVER_ID, online: true, eligibility: 'ACTIVE', ts: iso(-1000) }))
    await publish(producer, `driver_locations.${regionKey(...DRIVER)}`, DRIVER_ID, encoder.encode('LocationPing',
      { driver_id: DRIVER_ID, lat: DRIVER[0], lng: DRIVER[1], speed_mps: 0, ts: iso() }))
    // Pings and requests are read by different consumers: give the driver a moment to be indexed.
    await sleep(SETTLE_MS)

    // What the order service sends, keyed by orderId (any other key is dead-lettered).
    const geo = regionKey(...RESTAURANT)
    await publish(producer, `driver_assignment.requests.${geo}`, ORDER_ID, encoder.encode('AssignmentRequested', {
      eventId: `evt-${ORDER_ID}`,
      eventType: 'AssignmentRequested',
      occurredAt: iso(),
      orderId: ORDER_ID,
      geoKey: geo,
      restaurantLatitude: RESTAURANT[0],
      restaurantLongitude: RESTAURANT[1],
      customerLatitude: CUSTOMER[0],
      customerLongitude: CUSTOMER[1],
      preparationTime: 10,
      radius: 5,
      totalAmount: 34.97,
      // In Avro items is the JSON text of the list (its shape belongs to the order service).
      items: encoder.avro ? '[{"name": "pizza", "quantity": 1}]' : [{ name: 'pizza', quantity: 1 }]
    }))

    const timeout = sleep(ANSWER_TIMEOUT_MS).then(() => null)
    const result = await Promise.race([answered, timeout])
    if (result === null) {
      console.error(`no answer for ${ORDER_ID} within ${ANSWER_TIMEOUT_MS / 1000}s`)
      return 1
    }
    console.log(JSON.stringify(result))
    return 0
  } finally {
    await consumer.disconnect()
    await producer.disconnect()
  }
}

main().then((code) => process.exit(code), (err) => {
  console.error(err)
  process.exit(1)
})
