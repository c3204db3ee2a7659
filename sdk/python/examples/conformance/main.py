#!/usr/bin/python3
"""Echo function that honours the conformance convention (proto/SPEC.md,
appendix A), so that `culvert fn conform -- /usr/bin/python3 main.py` can
drive every rule: with CULVERT_CONFORMANCE=1 in its environment, a record's
`culvert-conformance` header asks it to echo, emit N copies, drop, fail,
fail retryably or print to stdout. Every other record is echoed, with
culvert.unchanged(): a host offering the "unchanged" capability (the kit's
rule of that name checks it) gets Output.unchanged, any other the record.

With --batch it serves the same answers through the per-batch API
(culvert.run_batch), failing single records by putting an exception in
their slot, so that the kit checks that API too."""
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import culvert  # noqa: E402

HEADER = "culvert-conformance"
ENABLED = os.environ.get("CULVERT_CONFORMANCE") == "1"
EMIT = re.compile(r"emit=(0|[1-9][0-9]{0,3})")


def directive(record):
    for h in record.headers:
        if h.name == HEADER:
            return h.value
    return None


def handle(record, batch):
    d = directive(record) if ENABLED else None
    if d is None or d == b"echo":
        return culvert.unchanged()
    if d == b"drop":
        return None
    if d == b"fail":
        raise ValueError("failure requested by the culvert-conformance header")
    if d == b"retry":
        raise culvert.RetryableError("failure requested by the culvert-conformance header")
    m = EMIT.fullmatch(d.decode("ascii", "replace"))
    if m and int(m.group(1)) <= 1000:
        copy = culvert.Record()
        copy.CopyFrom(record)
        copy.ClearField("source")
        return [copy] * int(m.group(1))
    if d.startswith(b"stdout=") and all(0x20 <= c <= 0x7E for c in d[7:]):
        print(d[7:].decode())
        return culvert.unchanged()
    raise ValueError(f"{HEADER}: unknown directive {d!r} (echo, emit=N, drop, fail, retry, stdout=TEXT)")


def handle_batch(records, batch):
    results = []
    for record in records:
        try:
            results.append(handle(record, batch))
        except Exception as e:  # noqa: BLE001 - the failure of this record only
            results.append(e)
    return results


if "--batch" in sys.argv[1:]:
    culvert.run_batch(handle_batch, agent="conformance-python-batch/1")
else:
    culvert.run(handle, agent="conformance-python/1")
