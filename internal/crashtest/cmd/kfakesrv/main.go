// Command kfakesrv runs a franz-go kfake Kafka cluster on 127.0.0.1 in its
// own process, so that crash tests can kill the Culvert process (or this
// one) and keep or restart the broker independently. With -dir the cluster
// persists its topics, records and group offsets there and reloads them on
// the next start. It prints "BROKERS host:port,..." once it listens and runs
// until it is killed or gets SIGINT/SIGTERM.
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

func main() {
	ports := flag.String("ports", "", "comma-separated listen ports, one per broker (default: 3 random ports)")
	dir := flag.String("dir", "", "data directory (persisted state; empty: in memory)")
	topics := flag.String("topics", "", "comma-separated topics to create")
	partitions := flag.Int("partitions", 3, "partitions of each created topic")
	minSession := flag.Duration("min-session-timeout", time.Second, "smallest group session timeout the cluster accepts")
	flag.Parse()
	if err := run(*ports, *dir, *topics, *partitions, *minSession); err != nil {
		slog.Error("kfakesrv", "err", err)
		os.Exit(1)
	}
}

func run(ports, dir, topics string, partitions int, minSession time.Duration) error {
	opts := []kfake.Opt{kfake.NumBrokers(3), kfake.GroupMinSessionTimeout(minSession)}
	if ports != "" {
		var ps []int
		for _, p := range strings.Split(ports, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil {
				return fmt.Errorf("-ports %q: %w", ports, err)
			}
			ps = append(ps, n)
		}
		opts = append(opts, kfake.Ports(ps...), kfake.NumBrokers(len(ps)))
	}
	if dir != "" {
		opts = append(opts, kfake.DataDir(dir))
	}
	if topics != "" {
		opts = append(opts, kfake.SeedTopics(int32(partitions), strings.Split(topics, ",")...))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("starting kfake: %w", err)
	}
	defer c.Close()
	fmt.Printf("BROKERS %s\n", strings.Join(c.ListenAddrs(), ","))
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
	return nil
}
