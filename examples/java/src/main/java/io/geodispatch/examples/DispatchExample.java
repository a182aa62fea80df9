package io.geodispatch.examples;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.time.temporal.ChronoUnit;
import java.util.HashMap;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericDatumWriter;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryEncoder;
import org.apache.avro.io.EncoderFactory;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Java example of docs/producers.md: a driver and an order in, the order's answer out.
 *
 * <p>Publishes a driver going online (driver_status) and its position (driver_locations.&lt;region&gt;), both
 * keyed by the driver id, then an AssignmentRequested (driver_assignment.requests.&lt;region&gt;) keyed by its
 * orderId, as JSON or as Confluent-framed Avro with the fixed ids of schemas/avro/ids.json, and reads
 * driver_assignment.responses until the order's answer comes. The Java client's default partitioner is
 * the murmur2 rule the pipeline partitions by: nothing to configure.
 *
 * <p>Settings (environment): KAFKA_BOOTSTRAP_SERVERS, GEODISPATCH_TOPIC_PREFIX, DRIVER_ID, ORDER_ID,
 * VALUE_FORMAT (json or avro), CONSUMER_GROUP, SETTLE_S, ANSWER_TIMEOUT_S. Prints one JSON line per record it
 * produced and one with the answer; exits 1 when no answer comes in time.
 */
public final class DispatchExample {
  private static final ObjectMapper JSON = new ObjectMapper();
  private static final double[] RESTAURANT = {40.7128, -74.006};
  private static final double[] CUSTOMER = {40.7589, -73.9851};
  private static final double[] DRIVER = {40.7165, -74.006}; // ~400 m north of the restaurant

  private final String prefix = env("GEODISPATCH_TOPIC_PREFIX", "");
  private final String driverId = env("DRIVER_ID", "drv-java-example");
  private final String orderId = env("ORDER_ID", "ord-java-" + System.currentTimeMillis());
  private final boolean avro;
  // Confluent schema ids of schemas/avro/ids.json, and the schemas by record name (the latest version).
  private final Map<String, Integer> schemaIds = new HashMap<>();
  private final Map<String, Schema> schemas = new HashMap<>();

  private DispatchExample(String valueFormat) throws IOException {
    if (!valueFormat.equals("json") && !valueFormat.equals("avro")) {
      throw new IllegalArgumentException("VALUE_FORMAT must be json or avro, got " + valueFormat);
    }
    avro = valueFormat.equals("avro");
    if (avro) {
      JsonNode ids = JSON.readTree(resource("ids.json"));
      for (Iterator<Map.Entry<String, JsonNode>> it = ids.fields(); it.hasNext(); ) {
        Map.Entry<String, JsonNode> entry = it.next();
        if (entry.getKey().startsWith("_")) {
          continue;
        }
        int id = Integer.parseInt(entry.getKey());
        Schema schema = new Schema.Parser().parse(resource(entry.getValue().asText()));
        // A later version of a schema has a higher id: keep the highest per name.
        if (schemaIds.getOrDefault(schema.getName(), 0) < id) {
          schemaIds.put(schema.getName(), id);
          schemas.put(schema.getName(), schema);
        }
      }
    }
  }

  public static void main(String[] args) throws Exception {
    System.exit(new DispatchExample(env("VALUE_FORMAT", "json")).run());
  }

  private int run() throws Exception {
    String bootstrap = env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092");
    Properties producerProps = new Properties();
    producerProps.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    producerProps.put(ProducerConfig.ACKS_CONFIG, "all");
    producerProps.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    // Keys as UTF-8 strings; no partitioner.class: the default hashes keyed records with murmur2.
    producerProps.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
    producerProps.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

    Properties consumerProps = new Properties();
    consumerProps.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    consumerProps.put(ConsumerConfig.GROUP_ID_CONFIG, env("CONSUMER_GROUP", "geodispatch-example-java"));
    // The first time, from the earliest answer, so that an answer written before the group joined is read.
    consumerProps.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    consumerProps.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
    consumerProps.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
    consumerProps.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

    try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(producerProps);
        KafkaConsumer<String, byte[]> consumer = new KafkaConsumer<>(consumerProps)) {
      consumer.subscribe(List.of(prefix + "driver_assignment.responses"));

      // What driver gateways send: the driver goes online, then reports where it is.
      ObjectNode status = JSON.createObjectNode();
      status.put("driver_id", driverId).put("online", true).put("eligibility", "ACTIVE").put("ts", iso(-1));
      publish(producer, "driver_status", driverId, encode("DriverStatus", status));
      ObjectNode ping = JSON.createObjectNode();
      ping.put("driver_id", driverId).put("lat", DRIVER[0]).put("lng", DRIVER[1]).put("speed_mps", 0.0)
          .put("ts", iso(0));
      publish(producer, "driver_locations." + regionKey(DRIVER[0], DRIVER[1]), driverId, encode("LocationPing", ping));
      // Pings and requests are read by different consumers: give the driver a moment to be indexed.
      Thread.sleep((long) (Double.parseDouble(env("SETTLE_S", "2")) * 1000));

      // What the order service sends, keyed by orderId (any other key is dead-lettered).
      String geo = regionKey(RESTAURANT[0], RESTAURANT[1]);
      ObjectNode request = JSON.createObjectNode();
      request.put("eventId", "evt-" + orderId).put("eventType", "AssignmentRequested").put("occurredAt", iso(0))
          .put("orderId", orderId).put("geoKey", geo)
          .put("restaurantLatitude", RESTAURANT[0]).put("restaurantLongitude", RESTAURANT[1])
          .put("customerLatitude", CUSTOMER[0]).put("customerLongitude", CUSTOMER[1])
          .put("preparationTime", 10.0).put("radius", 5.0).put("totalAmount", 34.97);
      String items = "[{\"name\": \"pizza\", \"quantity\": 1}]";
      if (avro) {
        request.put("items", items); // in Avro, the JSON text of the list
      } else {
        request.set("items", JSON.readTree(items));
      }
      publish(producer, "driver_assignment.requests." + geo, orderId, encode("AssignmentRequested", request));
      return awaitAnswer(consumer);
    }
  }

  private int awaitAnswer(KafkaConsumer<String, byte[]> consumer) throws IOException {
    Set<String> seen = new HashSet<>(); // at least once: the same answer may come twice
    long deadline = System.nanoTime() + (long) (Double.parseDouble(env("ANSWER_TIMEOUT_S", "60")) * 1e9);
    while (System.nanoTime() < deadline) {
      for (ConsumerRecord<String, byte[]> record : consumer.poll(Duration.ofMillis(500))) {
        JsonNode answer = JSON.readTree(record.value());
        if (!seen.add(answer.get("orderId").asText() + "/" + answer.get("status").asText())) {
          continue;
        }
        if (answer.get("orderId").asText().equals(orderId)) {
          ObjectNode line = JSON.createObjectNode();
          line.set("answer", answer);
          line.put("partition", record.partition()).put("offset", record.offset()).put("key", record.key());
          System.out.println(JSON.writeValueAsString(line));
          consumer.commitSync();
          return 0;
        }
      }
      consumer.commitSync();
    }
    System.err.println("no answer for " + orderId + " in time");
    return 1;
  }

  private void publish(KafkaProducer<String, byte[]> producer, String topic, String key, byte[] value)
      throws Exception {
    RecordMetadata metadata = producer.send(new ProducerRecord<>(prefix + topic, key, value)).get();
    ObjectNode line = JSON.createObjectNode();
    line.put("produced", metadata.topic()).put("partition", metadata.partition()).put("offset", metadata.offset())
        .put("key", key);
    System.out.println(JSON.writeValueAsString(line));
  }

  /** JSON, or the Confluent wire format: byte 0, the schema id (4 bytes, big-endian), the Avro body. */
  private byte[] encode(String name, ObjectNode value) throws IOException {
    if (!avro) {
      return JSON.writeValueAsBytes(value);
    }
    Schema schema = schemas.get(name);
    GenericRecord record = new GenericData.Record(schema);
    for (Schema.Field field : schema.getFields()) {
      JsonNode node = value.get(field.name());
      if (node == null || node.isNull()) {
        record.put(field.name(), field.hasDefaultValue() ? GenericData.get().getDefaultValue(field) : null);
      } else if (node.isTextual()) {
        record.put(field.name(), node.asText());
      } else if (node.isBoolean()) {
        record.put(field.name(), node.asBoolean());
      } else if (node.isInt() && isInt(field.schema())) {
        record.put(field.name(), node.asInt());
      } else {
        record.put(field.name(), node.asDouble());
      }
    }
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    out.write(0);
    out.write(ByteBuffer.allocate(4).putInt(schemaIds.get(name)).array());
    BinaryEncoder encoder = EncoderFactory.get().binaryEncoder(out, null);
    new GenericDatumWriter<GenericRecord>(schema).write(record, encoder);
    encoder.flush();
    return out.toByteArray();
  }

  private static boolean isInt(Schema schema) {
    if (schema.getType() == Schema.Type.UNION) {
      return schema.getTypes().stream().anyMatch(s -> s.getType() == Schema.Type.INT);
    }
    return schema.getType() == Schema.Type.INT;
  }

  /** The topic's region: trunc(lat/10)_trunc(lng/10), truncating toward zero (40.7128, -74.006: 4_-7). */
  static String regionKey(double lat, double lng) {
    return (long) (lat / 10) + "_" + (long) (lng / 10);
  }

  /** ISO-8601 in UTC with milliseconds and Z, as the pipeline writes. */
  private static String iso(long offsetSeconds) {
    return Instant.now().plusSeconds(offsetSeconds).truncatedTo(ChronoUnit.MILLIS).toString();
  }

  private static String resource(String name) throws IOException {
    try (InputStream in = DispatchExample.class.getResourceAsStream("/avro/" + name)) {
      if (in == null) {
        throw new IOException("schema " + name + " not on the classpath (the pom copies schemas/avro/)");
      }
      return new String(in.readAllBytes(), StandardCharsets.UTF_8);
    }
  }

  private static String env(String name, String fallback) {
    String value = System.getenv(name);
    return value == null || value.isEmpty() ? fallback : value;
  }
}
