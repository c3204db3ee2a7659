"""Fuzzing harness for the SDK's frame reader and protocol loop, driven by
sdk/python/fuzz_test.go. It reads inputs as 4-byte big-endian lengths and
bytes on stdin; for each it runs culvert.serve over a Hello followed by the
input, checks that every frame written decodes, and answers one line on
stdout: "ok" when the SDK coped (a ProtocolError or a refused handshake
counts), or "bug: <traceback>" for anything else. The Hello offers the
"unchanged" capability to inputs of even length, so that culvert.unchanged()
answers go out both ways."""

import io
import os
import sys
import tempfile
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import culvert  # noqa: E402
from culvert import _framing  # noqa: E402
from culvert.v1 import function_pb2 as fpb  # noqa: E402


def handle(record, batch):
    if record.value == b"f":
        raise culvert.RetryableError("requested")
    if record.value == b"two":
        return [record, culvert.to("named", record)]
    if record.value == b"same":
        return [culvert.unchanged(), culvert.unchanged_to("named")]
    if len(record.value) % 2:
        return culvert.unchanged()
    return record


def one(data, out):
    out.seek(0)
    out.truncate()
    hello = fpb.HostMessage()
    hello.hello.versions.append(1)
    hello.hello.max_frame_bytes = 1 << 16
    if len(data) % 2 == 0:
        hello.hello.capabilities.append("unchanged")
    body = hello.SerializeToString()
    stream = io.BytesIO(_framing.encode_length(len(body)) + body + data)
    try:
        culvert.serve(stream, out.fileno(), culvert.per_record(handle))
    except (culvert.ProtocolError, RuntimeError):
        pass
    out.seek(0)
    written = io.BytesIO(out.read())
    while True:
        b = _framing.read_frame(written, 1 << 20)
        if b is None:
            return
        m = fpb.FunctionMessage()
        m.ParseFromString(b)
        if m.WhichOneof("msg") is None:
            raise AssertionError(f"wrote an empty FunctionMessage: {b.hex()}")


def main():
    stdin, stdout = sys.stdin.buffer, sys.stdout
    sys.stderr = open(os.devnull, "w")  # the SDK logs handler errors
    with tempfile.TemporaryFile() as out:
        while True:
            head = stdin.read(4)
            if len(head) < 4:
                return
            data = stdin.read(int.from_bytes(head, "big"))
            try:
                one(data, out)
                stdout.write("ok\n")
            except Exception:  # noqa: BLE001 - reported to the Go side
                stdout.write("bug: " + traceback.format_exc().replace("\n", "\\n") + "\n")
            stdout.flush()


main()
