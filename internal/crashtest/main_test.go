package crashtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/culvert-dev/culvert/internal/testbin"
)

var bins string

func TestMain(m *testing.M) {
	testbin.Main(m, &bins,
		"github.com/culvert-dev/culvert/cmd/culvert",
		"github.com/culvert-dev/culvert/examples/functions/passthrough",
		"github.com/culvert-dev/culvert/examples/functions/faulty",
		"github.com/culvert-dev/culvert/connectors/kafka/kafkatest/kfake")
}

// run is one test's working directory and the log all its processes write.
type run struct {
	dir string
	log *os.File
}

func newRun(t *testing.T) *run {
	t.Helper()
	dir := t.TempDir()
	if keep := os.Getenv("CULVERT_CRASH_DIR"); keep != "" { // keep the logs and data for a look afterwards
		dir = filepath.Join(keep, t.Name())
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	log, err := os.Create(filepath.Join(dir, "processes.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { log.Close() })
	return &run{dir: dir, log: log}
}

func (r *run) culvert(t *testing.T, pipeline string) *Proc {
	t.Helper()
	return Start(t, r.log, filepath.Join(bins, "culvert"), "run", pipeline)
}

func (r *run) tail() string { return Tail(r.log.Name(), 6000) }

// records is $CULVERT_CRASH_RECORDS: 100000 for the documented full run;
// the default keeps each test well under a minute under -race on two
// cores.
func records() int { return EnvInt("CULVERT_CRASH_RECORDS", 3000) }

func killCount() int { return EnvInt("CULVERT_CRASH_KILLS", 3) }

const keys = 100
