#!/bin/sh
# An exec-mode function: one process per record. The value arrives on stdin;
# metadata arrives in CULVERT_* variables; stdout becomes the output value.
id=$(jq -r '.id // "?"')
printf 'order %s seen on %s (record %s)\n' "$id" "$CULVERT_SUBJECT" "$CULVERT_RECORD_ID"
