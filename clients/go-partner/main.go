// Command go-partner is a partner's inbox consumer written in Go: it shows that a partner needs
// only the contract (a descriptor set compiled from protos/) and the CloudEvents headers.
//
// It authenticates with the settings `refctl partner add` prints (SCRAM-SHA-512), reads the
// partner's inbox in its own consumer group, checks each record's CloudEvents headers, decodes
// the PartnerDelivery with the descriptor set (no generated code), checks it is addressed to
// this partner, prints its ids as one JSON line, and commits only after that.
//
//	set -a; . ./partner.env; set +a
//	go run . -descriptors ctroute.binpb -max 10
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

const deliveryType = "ctroute.partner.v1.PartnerDelivery"

// Delivery is what this example prints: operational ids only, never the referral's content.
type Delivery struct {
	DeliveryID string `json:"delivery_id"`
	ReferralID string `json:"referral_id"`
	Partner    string `json:"partner"`
	Priority   string `json:"priority"`
	EventID    string `json:"event_id"`
}

func main() {
	descriptors := flag.String("descriptors", "ctroute.binpb", "FileDescriptorSet of the contract")
	group := flag.String("group", "go", "consumer group name, under partner.<id>.")
	maxDeliveries := flag.Int("max", 0, "stop after this many deliveries (0: never)")
	idle := flag.Duration("idle", 0, "stop after this long without a delivery (0: never)")
	flag.Parse()
	if err := run(*descriptors, *group, *maxDeliveries, *idle); err != nil {
		fmt.Fprintln(os.Stderr, "go-partner:", err)
		os.Exit(1)
	}
}

func env(name string) (string, error) {
	value := os.Getenv(name)
	if value == "" {
		return "", fmt.Errorf("set %s (refctl partner add printed it)", name)
	}
	return value, nil
}

func deliveryDescriptor(path string) (protoreflect.MessageDescriptor, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var set descriptorpb.FileDescriptorSet
	if err := proto.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("%s is not a FileDescriptorSet: %w", path, err)
	}
	files, err := protodesc.NewFiles(&set)
	if err != nil {
		return nil, err
	}
	found, err := files.FindDescriptorByName(deliveryType)
	if err != nil {
		return nil, err
	}
	message, ok := found.(protoreflect.MessageDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is not a message", deliveryType)
	}
	return message, nil
}

func header(record *kgo.Record, name string) string {
	value := ""
	for _, h := range record.Headers {
		if h.Key == name {
			value = string(h.Value)
		}
	}
	return value
}

func text(message protoreflect.Message, name protoreflect.Name) string {
	return message.Get(message.Descriptor().Fields().ByName(name)).String()
}

// decode checks the envelope and the addressee, and returns the delivery's ids.
func decode(record *kgo.Record, descriptor protoreflect.MessageDescriptor, partner string) (Delivery, error) {
	if header(record, "ce_specversion") != "1.0" || header(record, "ce_id") == "" {
		return Delivery{}, errors.New("not a CloudEvents 1.0 record")
	}
	if kind := header(record, "ce_type"); kind != deliveryType {
		return Delivery{}, fmt.Errorf("a %q, not a delivery", kind)
	}
	message := dynamicpb.NewMessage(descriptor)
	if err := proto.Unmarshal(record.Value, message); err != nil {
		return Delivery{}, fmt.Errorf("undecodable value: %w", err)
	}
	if addressee := text(message, "partner"); addressee != partner {
		return Delivery{}, errors.New("addressed to another partner")
	}
	fields := descriptor.Fields()
	referral := message.Get(fields.ByName("referral")).Message()
	priority := fields.ByName("priority")
	level := priority.Enum().Values().ByNumber(message.Get(priority).Enum())
	name := ""
	if level != nil {
		name = string(level.Name())
	}
	return Delivery{
		DeliveryID: text(message, "delivery_id"),
		ReferralID: text(referral, "referral_id"),
		Partner:    partner,
		Priority:   name,
		EventID:    header(record, "ce_id"),
	}, nil
}

func run(descriptors, group string, maxDeliveries int, idle time.Duration) error {
	descriptor, err := deliveryDescriptor(descriptors)
	if err != nil {
		return err
	}
	settings := map[string]string{}
	for _, name := range []string{
		"KAFKA_BOOTSTRAP_SERVERS", "CTROUTE_PARTNER_ID",
		"CTROUTE_KAFKA_SASL_USERNAME", "CTROUTE_KAFKA_SASL_PASSWORD",
	} {
		if settings[name], err = env(name); err != nil {
			return err
		}
	}
	partner := settings["CTROUTE_PARTNER_ID"]
	options := []kgo.Opt{
		kgo.SeedBrokers(strings.Split(settings["KAFKA_BOOTSTRAP_SERVERS"], ",")...),
		kgo.ConsumerGroup("partner." + partner + "." + group),
		kgo.ConsumeTopics("partner." + partner + ".inbox"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
		// The router delivers in Kafka transactions: only committed deliveries may be read
		// (a batch it aborted after a crash is routed again).
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.SASL(scram.Auth{
			User: settings["CTROUTE_KAFKA_SASL_USERNAME"],
			Pass: settings["CTROUTE_KAFKA_SASL_PASSWORD"],
		}.AsSha512Mechanism()),
	}
	if os.Getenv("CTROUTE_KAFKA_SECURITY_PROTOCOL") != "SASL_PLAINTEXT" {
		options = append(options, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	client, err := kgo.NewClient(options...)
	if err != nil {
		return err
	}
	defer client.Close()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	out := json.NewEncoder(os.Stdout)
	handled := 0
	lastDelivery := time.Now()
	for maxDeliveries == 0 || handled < maxDeliveries {
		pollCtx, cancel := context.WithTimeout(ctx, time.Second)
		fetches := client.PollFetches(pollCtx)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		for _, fetchErr := range fetches.Errors() {
			if !errors.Is(fetchErr.Err, context.DeadlineExceeded) {
				return fmt.Errorf("fetching %s: %w", fetchErr.Topic, fetchErr.Err)
			}
		}
		var done []*kgo.Record
		fetches.EachRecord(func(record *kgo.Record) {
			if maxDeliveries != 0 && handled >= maxDeliveries {
				return
			}
			delivery, err := decode(record, descriptor, partner)
			if err != nil {
				fmt.Fprintf(os.Stderr, "skipping %s[%d]@%d: %v\n", record.Topic, record.Partition, record.Offset, err)
			} else if err := out.Encode(delivery); err == nil {
				handled++
				lastDelivery = time.Now()
			}
			done = append(done, record)
		})
		if len(done) > 0 {
			if err := client.CommitRecords(ctx, done...); err != nil {
				return fmt.Errorf("committing: %w", err)
			}
		}
		if idle > 0 && time.Since(lastDelivery) > idle {
			return nil
		}
	}
	return nil
}
