#!/bin/sh
# An exec-mode function: one process per record (proto/SPEC.md section 13).
# The value arrives on stdin, the record's metadata in CULVERT_* variables,
# and whatever the script prints is the output value.
#
#   exit 0 with output   one output record
#   exit 0, no output    the record is consumed (here: a value "skip")
#   exit 75              retryable failure (here: header x-busy: yes)
#   any other exit       permanent failure (here: an empty value)
set -eu
value=$(cat)
if [ -z "$value" ]; then
	echo "stamp: empty value" >&2
	exit 1
fi
if [ "$value" = "skip" ]; then
	exit 0
fi
# The header x-busy is in CULVERT_HEADER_x_2Dbusy (section 13.1).
if [ "${CULVERT_HEADER_x_2Dbusy:-}" = "yes" ]; then
	echo "stamp: busy, try again later" >&2
	exit 75
fi
printf '%s [subject=%s key=%s id=%s]' "$value" "${CULVERT_SUBJECT:-}" "${CULVERT_KEY:-}" "$CULVERT_RECORD_ID"
