// Command kfake runs a franz-go kfake cluster as its own process, on
// 127.0.0.1, so tests can kill the broker (or Culvert) and start it again:
//
//	kfake -brokers 3 -ports 0,0,0 -data-dir DIR [-sync] [-min-session-timeout 1s] [-topic name:partitions]...
//
// It prints one "listening HOST:PORT" line per broker, then "ready", and
// closes the cluster cleanly (state saved to -data-dir) on SIGTERM or
// SIGINT. With -sync every write is fsynced, so even SIGKILL loses nothing
// that was acknowledged. For tests only (kafkatest.StartProcess and the
// crash tests of internal/crashtest).
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/twmb/franz-go/pkg/kfake"
)

type topics []string

func (t *topics) String() string     { return strings.Join(*t, ",") }
func (t *topics) Set(s string) error { *t = append(*t, s); return nil }

func main() {
	brokers := flag.Int("brokers", 3, "brokers in the cluster")
	ports := flag.String("ports", "", "comma-separated ports, one per broker (0: any); empty: any")
	dataDir := flag.String("data-dir", "", "persistence directory: the cluster's state survives restarts")
	sync := flag.Bool("sync", false, "fsync every write")
	minSession := flag.Duration("min-session-timeout", 0, "smallest group session timeout the cluster accepts (0: kfake's default)")
	var seed topics
	flag.Var(&seed, "topic", "name:partitions to create at start (repeatable)")
	flag.Parse()

	opts := []kfake.Opt{kfake.NumBrokers(*brokers)}
	if *ports != "" {
		var ps []int
		for _, p := range strings.Split(*ports, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(p))
			if err != nil {
				fail(fmt.Errorf("bad port %q", p))
			}
			ps = append(ps, n)
		}
		opts = append(opts, kfake.Ports(ps...))
	}
	if *dataDir != "" {
		opts = append(opts, kfake.DataDir(*dataDir))
	}
	if *sync {
		opts = append(opts, kfake.SyncWrites())
	}
	if *minSession > 0 {
		opts = append(opts, kfake.GroupMinSessionTimeout(*minSession))
	}
	for _, t := range seed {
		name, parts, ok := strings.Cut(t, ":")
		n, err := strconv.Atoi(parts)
		if !ok || err != nil || n <= 0 {
			fail(fmt.Errorf("bad -topic %q: want name:partitions", t))
		}
		opts = append(opts, kfake.SeedTopics(int32(n), name))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		fail(err)
	}
	for _, a := range c.ListenAddrs() {
		fmt.Println("listening", a)
	}
	fmt.Println("ready")
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, os.Interrupt)
	<-sigs
	c.Close()
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "kfake:", err)
	os.Exit(2)
}
