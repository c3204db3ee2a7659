// Package pipetest owns pipeline test cases: the test file that sits
// beside a pipeline (PIPELINE.test.yaml), its strict decoding, running each
// case through the real pipeline with in-memory connectors, matching what
// came out against the expectations, and the go-test-like report. Functions
// run for real, through the same runner (and so the same confinement) as
// `culvert run`; a case may replace a function by a mock, which is itself a
// real framed-protocol process (see mock.go).
//
// It never talks to a broker and never changes the pipeline file; --update
// rewrites only golden files.
package pipetest

import (
	"github.com/culvert-dev/culvert/pipelines"
)

// File is a decoded test file.
type File struct {
	// Path of the test file.
	Path string
	// Pipeline is the pipeline file the cases run against (default: the
	// file the test file is named after).
	Pipeline string
	// Protos are .proto files (relative to the test file) whose messages
	// proto matchers and proto inputs name.
	Protos []string
	Cases  []*Case
}

// Case is one test case.
type Case struct {
	Name string
	Pos  pipelines.Pos
	// Input is the pipeline input the records arrive at.
	Input string
	// Records are inline input records, then those of Tap.
	Records []*RecordSpec
	Tap     string
	// Mocks replace functions by name.
	Mocks map[string]*Mock
	// Expect holds the expectations per output.
	Expect map[string]*Expect
	// Ignore lists outputs not checked.
	Ignore []string
	// GivenBack is the number of input records expected to fail without a
	// dead-letter output (given back to the source). Default 0.
	GivenBack int
}

// RecordSpec builds one record (an input, or a mock's output).
type RecordSpec struct {
	Pos         pipelines.Pos
	ID          string
	Key         *string
	Value       *string
	JSON        any
	Proto       *ProtoSpec
	Headers     []Header
	ContentType string
	Subject     string
	Partition   string
	// To is the route output a mock's output is aimed at; "" for all.
	To string
}

// Header is one record header.
type Header struct{ Name, Value string }

// ProtoSpec is a protobuf message given by its type and fields (protojson
// names or original names).
type ProtoSpec struct {
	Message string
	Fields  any
}

// Expect is what one output must receive.
type Expect struct {
	Pos pipelines.Pos
	// Count, when set, is the exact number of records.
	Count *int
	// Records are matched in order against the output's records (ordered
	// by the input record they derive from); their number is the count
	// unless Count is set.
	Records []*Matcher
	// Golden names a file (relative to the test file) holding the exact
	// records, as NDJSON; --update rewrites it.
	Golden string
}

// Matcher checks one record; every field given must hold.
type Matcher struct {
	Pos         pipelines.Pos `json:"-"`
	Value       *string       `json:"value,omitempty"`
	JSON        any           `json:"json,omitempty"`
	Regex       string        `json:"regex,omitempty"`
	Proto       *ProtoSpec    `json:"-"`
	Key         *string       `json:"key,omitempty"`
	Headers     []Header      `json:"headers,omitempty"`
	Subject     *string       `json:"subject,omitempty"`
	ContentType *string       `json:"content_type,omitempty"`
	Error       *ErrorMatch   `json:"error,omitempty"`
}

// ErrorMatch checks the culvert-error-* headers of a dead-lettered record.
type ErrorMatch struct {
	Class    string `json:"class,omitempty"`
	Function string `json:"function,omitempty"`
	Route    string `json:"route,omitempty"`
	// Message is a regular expression.
	Message  string `json:"message,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
}

// Mock replaces one function: the first rule whose When matches an input
// record decides; a record no rule matches fails.
type Mock struct {
	Pos   pipelines.Pos `json:"-"`
	Rules []*MockRule   `json:"rules"`
}

// MockRule is one behaviour of a mock.
type MockRule struct {
	When *Matcher `json:"when,omitempty"`
	// Emit lists the outputs; none (and no Fail) filters the record out.
	// Passthrough emits the input unchanged.
	Emit        []*RecordSpec `json:"-"`
	EmitBuilt   []mockOutput  `json:"emit,omitempty"`
	Passthrough bool          `json:"passthrough,omitempty"`
	// Fail fails the record with this message; Retryable lets the engine
	// retry it.
	Fail      string `json:"fail,omitempty"`
	Retryable bool   `json:"retryable,omitempty"`
}

// mockOutput is a built output record, as the mock process receives it.
type mockOutput struct {
	Record []byte `json:"record"` // protobuf culvert.v1.Record
	To     string `json:"to,omitempty"`
}
