// Package file is the file connector: a Source reading records from a file
// or from a reader (stdin), and a Sink appending them to a file or writing
// them to a writer (stdout). It owns the three on-disk formats (Format*)
// and nothing else; it never follows a growing file and never seeks.
//
// A file cannot redeliver: Ack only frees an in-flight slot, and Nak logs
// and drops the settlement. Run returns nil at end of input, once every
// record has been handed to the Handler (settlements may still follow).
package file

import (
	"fmt"
)

// Connector names set in Record.Source.Connector.
const (
	ConnectorFile  = "file"
	ConnectorStdin = "stdin"
)

// Formats.
const (
	// FormatNDJSON is one JSON object per line, the protojson form of a
	// Record. On input, a line that is not a Record-shaped JSON object (any
	// other JSON value, an object with unknown fields, or text) becomes the
	// value as it is; blank lines are skipped.
	FormatNDJSON = "ndjson"
	// FormatDelimited is a sequence of varint length-prefixed protobuf
	// Records (google.golang.org/protobuf/encoding/protodelim).
	FormatDelimited = "delimited"
	// FormatLines: on input, each line (without its line ending) is a
	// value; on output, the value followed by "\n".
	FormatLines = "lines"
)

// DefaultMaxRecordSize bounds one line or one delimited record.
const DefaultMaxRecordSize = 4 << 20

func checkFormat(f string) (string, error) {
	switch f {
	case "":
		return FormatNDJSON, nil
	case FormatNDJSON, FormatDelimited, FormatLines:
		return f, nil
	}
	return "", fmt.Errorf("unknown format %q (want ndjson, delimited or lines)", f)
}
