// The Go example of docs/producers.md: a driver and an order in, the order's answer out (franz-go).
//
// It publishes a driver going online (driver_status) and its position (driver_locations.<region>), both
// keyed by the driver id, then an AssignmentRequested (driver_assignment.requests.<region>) keyed by its
// orderId, in JSON or in Confluent-framed Avro (github.com/hamba/avro) with the fixed schema ids of
// schemas/avro/ids.json, and reads driver_assignment.responses until the order's answer comes.
//
// The partitioner is the one thing to get right in Go: the pipeline partitions by Kafka's rule, murmur2 of
// the key bytes, masked to 31 bits, modulo the partition count. franz-go's StickyKeyPartitioner with a nil
// hasher is exactly that (its default partitioner hashes keys the same way; it is named here so that
// nobody swaps it). segmentio/kafka-go needs Balancer: &kafka.Murmur2Balancer{} (its Writer's default is
// round robin, its Hash balancer FNV-1a); sarama's default hash partitioner is FNV-1a too.
//
//	go run .                    # with KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092
//	VALUE_FORMAT=avro go run .
//
// Settings (environment): KAFKA_BOOTSTRAP_SERVERS, GEODISPATCH_TOPIC_PREFIX, DRIVER_ID, ORDER_ID,
// VALUE_FORMAT (json or avro), GEODISPATCH_SCHEMAS (the folder of the .avsc files and ids.json; by default
// the repository's schemas/avro, found from this file's path), CONSUMER_GROUP, SETTLE_S, ANSWER_TIMEOUT_S.
// Prints one JSON line per record it produced and one with the answer; exits 1 when no answer comes in
// time.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/hamba/avro/v2"
	"github.com/twmb/franz-go/pkg/kgo"
)

var (
	restaurant = [2]float64{40.7128, -74.006}
	customer   = [2]float64{40.7589, -73.9851}
	driverPos  = [2]float64{40.7165, -74.006} // ~400 m north of the restaurant
)

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func seconds(name, fallback string) time.Duration {
	value, err := strconv.ParseFloat(env(name, fallback), 64)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s must be a number of seconds: %v\n", name, err)
		os.Exit(2)
	}
	return time.Duration(value * float64(time.Second))
}

// regionKey is the topic's region: trunc(lat/10)_trunc(lng/10), truncating toward zero (4_-7 for New York).
func regionKey(lat, lng float64) string {
	return fmt.Sprintf("%d_%d", int(math.Trunc(lat/10)), int(math.Trunc(lng/10)))
}

// iso is ISO-8601 in UTC with milliseconds and Z, as the pipeline writes.
func iso(offset time.Duration) string {
	return time.Now().Add(offset).UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// schemasDir is where the schemas are: GEODISPATCH_SCHEMAS, else the repository's schemas/avro, two
// folders up from this file in examples/go/ (the source path compiled in). Copy them beside your code.
func schemasDir() string {
	if dir := os.Getenv("GEODISPATCH_SCHEMAS"); dir != "" {
		return dir
	}
	_, source, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(source), "..", "..", "schemas", "avro")
}

// encoder writes JSON, or the Confluent wire format: byte 0, the schema id (4 bytes, big-endian), the
// Avro binary body.
type encoder struct {
	avro    bool
	ids     map[string]int         // record name -> Confluent schema id of schemas/avro/ids.json
	schemas map[string]avro.Schema // record name -> its schema (the latest version)
}

func newEncoder(valueFormat string) (*encoder, error) {
	if valueFormat != "json" && valueFormat != "avro" {
		return nil, fmt.Errorf("VALUE_FORMAT must be json or avro, got %q", valueFormat)
	}
	enc := &encoder{avro: valueFormat == "avro", ids: map[string]int{}, schemas: map[string]avro.Schema{}}
	if !enc.avro {
		return enc, nil
	}
	dir := schemasDir()
	raw, err := os.ReadFile(filepath.Join(dir, "ids.json"))
	if err != nil {
		return nil, err
	}
	var ids map[string]any // "_doc" is a string, the ids' values file names
	if err := json.Unmarshal(raw, &ids); err != nil {
		return nil, fmt.Errorf("ids.json: %w", err)
	}
	for key, file := range ids {
		if strings.HasPrefix(key, "_") {
			continue
		}
		id, err := strconv.Atoi(key)
		if err != nil {
			return nil, fmt.Errorf("ids.json: schema id %q: %w", key, err)
		}
		avsc, err := os.ReadFile(filepath.Join(dir, fmt.Sprint(file)))
		if err != nil {
			return nil, err
		}
		// A cache of its own per file: two versions of one schema share a name.
		schema, err := avro.ParseBytesWithCache(avsc, "", &avro.SchemaCache{})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", file, err)
		}
		named, ok := schema.(avro.NamedSchema)
		if !ok {
			continue
		}
		// A later version of a schema has a higher id: keep the highest per name.
		if name := named.Name(); enc.ids[name] < id {
			enc.ids[name], enc.schemas[name] = id, schema
		}
	}
	return enc, nil
}

// encode writes value, a map of the schema's fields (a missing optional field takes its default).
func (e *encoder) encode(name string, value map[string]any) ([]byte, error) {
	if !e.avro {
		return json.Marshal(value)
	}
	schema, ok := e.schemas[name]
	if !ok {
		return nil, fmt.Errorf("no schema %s in ids.json", name)
	}
	body, err := avro.Marshal(schema, value)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	frame := make([]byte, 5, 5+len(body))
	// frame[0] is the magic byte 0; then the schema id, big-endian.
	binary.BigEndian.PutUint32(frame[1:], uint32(e.ids[name]))
	return append(frame, body...), nil
}

func printJSON(line map[string]any) {
	out, _ := json.Marshal(line)
	fmt.Println(string(out))
}

func publish(ctx context.Context, client *kgo.Client, enc *encoder, name, topic, key string, value map[string]any) error {
	body, err := enc.encode(name, value)
	if err != nil {
		return err
	}
	// Keys are UTF-8 strings: a Go string's bytes are its UTF-8 bytes, which murmur2 hashes.
	record := &kgo.Record{Topic: topic, Key: []byte(key), Value: body}
	if err := client.ProduceSync(ctx, record).FirstErr(); err != nil {
		return fmt.Errorf("producing to %s: %w", topic, err)
	}
	printJSON(map[string]any{"produced": record.Topic, "partition": record.Partition, "offset": record.Offset, "key": key})
	return nil
}

func run() int {
	prefix := env("GEODISPATCH_TOPIC_PREFIX", "")
	driverID := env("DRIVER_ID", "drv-go-example")
	orderID := env("ORDER_ID", fmt.Sprintf("ord-go-%d", time.Now().UnixMilli()))
	responses := prefix + "driver_assignment.responses"
	ctx := context.Background()
	enc, err := newEncoder(env("VALUE_FORMAT", "json"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}

	client, err := kgo.NewClient(
		kgo.SeedBrokers(strings.Split(env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"), ",")...),
		// Kafka's default partitioning: murmur2 of the key, as the Java client and the pipeline.
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.RequiredAcks(kgo.AllISRAcks()), // the default, with idempotent writes
		kgo.ConsumerGroup(env("CONSUMER_GROUP", "geodispatch-example-go")),
		kgo.ConsumeTopics(responses),
		// The first time, from the earliest answer, so that an answer written before the group joined is read.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer client.Close()

	// What driver gateways send: the driver goes online, then reports where it is.
	if err := publish(ctx, client, enc, "DriverStatus", prefix+"driver_status", driverID, map[string]any{
		"driver_id": driverID, "online": true, "eligibility": "ACTIVE", "ts": iso(-time.Second),
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := publish(ctx, client, enc, "LocationPing", prefix+"driver_locations."+regionKey(driverPos[0], driverPos[1]), driverID, map[string]any{
		"driver_id": driverID, "lat": driverPos[0], "lng": driverPos[1], "speed_mps": 0.0, "ts": iso(0),
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	// Pings and requests are read by different consumers: give the driver a moment to be indexed.
	time.Sleep(seconds("SETTLE_S", "2"))

	// What the order service sends, keyed by orderId (any other key is dead-lettered).
	geo := regionKey(restaurant[0], restaurant[1])
	request := map[string]any{
		"eventId": "evt-" + orderID, "eventType": "AssignmentRequested", "occurredAt": iso(0),
		"orderId": orderID, "geoKey": geo,
		"restaurantLatitude": restaurant[0], "restaurantLongitude": restaurant[1],
		"customerLatitude": customer[0], "customerLongitude": customer[1],
		// float64, not int: the Avro schema's fields are doubles (JSON writes 10.0 as 10 all the same).
		"preparationTime": 10.0, "radius": 5.0, "totalAmount": 34.97,
		"items": []map[string]any{{"name": "pizza", "quantity": 1}},
	}
	if enc.avro {
		request["items"] = `[{"name": "pizza", "quantity": 1}]` // in Avro, the JSON text of the list
	}
	err = publish(ctx, client, enc, "AssignmentRequested", prefix+"driver_assignment.requests."+geo, orderID, request)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	seen := map[string]bool{} // at least once: the same answer may come twice
	deadline := time.Now().Add(seconds("ANSWER_TIMEOUT_S", "60"))
	for time.Now().Before(deadline) {
		pollCtx, cancel := context.WithDeadline(ctx, deadline)
		fetches := client.PollFetches(pollCtx)
		cancel()
		for _, fetchErr := range fetches.Errors() {
			if !errors.Is(fetchErr.Err, context.DeadlineExceeded) {
				fmt.Fprintf(os.Stderr, "fetching %s[%d]: %v\n", fetchErr.Topic, fetchErr.Partition, fetchErr.Err)
			}
		}
		var found map[string]any
		var foundRecord *kgo.Record
		fetches.EachRecord(func(record *kgo.Record) {
			var answer map[string]any
			if err := json.Unmarshal(record.Value, &answer); err != nil {
				fmt.Fprintf(os.Stderr, "%s[%d]@%d: not JSON: %v\n", record.Topic, record.Partition, record.Offset, err)
				return
			}
			marker := fmt.Sprint(answer["orderId"], "/", answer["status"])
			if seen[marker] {
				return
			}
			seen[marker] = true
			if answer["orderId"] == orderID && found == nil {
				found, foundRecord = answer, record
			}
		})
		if err := client.CommitUncommittedOffsets(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "commit:", err)
		}
		if found != nil {
			printJSON(map[string]any{"answer": found, "partition": foundRecord.Partition, "offset": foundRecord.Offset,
				"key": string(foundRecord.Key)})
			return 0
		}
	}
	fmt.Fprintf(os.Stderr, "no answer for %s in time\n", orderID)
	return 1
}

func main() {
	os.Exit(run())
}
