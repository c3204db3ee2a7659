// Package router decides which routes a record goes to and renders output
// subjects. It never runs functions and never touches brokers.
//
// Everything is compiled once, at load time, and the per-record paths are
// built for a hot loop of hundreds of thousands of records per second:
//
//   - [New] compiles a list of [Spec] (subject patterns, header conditions,
//     CEL expressions) into a [Router]. [Router.Match] appends the indices of
//     every matching route to a caller-owned slice; subject and header
//     conditions do not allocate, and CEL variables are resolved lazily from
//     the record through a pooled activation (the value is parsed as JSON at
//     most once per record, and only when an expression reads `json`).
//   - [ParseTemplate] compiles an output subject template. Constant templates
//     execute without allocating; simple ones ("out.{{ .Source.Subject }}")
//     bypass text/template entirely.
//   - [CheckCEL], [CheckSubjectPattern] and [ParseTemplate] let the pipeline
//     loader report errors at load time with messages a user can act on.
//
// A Router and a Template are safe for concurrent use. They must not be
// copied after creation.
package router
