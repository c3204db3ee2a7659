#!/usr/bin/python3
"""The smallest Culvert function: every record passes through unchanged."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import culvert  # noqa: E402


def handle(record, batch):
    return record


culvert.run(handle, agent="passthrough-python/1")
