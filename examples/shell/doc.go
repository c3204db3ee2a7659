// Package shell holds Culvert functions that need no SDK: jq, awk and a
// plain shell script in lines mode, and jq and a plain shell script in exec
// mode (proto/SPEC.md sections 12 and 13), each in its own directory with a
// pipeline file that runs it.
// The package itself is only their test.
package shell
