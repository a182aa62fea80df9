// The Node example of docs/producers.md: a driver and an order in, the order's answer out (kafkajs).
//
// It publishes a driver going online (driver_status) and its position (driver_locations.<region>), both
// keyed by the driver id, then an AssignmentRequested (driver_assignment.requests.<region>) keyed by its
// orderId, as JSON, and reads driver_assignment.responses until the order's answer comes.
//
// kafkajs 2's DefaultPartitioner is the Java client's murmur2 (kafkajs 1 called it
// JavaCompatiblePartitioner; LegacyPartitioner, kafkajs 1's default, hashes differently). It is named
// below, which also silences kafkajs's warning about the change of default.
//
//   npm ci && KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 node dispatch_example.js
//
// Settings (environment): KAFKA_BOOTSTRAP_SERVERS, GEODISPATCH_TOPIC_PREFIX, DRIVER_ID, ORDER_ID,
// CONSUMER_GROUP, SETTLE_S, ANSWER_TIMEOUT_S. Prints one JSON line per record it produced and one with the
// answer; exits 1 when no answer comes in time.
'use strict'

const { Kafka, Partitioners, logLevel } = require('kafkajs')

const env = (name, fallback) => process.env[name] || fallback
const PREFIX = env('GEODISPATCH_TOPIC_PREFIX', '')
const DRIVER_ID = env('DRIVER_ID', 'drv-node-example')
const ORDER_ID = env('ORDER_ID', `ord-node-${Date.now()}`)
const SETTLE_MS = Number(env('SETTLE_S', '2')) * 1000
const ANSWER_TIMEOUT_MS = Number(env('ANSWER_TIMEOUT_S', '60')) * 1000

const RESTAURANT = [40.7128, -74.006]
const CUSTOMER = [40.7589, -73.9851]
const DRIVER = [40.7165, -74.006] // ~400 m north of the restaurant

// The topic's region: trunc(lat/10)_trunc(lng/10), truncating toward zero (40.7128, -74.006: 4_-7).
const regionKey = (lat, lng) => `${Math.trunc(lat / 10)}_${Math.trunc(lng / 10)}`
// ISO-8601 in UTC with milliseconds and Z, as the pipeline writes.
const iso = (offsetMs = 0) => new Date(Date.now() + offsetMs).toISOString()
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

async function publish (producer, topic, key, value) {
  // Keys are UTF-8 strings: kafkajs hashes Buffer.from(key), the key's UTF-8 bytes.
  const [metadata] = await producer.send({ topic: PREFIX + topic, messages: [{ key, value: JSON.stringify(value) }] })
  console.log(JSON.stringify({ produced: metadata.topicName, partition: metadata.partition, offset: Number(metadata.baseOffset), key }))
}

async function main () {
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
    await publish(producer, 'driver_status', DRIVER_ID,
      { driver_id: DRIVER_ID, online: true, eligibility: 'ACTIVE', ts: iso(-1000) })
    await publish(producer, `driver_locations.${regionKey(...DRIVER)}`, DRIVER_ID,
      { driver_id: DRIVER_ID, lat: DRIVER[0], lng: DRIVER[1], speed_mps: 0, ts: iso() })
    // Pings and requests are read by different consumers: give the driver a moment to be indexed.
    await sleep(SETTLE_MS)

    // What the order service sends, keyed by orderId (any other key is dead-lettered).
    const geo = regionKey(...RESTAURANT)
    await publish(producer, `driver_assignment.requests.${geo}`, ORDER_ID, {
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
      items: [{ name: 'pizza', quantity: 1 }]
    })

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
