// Package pipelines owns pipeline files: decoding them, applying defaults
// and validating them. It never starts anything: no connection is made, no
// function is run and no file other than the pipeline itself is read. The
// engine takes the *Pipeline it returns as a complete, checked description.
//
// Decoding is strict and positional. The YAML is parsed into a node tree
// and walked against the types in types.go, so that every problem (an
// unknown field, a wrong type, a dangling reference, a bad subject) is
// reported with its file, line, column and field path, e.g.
//
//	pipeline.yaml:12:7: functions.enrich.batch: unknown field "max_wai"; did you mean max_wait?
//
// All problems in a file are reported at once, as Errors sorted by
// position.
//
// Scalars may use environment variables: ${VAR}, ${VAR:-default}, and $$
// for a literal $. They are expanded before a value is converted, so
// "size: ${BATCH}" works.
//
// Checks that need the router (CEL expressions, subject templates) are
// plugged in through a Checker; Parse and Load skip them. README.md in this
// directory is the reference of the file format; schema.json is its JSON
// Schema, generated from the types.
package pipelines

//go:generate go run ./internal/schemagen -o schema.json
