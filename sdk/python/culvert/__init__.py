"""Culvert SDK for Python: write a framed-mode function as a handler.

It speaks the protocol of proto/SPEC.md on stdin and stdout: the handshake,
one result per batch, per-record failures, keep-alives and shutdown. It runs
on Debian's ``/usr/bin/python3`` with ``python3-protobuf`` (C++ backend).

A function that upper-cases text, drops empty records and fails the rest::

    #!/usr/bin/python3
    import culvert

    def handle(record, batch):
        if not record.value:
            return None                       # consumed: no output
        try:
            text = record.value.decode()
        except UnicodeDecodeError as e:
            raise ValueError("value is not UTF-8") from e   # permanent failure
        record.value = text.upper().encode()
        return record                         # the input, modified: headers kept

    culvert.run(handle, agent="shout/1")

Handlers return ``None`` (no output), a ``Record``, an ``Output`` made by
``culvert.to(name, record)``, ``culvert.unchanged()`` or
``culvert.unchanged_to(name)``, or a list (or any iterable, e.g. a
generator) of those. An exception fails that
record: permanently, unless it is a ``culvert.RetryableError`` (or has a
true ``retryable`` attribute), in which case the host retries the record.

A handler that passes its input on exactly as it came (a filter, a router,
a sampler) returns ``culvert.unchanged()``, or ``culvert.unchanged_to(name)``
for a named route output. When the host offers the protocol's ``unchanged``
capability (proto/SPEC.md, section 10), as Culvert's does, the SDK accepts
it and answers with ``Output.unchanged``: the record is neither encoded nor
written back, and the host uses the one it sent. With another host the SDK
sends the record itself. A handler that changes its record returns the
record instead.

Before any handler, init or shutdown code runs, ``run`` moves the protocol
to private copies of fds 0 and 1, points fd 1 (and ``sys.stdout``) at stderr
and fd 0 at /dev/null: a stray ``print``, a C library or a child process can
no longer corrupt the frames.
"""

import fcntl
import os
import sys
import time
import traceback

from culvert import _framing
from culvert.v1 import function_pb2 as _fpb
from culvert.v1 import record_pb2 as _rpb

__all__ = [
    "Batch", "DEFAULT_AGENT", "Header", "InitContext", "Output", "Position",
    "ProtocolError", "Record", "RetryableError", "VERSION", "run",
    "run_batch", "serve", "to", "unchanged", "unchanged_to",
]

Record = _rpb.Record
Header = _rpb.Header
Position = _rpb.Position
InitContext = _fpb.InitContext
ProtocolError = _framing.ProtocolError

#: The protocol version this SDK speaks.
VERSION = 1
#: The Ready.agent sent unless run(agent=...) says otherwise.
DEFAULT_AGENT = "culvert-sdk-python/1"
#: The protocol capability behind unchanged() and unchanged_to().
_CAP_UNCHANGED = "unchanged"


class RetryableError(Exception):
    """Fails a record so that the host retries it with backoff.

    Other exceptions fail a record permanently (it is dead-lettered at
    once): most errors come from the record itself and would fail again.
    Raise this for errors of the outside world (a dependency down, a rate
    limit), e.g. ``raise culvert.RetryableError("db down") from e``.
    """

    retryable = True


class Output:
    """One output of a handler: a record aimed at a route output.

    ``to`` names the route output ("": the default destination). Made by
    ``to(name, record)`` with a record, or by ``unchanged()`` and
    ``unchanged_to(name)`` with ``unchanged`` true and no record: the input
    record, exactly as the host sent it.
    """

    __slots__ = ("record", "to", "unchanged")

    def __init__(self, record=None, to="", unchanged=False):
        self.record = record
        self.to = to
        self.unchanged = unchanged

    def __repr__(self):
        if self.unchanged:
            return f"Output(to={self.to!r}, unchanged=True)"
        rid = self.record.id if self.record is not None else None
        return f"Output(to={self.to!r}, record id={rid!r})"


def to(output, record):
    """Return ``record`` as an output aimed at the route output named ``output``."""
    return Output(record, output)


def unchanged():
    """Return the input record, exactly as it came, as an output to the default destination.

    ``return culvert.unchanged()`` passes the record on without sending it
    back when the host offers the ``unchanged`` capability (the answer is
    two bytes, and the host uses the record it sent); otherwise the SDK
    sends the input record, as ``return record`` would. It stands for the
    input as the host sent it: changes the handler made to the record are
    lost once the capability is in use, so a handler that changes its record
    returns the record. A handler can return the Output alone or in a list
    with others.
    """
    return Output(None, "", True)


def unchanged_to(output):
    """Return ``unchanged()`` aimed at the route output named ``output``."""
    return Output(None, output, True)


class Batch:
    """The batch being processed: passed to every handler call.

    ``id`` counts batches on this instance from 1; ``attempt`` is 1 on the
    first delivery of these records and more on retries; ``deadline`` is
    when the host kills the instance unless the batch is answered, in
    seconds since the epoch (``None`` when the host set none).
    """

    __slots__ = ("id", "attempt", "deadline")

    def __init__(self, id=0, attempt=0, deadline=None):
        self.id = id
        self.attempt = attempt
        self.deadline = deadline

    def time_left(self):
        """Seconds until the deadline (negative once past), or None."""
        if self.deadline is None:
            return None
        return self.deadline - time.time()

    def __repr__(self):
        return f"Batch(id={self.id}, attempt={self.attempt}, deadline={self.deadline})"


def run(handler, *, init=None, shutdown=None, agent=DEFAULT_AGENT):
    """Serve ``handler(record, batch)`` for each record, then exit.

    This is the main function of a framed-mode function: it takes stdin and
    stdout for the protocol, serves until the host sends Shutdown or closes
    stdin, and exits 0. It exits 1, with the reason on stderr, when the
    protocol breaks, the handshake is refused, or the shutdown hook fails.

    ``init(ctx)`` runs after the host's Hello, before Ready, with the
    ``InitContext`` (pipeline, function, instance, partition, route); an
    exception refuses the handshake. ``shutdown()`` runs when the host asks
    the function to stop or closes stdin.
    """
    run_batch(per_record(handler), init=init, shutdown=shutdown, agent=agent)


def run_batch(handler, *, init=None, shutdown=None, agent=DEFAULT_AGENT):
    """Serve ``handler(records, batch)`` for each batch, then exit.

    The handler returns one result per record, in order: what a per-record
    handler would return (None, a Record, an Output, or a list of them), or
    an exception instance to fail that record. A wrong number of results, or
    an exception raised by the handler, fails every record of the batch.
    """
    try:
        infile, out_fd = take_stdio()
    except OSError as e:
        print(f"culvert: taking stdin and stdout for the protocol: {e}", file=sys.stderr)
        sys.exit(1)
    code = 0
    try:
        serve(infile, out_fd, handler, init=init, shutdown=shutdown, agent=agent)
    except Exception as e:  # noqa: BLE001 - every failure ends the process the same way
        print(f"culvert: {e}", file=sys.stderr)
        code = 1
    # Exit now, as Go's os.Exit does, even if user threads still run; flush
    # what prints left in buffers (all of it goes to stderr) first.
    for f in (sys.__stdout__, sys.stdout, sys.stderr):
        try:
            if f is not None:
                f.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def take_stdio():
    """Move the protocol off fds 0 and 1; return (reader of frames, fd for frames).

    The frames go through private close-on-exec copies of fds 0 and 1. Then
    fd 1 points at stderr and fd 0 at /dev/null, and ``sys.stdout`` is
    ``sys.stderr``: prints, C code and child processes that inherit fd 1 all
    write to the log. Text that an earlier ``print`` left in ``sys.stdout``'s
    buffer is flushed to stderr too; an earlier print that was not buffered
    (``python3 -u``, ``PYTHONUNBUFFERED``) has reached the host already, which
    reports it as stray output.
    """
    out_fd = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    in_fd = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        os.dup2(2, 1)
    except OSError:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    old, sys.stdout = sys.stdout, sys.stderr
    if old is not None:
        old.flush()  # what a print left in its buffer: now to stderr
    return os.fdopen(in_fd, "rb", buffering=1 << 16), out_fd


def per_record(handler):
    """Turn ``handler(record, batch)`` into a batch handler, as ``run`` does."""

    def batch_handler(records, batch):
        results = []
        append = results.append
        for rec in records:
            try:
                append(handler(rec, batch))
            except Exception as e:  # noqa: BLE001 - a failure of this record only
                _log_exception(f"record {rec.id!r}", e)
                append(e)
        return results

    return batch_handler


def serve(infile, out_fd, handler, *, init=None, shutdown=None, agent=DEFAULT_AGENT):
    """Run the protocol until Shutdown or end of input, then return.

    ``infile`` is a binary file object with the host's frames (buffered, as
    ``os.fdopen(fd, "rb")`` makes), ``out_fd`` a raw file descriptor for the
    function's frames, ``handler`` a batch handler. Raises ProtocolError
    when the host breaks the protocol, RuntimeError when the handshake is
    refused (InitError has then been sent) or the shutdown hook fails.
    """
    s = _Server(infile, out_fd, handler, init, shutdown, agent)
    s.serve()


class _Server:
    def __init__(self, infile, out_fd, handler, init, shutdown, agent):
        self.infile = infile
        self.out_fd = out_fd
        self.handler = handler
        self.init = init
        self.shutdown = shutdown
        self.agent = agent
        self.max = _framing.DEFAULT_MAX_FRAME
        # True once the host offered the "unchanged" capability and Ready
        # accepted it: unchanged() outputs then go out as Output.unchanged.
        self.unchanged = False

    def next(self):
        body = _framing.read_frame(self.infile, self.max)
        if body is None:
            return None
        m = _fpb.HostMessage()
        try:
            m.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError or others
            raise ProtocolError(
                f"undecodable HostMessage of {len(body)} bytes: {e}; starts {body[:32].hex(' ')}"
            ) from None
        return m

    def write(self, msg):
        _framing.write_frame(self.out_fd, msg.SerializeToString())

    def serve(self):
        m = self.next()
        if m is None:
            return  # the host gave up before the handshake
        self.handshake(m)
        while True:
            m = self.next()
            if m is None:
                self.stop()
                return
            kind = m.WhichOneof("msg")
            if kind == "batch":
                self.batch(m.batch)
            elif kind == "keep_alive":
                # Batches run inline: every batch received before this ping
                # has been answered, so echoing now keeps the order.
                out = _fpb.FunctionMessage()
                out.keep_alive.nonce = m.keep_alive.nonce
                self.write(out)
            elif kind == "shutdown":
                self.stop()
                return
            elif kind == "hello":
                raise ProtocolError("the host sent a second Hello")
            else:
                raise ProtocolError(
                    "the host sent an empty or unknown frame, which protocol version 1 does not allow"
                )

    def handshake(self, m):
        if m.WhichOneof("msg") != "hello":
            raise ProtocolError("the host's first frame is not Hello")
        hello = m.hello
        if hello.max_frame_bytes:
            self.max = hello.max_frame_bytes
        if VERSION not in hello.versions:
            self.refuse(
                f"unsupported protocol versions {list(hello.versions)}: {DEFAULT_AGENT} speaks [{VERSION}]",
                False,
            )
        if self.init is not None:
            try:
                self.init(hello.context)
            except Exception as e:  # noqa: BLE001 - reported to the host as InitError
                _log_exception("init", e)
                self.refuse(_message(e), _retryable(e))
        out = _fpb.FunctionMessage()
        out.ready.version = VERSION
        out.ready.agent = self.agent
        if _CAP_UNCHANGED in hello.capabilities:
            self.unchanged = True
            out.ready.capabilities.append(_CAP_UNCHANGED)
        self.write(out)

    def refuse(self, message, retryable):
        out = _fpb.FunctionMessage()
        out.init_error.message = message
        out.init_error.retryable = retryable
        self.write(out)
        raise RuntimeError(f"init failed: {message}")

    def stop(self):
        if self.shutdown is None:
            return
        try:
            self.shutdown()
        except Exception as e:  # noqa: BLE001
            _log_exception("shutdown", e)
            raise RuntimeError(f"shutdown: {_message(e)}") from e

    def batch(self, b):
        info = Batch(b.id, b.attempt, b.deadline_unix_ms / 1000 if b.deadline_unix_ms else None)
        recs = b.records
        n = len(recs)
        try:
            results = self.handler(recs, info)
            if results is None or len(results) != n:
                got = "None" if results is None else len(results)
                raise RuntimeError(f"the batch handler returned {got} results for {n} records")
        except Exception as e:  # noqa: BLE001 - fails the whole batch, not the process
            _log_exception(f"batch {b.id} of {n} records", e)
            results = [e] * n
        u = self.unchanged
        parts = [_result_bytes(r, recs[i], u) for i, r in enumerate(results)]
        body = _result_body(b.id, parts)
        if len(body) > self.max:
            body = self.shrink(b.id, parts)
        _framing.write_frame(self.out_fd, body)

    def shrink(self, batch_id, parts):
        """Replace the largest record results by failures until the result fits."""
        for i in sorted(range(len(parts)), key=lambda i: -len(parts[i])):
            body = _result_body(batch_id, parts)
            if len(body) <= self.max:
                return body
            msg = (
                f"the outputs of this record ({len(parts[i])} bytes) make the batch result "
                f"exceed the frame limit of {self.max} bytes"
            )
            print(f"culvert: {msg}", file=sys.stderr)
            parts[i] = _failure_bytes(msg, False)
        return _result_body(batch_id, parts)


# The BatchResult is assembled from bytes rather than through protobuf
# objects: each output record is serialized once by the C++ backend, and
# copying it into a FunctionMessage would cost twice as much again.
# Field tags, from proto/culvert/v1/function.proto:
_RESULT = b"\x92\x01"  # FunctionMessage.result (18, LEN)
_BATCH_ID = b"\x08"  # BatchResult.batch_id (1, varint)
_RESULTS = b"\x12"  # BatchResult.results (2, LEN)
_OUTPUTS = b"\x0a"  # RecordResult.outputs (1, LEN)
_FAILURE = b"\x12"  # RecordResult.failure (2, LEN)
_RECORD = b"\x0a"  # Output.record (1, LEN)
_OUTPUT = b"\x12"  # Output.output (2, LEN)
_UNCHANGED = b"\x18\x01"  # Output.unchanged (3, varint) = true
_VARINTS = [_framing.encode_length(i) for i in range(1 << 12)]
_EMPTY_RESULT = _RESULTS + b"\x00"
# One output, Output.unchanged to the default destination: what unchanged()
# sends once the capability is in use.
_UNCHANGED_RESULT = _RESULTS + b"\x04" + _OUTPUTS + b"\x02" + _UNCHANGED


def _varint(n):
    return _VARINTS[n] if n < 4096 else _framing.encode_length(n)


def _result_body(batch_id, parts):
    br = b"".join(parts)
    if batch_id:
        br = _BATCH_ID + _framing.encode_length(batch_id) + br
    return _RESULT + _varint(len(br)) + br


def _failure_bytes(message, retryable):
    f = _fpb.Failure(message=message, retryable=retryable).SerializeToString()
    rr = _FAILURE + _varint(len(f)) + f
    return _RESULTS + _varint(len(rr)) + rr


def _result_bytes(r, rec, unchanged=False):
    """One BatchResult.results field for a handler's result r for input rec.

    ``unchanged`` says whether the capability is in use: an unchanged()
    output is then Output.unchanged, else the input record's bytes.
    """
    if r is None:
        return _EMPTY_RESULT
    if isinstance(r, BaseException):
        return _failure_bytes(_message(r), _retryable(r))
    if unchanged and type(r) is Output and r.unchanged and not r.to and r.record is None:
        return _UNCHANGED_RESULT
    try:
        if isinstance(r, (list, tuple)):
            items = r
        elif type(r) is Record or type(r) is Output:
            items = (r,)
        else:
            try:
                items = list(r)  # a generator or other iterable of outputs
            except TypeError:
                raise TypeError(
                    "a handler must return None, a culvert.Record, a culvert.Output or an iterable of them, "
                    f"not {type(r).__name__}"
                ) from None
        outs = []
        for item in items:
            name = b""
            if type(item) is Output:
                name = item.to.encode() if item.to else b""
                if item.unchanged:
                    if item.record is not None:
                        raise TypeError("an unchanged output has no record: return the record itself to send it")
                    if unchanged:
                        # The input record as the host sent it: named, not
                        # sent back (SPEC.md 4.3, 6 and 10).
                        ob = (_OUTPUT + _varint(len(name)) + name if name else b"") + _UNCHANGED
                        outs.append(_OUTPUTS + _varint(len(ob)) + ob)
                        continue
                    item = rec  # without the capability: the record, as an echo sends it
                else:
                    item = item.record
            if type(item) is not Record:
                raise TypeError(f"an output must be a culvert.Record or culvert.Output, not {type(item).__name__}")
            rb = item.SerializeToString()
            ob = _RECORD + _varint(len(rb)) + rb
            if name:
                ob += _OUTPUT + _varint(len(name)) + name
            outs.append(_OUTPUTS + _varint(len(ob)) + ob)
        rr = b"".join(outs)
    except Exception as e:  # noqa: BLE001 - a bad output fails its record
        print(f"culvert: record {rec.id!r}: {_message(e)}", file=sys.stderr)
        return _failure_bytes(_message(e), False)
    return _RESULTS + _varint(len(rr)) + rr


def _message(e):
    text = str(e)
    if isinstance(e, RetryableError):
        return text or "retryable error"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _retryable(e):
    return getattr(e, "retryable", False) is True


def _log_exception(where, e):
    if isinstance(e, RetryableError):
        print(f"culvert: {where}: {_message(e)}", file=sys.stderr)
        return
    print(f"culvert: exception in {where}:", file=sys.stderr)
    traceback.print_exception(e, file=sys.stderr)
