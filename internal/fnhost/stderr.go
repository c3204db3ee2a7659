package fnhost

import (
	"bytes"
	"log/slog"
	"sync"
)

const stderrTail = 4 << 10

// logTail is the stderr of an instance: every line is logged, and the last
// 4 KiB are kept for crash reports. Long lines are split, and a function's
// logs never fail a record.
type logTail struct {
	log  *slog.Logger
	mu   sync.Mutex
	line []byte
	tail []byte
}

func newLogTail(log *slog.Logger) *logTail { return &logTail{log: log} }

func (t *logTail) Write(p []byte) (int, error) {
	n := len(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	t.tail = append(t.tail, p...)
	if len(t.tail) > stderrTail {
		t.tail = append(t.tail[:0], t.tail[len(t.tail)-stderrTail:]...)
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			t.line = append(t.line, p...)
			if len(t.line) >= 1024 {
				t.emit()
			}
			break
		}
		t.line = append(t.line, p[:i]...)
		t.emit()
		p = p[i+1:]
	}
	return n, nil
}

func (t *logTail) emit() {
	t.log.Info("function stderr", "line", string(t.line))
	t.line = t.line[:0]
}

// Tail returns the last bytes written, up to 4 KiB.
func (t *logTail) Tail() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.line) > 0 {
		t.emit()
	}
	return string(bytes.TrimRight(t.tail, "\n"))
}
