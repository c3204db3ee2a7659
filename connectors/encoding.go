package connectors

import "fmt"

// Encoding selects how a sink writes a Record into a broker message: the
// protobuf Record as the body, or the record's value as the body with its
// metadata in the broker's own fields (headers, key, timestamp). Every
// connector that offers the choice uses this type.
type Encoding uint8

const (
	// EncodingRecord: body = the protobuf Record (the default).
	EncodingRecord Encoding = iota
	// EncodingValue: body = the record's value, metadata in the message's
	// headers, key and timestamp.
	EncodingValue
)

// ParseEncoding parses "record" (or "") and "value".
func ParseEncoding(s string) (Encoding, error) {
	switch s {
	case "", "record":
		return EncodingRecord, nil
	case "value":
		return EncodingValue, nil
	}
	return 0, fmt.Errorf("unknown encoding %q (want record or value)", s)
}

func (e Encoding) String() string {
	if e == EncodingValue {
		return "value"
	}
	return "record"
}
