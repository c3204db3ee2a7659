#!/usr/bin/python3
"""The smallest Culvert function: every record passes through unchanged.

It answers with culvert.unchanged(), so that with a host offering the
protocol's "unchanged" capability, as Culvert's does, the records are not
sent back. With --emit it returns each record instead, sending it back as
SDKs without the capability do (for comparisons, e.g. bench/sdkhop)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import culvert  # noqa: E402


def handle(record, batch):
    return culvert.unchanged()


def handle_emit(record, batch):
    return record


if "--emit" in sys.argv[1:]:
    culvert.run(handle_emit, agent="passthrough-python/1")
else:
    culvert.run(handle, agent="passthrough-python/1")
