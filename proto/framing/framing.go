// Package framing reads and writes the frames of Culvert's function
// protocol (proto/SPEC.md, "Framing"): protobuf messages, each preceded by
// its length as a varint, whose body always starts with a two-byte oneof
// tag for a field numbered 16 to 31.
//
// The package owns the byte-level rules and the detection of stray output:
// a frame that breaks them is reported with the offending bytes at once,
// never resynchronised or silently misparsed. It knows nothing about what
// the messages mean; the host (internal/fnhost) and the SDKs do.
package framing

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// DefaultMaxFrame is the largest frame body accepted unless the handshake
// says otherwise: 4 MiB, protodelim's default.
const DefaultMaxFrame = 4 << 20

// Hint is appended to every violation report.
const Hint = "did the function print to stdout? Frames must be varint-length-delimited culvert.v1 messages (proto/SPEC.md); write logs to stderr"

// ViolationError reports bytes on the stream that are not a valid frame.
type ViolationError struct {
	// Offset of the first offending byte in the stream.
	Offset int64
	// Reason says which rule the bytes broke.
	Reason string
	// Bytes holds the offending bytes: those read for the frame so far plus
	// what was already buffered behind them (at most 64 bytes in all).
	Bytes []byte
}

func (e *ViolationError) Error() string {
	return fmt.Sprintf("protocol violation at byte %d: %s; got %s; %s", e.Offset, e.Reason, Quote(e.Bytes), Hint)
}

// Quote renders bytes for a log line: as a Go string and as hex.
func Quote(b []byte) string {
	var sb strings.Builder
	sb.WriteString(strconv.Quote(string(b)))
	sb.WriteString(" (hex")
	for _, c := range b {
		fmt.Fprintf(&sb, " %02x", c)
	}
	sb.WriteString(")")
	return sb.String()
}

// Reader reads frames.
type Reader struct {
	r      *bufio.Reader
	max    int
	off    int64
	buf    []byte
	header [7]byte // varint (<=5) + tag (2)
}

// NewReader reads frames of at most maxFrame body bytes from r.
func NewReader(r io.Reader, maxFrame int) *Reader {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Reader{r: bufio.NewReaderSize(r, 64<<10), max: maxFrame}
}

// SetMax changes the largest accepted body, e.g. after a handshake; 0 or
// less means DefaultMaxFrame.
func (r *Reader) SetMax(maxFrame int) {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	r.max = maxFrame
}

// Offset is the number of bytes consumed so far.
func (r *Reader) Offset() int64 { return r.off }

// Next returns the next frame body. The slice is valid until the next call.
// At a clean end of stream, between frames, it returns io.EOF. A stream that
// ends inside a frame returns io.ErrUnexpectedEOF. A frame that breaks the
// rules returns a *ViolationError.
func (r *Reader) Next() ([]byte, error) {
	start := r.off
	h := r.header[:0]
	var n uint64
	for i := 0; ; i++ {
		c, err := r.r.ReadByte()
		if err != nil {
			if err == io.EOF && i == 0 {
				return nil, io.EOF
			}
			if err == io.EOF {
				return nil, fmt.Errorf("stream ended inside a frame length at byte %d: %w", r.off, io.ErrUnexpectedEOF)
			}
			return nil, err
		}
		r.off++
		h = append(h, c)
		n |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			break
		}
		if i == 4 {
			return nil, r.violation(start, h, "frame length is not a varint of at most 5 bytes")
		}
	}
	if n > uint64(r.max) {
		return nil, r.violation(start, h, fmt.Sprintf("frame length %d exceeds the limit of %d bytes", n, r.max))
	}
	if n < 2 {
		return nil, r.violation(start, h, fmt.Sprintf("frame length %d is too short for a message tag", n))
	}
	for vlen := len(h); len(h) < vlen+2; {
		c, err := r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				return nil, r.violation(start, h, "stream ended inside a frame")
			}
			return nil, err
		}
		r.off++
		h = append(h, c)
	}
	t0, t1 := h[len(h)-2], h[len(h)-1]
	if !ValidTag(t0, t1) {
		return nil, r.violation(start, h, "frame body does not start with a culvert.v1 message tag (fields 16-31, length-delimited)")
	}
	size := int(n)
	if cap(r.buf) < size {
		r.buf = make([]byte, size)
	}
	b := r.buf[:size]
	b[0], b[1] = t0, t1
	if _, err := io.ReadFull(r.r, b[2:]); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("stream ended inside a %d-byte frame at byte %d: %w", size, start, io.ErrUnexpectedEOF)
		}
		return nil, err
	}
	r.off += int64(size - 2)
	return b, nil
}

// violation builds the error, adding up to 64 bytes that are already
// buffered, without blocking.
func (r *Reader) violation(start int64, got []byte, reason string) error {
	b := append([]byte(nil), got...)
	if extra := min(r.r.Buffered(), 64-len(b)); extra > 0 {
		more, _ := r.r.Peek(extra)
		b = append(b, more...)
	}
	return &ViolationError{Offset: start, Reason: reason, Bytes: b}
}

// ValidTag reports whether two bytes are the tag of a length-delimited field
// numbered 16 to 31: the first byte of every frame body.
func ValidTag(b0, b1 byte) bool {
	if b0 < 0x80 || b1 != 0x01 {
		return false
	}
	tag := uint64(b0&0x7f) | uint64(b1)<<7
	return protowire.Type(tag&7) == protowire.BytesType && tag>>3 >= 16 && tag>>3 <= 31
}

// vtMessage is implemented by messages with vtprotobuf-generated codecs
// (the *_vtproto.pb.go files of culvert.v1), which encode the same bytes as
// package proto without reflection.
type vtMessage interface {
	SizeVT() int
	MarshalToSizedBufferVT([]byte) (int, error)
}

// Append appends m as one frame to dst. It fails if the body would exceed
// maxFrame bytes (0 means DefaultMaxFrame).
//
// Messages with vtprotobuf codecs (SizeVT and MarshalToSizedBufferVT) are
// encoded by those, others by package proto. The vtprotobuf encoders do not
// check that strings are valid UTF-8, as package proto does: callers that
// need the check make it before.
func Append(dst []byte, m proto.Message, maxFrame int) ([]byte, error) {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	if vm, ok := m.(vtMessage); ok {
		return appendVT(dst, vm, maxFrame)
	}
	size := proto.MarshalOptions{}.Size(m)
	if size > maxFrame {
		return dst, fmt.Errorf("frame of %d bytes exceeds the limit of %d bytes", size, maxFrame)
	}
	dst = protowire.AppendVarint(dst, uint64(size))
	return proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(dst, m)
}

func appendVT(dst []byte, m vtMessage, maxFrame int) ([]byte, error) {
	size := m.SizeVT()
	if size > maxFrame {
		return dst, fmt.Errorf("frame of %d bytes exceeds the limit of %d bytes", size, maxFrame)
	}
	b := protowire.AppendVarint(dst, uint64(size))
	start := len(b)
	b = slices.Grow(b, size)[:start+size]
	n, err := m.MarshalToSizedBufferVT(b[start:])
	if err != nil {
		return dst, err
	}
	if n != size {
		return dst, fmt.Errorf("framing: message encoded to %d bytes, its size said %d", n, size)
	}
	return b, nil
}

// Writer writes frames with one write call each. It is not safe for
// concurrent use.
type Writer struct {
	w   io.Writer
	max int
	buf []byte
}

// NewWriter writes frames of at most maxFrame body bytes to w.
func NewWriter(w io.Writer, maxFrame int) *Writer {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	return &Writer{w: w, max: maxFrame}
}

// SetMax changes the largest body written; 0 or less means
// DefaultMaxFrame.
func (w *Writer) SetMax(maxFrame int) {
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	w.max = maxFrame
}

// Write marshals m and writes it as one frame.
func (w *Writer) Write(m proto.Message) error {
	b, err := Append(w.buf[:0], m, w.max)
	if err != nil {
		return err
	}
	w.buf = b
	if cap(w.buf) > 16<<20 {
		w.buf = nil // do not pin a huge buffer after one large frame
	}
	_, err = w.w.Write(b)
	return err
}
