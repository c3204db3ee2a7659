package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protojson"

	"fmt"
	culvertv1 "github.com/culvert-dev/culvert/proto/culvert/v1"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"

	"github.com/culvert-dev/culvert/connectors/natsmsg"
)

func newSubscribeCmd(g *globals) *cobra.Command {
	var url string
	var count int
	var timeout time.Duration
	var raw bool
	cmd := &cobra.Command{
		Use:   "subscribe SUBJECT",
		Short: "Print the records published on a subject, decoded from protobuf to JSON",
		Long: `Print the records published on a subject (wildcards allowed), one JSON
object per line. Messages carrying a Culvert Record are decoded; others are
shown as raw records. With a JetStream stream capturing the subject, stored
messages are replayed from the start.`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
			if err != nil {
				return fmt.Errorf("connecting to %s: %w (is `culvert run` running?)", url, err)
			}
			defer nc.Close()
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			msgs := make(chan *nats.Msg, 1024)
			var sub *nats.Subscription
			if js, err := nc.JetStream(); err == nil {
				if stream, err := js.StreamNameBySubject(args[0]); err == nil && stream != "" {
					sub, err = js.ChanSubscribe(args[0], msgs, nats.DeliverAll(), nats.AckNone(), nats.BindStream(stream))
					if err != nil {
						return fmt.Errorf("subscribing to stream %s: %w", stream, err)
					}
				}
			}
			if sub == nil {
				if sub, err = nc.ChanSubscribe(args[0], msgs); err != nil {
					return err
				}
			}
			defer sub.Unsubscribe()
			out := cmd.OutOrStdout()
			for n := 0; count <= 0 || n < count; n++ {
				select {
				case m := <-msgs:
					rec, err := natsmsg.Decode(m.Header, m.Data)
					if err != nil {
						fmt.Fprintf(cmd.ErrOrStderr(), "%s: undecodable record: %v\n", m.Subject, err)
						continue
					}
					fmt.Fprintln(out, render(m.Subject, rec, raw))
				case <-ctx.Done():
					if count > 0 && n < count {
						return fmt.Errorf("received %d of %d records before the timeout", n, count)
					}
					return nil
				}
			}
			return nil
		},
	}
	serverFlag(cmd, &url)
	cmd.Flags().IntVarP(&count, "count", "n", 0, "exit after this many records (0: run until interrupted)")
	cmd.Flags().DurationVar(&timeout, "timeout", 0, "give up after this long")
	cmd.Flags().BoolVar(&raw, "json", false, "print each record as protojson (bytes in base64) instead of readable text")
	return cmd
}

// render shows a record for people: the subject, id and key, the headers,
// and the value as text when it is UTF-8 (base64 otherwise). With raw it is
// the protojson form, for machines.
func render(subject string, rec *culvertv1.Record, raw bool) string {
	if raw {
		b, _ := protojson.Marshal(rec)
		return subject + " " + string(b)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s id=%s", subject, rec.Id)
	if len(rec.Key) > 0 {
		fmt.Fprintf(&b, " key=%s", text(rec.Key))
	}
	for _, h := range rec.Headers {
		fmt.Fprintf(&b, " %s=%s", h.Name, text(h.Value))
	}
	fmt.Fprintf(&b, "\n    %s", text(bytes.TrimRight(rec.Value, "\n")))
	return b.String()
}

func text(v []byte) string {
	if utf8.Valid(v) {
		return string(v)
	}
	return "base64:" + base64.StdEncoding.EncodeToString(v)
}
