package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/spf13/cobra"
)

func serverFlag(cmd *cobra.Command, url *string) {
	def := os.Getenv("NATS_URL")
	if def == "" {
		def = "nats://127.0.0.1:4222"
	}
	cmd.Flags().StringVarP(url, "server", "s", def, "NATS server URL (default $NATS_URL, else the embedded server's default address)")
}

func newPublishCmd(g *globals) *cobra.Command {
	var url, path, key string
	var headers []string
	cmd := &cobra.Command{
		Use:   "publish SUBJECT [--file FILE]",
		Short: "Publish each line of a file (or stdin) as one message, for feeding pipelines by hand",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			hdr := nats.Header{}
			for _, h := range headers {
				name, value, ok := cut(h)
				if !ok {
					return usageError{fmt.Errorf("--header %q: want NAME=VALUE", h)}
				}
				hdr.Add(name, value)
			}
			nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
			if err != nil {
				return fmt.Errorf("connecting to %s: %w (is `culvert run` running?)", url, err)
			}
			defer nc.Close()
			var in io.Reader = cmd.InOrStdin()
			if path != "" && path != "-" {
				f, err := os.Open(path)
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			sc := bufio.NewScanner(in)
			sc.Buffer(make([]byte, 1<<20), 4<<20)
			n := 0
			for sc.Scan() {
				m := nats.NewMsg(args[0])
				m.Data = append([]byte(nil), sc.Bytes()...)
				for k, v := range hdr {
					m.Header[k] = v
				}
				if key != "" {
					m.Header.Set("Culvert-Key", key)
				}
				// Publish through JetStream when a stream captures the
				// subject, so the message is stored before we count it.
				if _, err := nc.RequestMsg(m, 5*time.Second); err != nil {
					if !errors.Is(err, nats.ErrNoResponders) {
						return fmt.Errorf("publishing line %d to %s: %w", n+1, args[0], err)
					}
					if err := nc.PublishMsg(m); err != nil {
						return err
					}
				}
				n++
			}
			if err := sc.Err(); err != nil {
				return err
			}
			if err := nc.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "published %d messages to %s\n", n, args[0])
			return nil
		},
	}
	serverFlag(cmd, &url)
	cmd.Flags().StringVarP(&path, "file", "f", "", "file with one message per line (default stdin)")
	cmd.Flags().StringVarP(&key, "key", "k", "", "record key for every message (header Culvert-Key)")
	cmd.Flags().StringArrayVarP(&headers, "header", "H", nil, "header NAME=VALUE (repeatable)")
	return cmd
}

func cut(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == '=' {
			return s[:i], s[i+1:], i > 0
		}
	}
	return "", "", false
}
