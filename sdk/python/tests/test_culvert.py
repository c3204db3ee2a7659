"""Unit tests of the Python SDK: /usr/bin/python3 -m unittest discover -s tests (from sdk/python)."""

import io
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import culvert  # noqa: E402
from culvert import _framing  # noqa: E402
from culvert.v1 import function_pb2 as fpb  # noqa: E402


def frame(msg):
    body = msg.SerializeToString()
    return _framing.encode_length(len(body)) + body


def hello(**kw):
    m = fpb.HostMessage()
    m.hello.versions.extend(kw.pop("versions", [1]))
    m.hello.capabilities.extend(kw.pop("capabilities", []))
    m.hello.context.function = "fn"
    for k, v in kw.items():
        setattr(m.hello, k, v)
    return m


def batch(id, *records, attempt=1, deadline=0):
    m = fpb.HostMessage()
    m.batch.id = id
    m.batch.attempt = attempt
    m.batch.deadline_unix_ms = deadline
    for r in records:
        m.batch.records.add().CopyFrom(r)
    return m


def rec(id, value, key=b"", headers=()):
    r = culvert.Record(id=id, value=value, key=key)
    for name, value in headers:
        r.headers.add(name=name, value=value)
    return r


def keep_alive(nonce):
    m = fpb.HostMessage()
    m.keep_alive.nonce = nonce
    return m


def shutdown():
    m = fpb.HostMessage()
    m.shutdown.reason = "test"
    return m


def frames_of(data):
    """Decode every FunctionMessage in data."""
    out = []
    for body in raw_frames(data):
        m = fpb.FunctionMessage()
        m.ParseFromString(body)
        out.append(m)
    return out


def serve_raw(handler, *msgs, batch_handler=False, **kw):
    """Run culvert.serve over msgs; return (bytes written, exception raised)."""
    infile = io.BytesIO(b"".join(frame(m) for m in msgs))
    with tempfile.TemporaryFile() as out:
        err = None
        h = handler if batch_handler else culvert.per_record(handler)
        try:
            culvert.serve(infile, out.fileno(), h, **kw)
        except Exception as e:  # noqa: BLE001
            err = e
        out.seek(0)
        return out.read(), err


def serve(handler, *msgs, **kw):
    """Run culvert.serve over msgs; return (frames written, exception raised)."""
    data, err = serve_raw(handler, *msgs, **kw)
    return frames_of(data), err


def raw_frames(data):
    """The bodies of the frames in data, undecoded."""
    f = io.BytesIO(data)
    out = []
    while True:
        body = _framing.read_frame(f, 64 << 20)
        if body is None:
            return out
        out.append(body)


class FramingTest(unittest.TestCase):
    def test_read_frame(self):
        cases = [
            ("clean EOF", b"", None, None),
            ("hello frame", b"\x03\x82\x01\x00", b"\x82\x01\x00", None),
            ("non-minimal length", b"\x83\x80\x00\x82\x01\x00", b"\x82\x01\x00", None),
            ("EOF in length", b"\x80", None, "inside a frame length"),
            ("length of 6 bytes", b"\x80\x80\x80\x80\x80\x01", None, "longer than 5 bytes"),
            ("length 1", b"\x01\x82", None, "out of range"),
            ("over the limit", b"\xe9\x07" + b"\x82\x01" * 600, None, "out of range"),
            ("printed text", b"hello world\n", None, "not a culvert.v1 frame"),
            ("wrong second tag byte", b"\x03\x82\x02\x00", None, "not a culvert.v1 frame"),
            ("tag between frames", b"\x03\x83\x01\x00", None, "not a culvert.v1 frame"),
            ("cut body", b"\x05\x82\x01\x00", None, "ended inside a frame"),
            ("cut tag", b"\x05\x82", None, "ended inside a frame"),
        ]
        for name, data, want, err in cases:
            with self.subTest(name):
                f = io.BytesIO(data)
                if err:
                    with self.assertRaisesRegex(culvert.ProtocolError, err):
                        _framing.read_frame(f, 1000)
                else:
                    self.assertEqual(_framing.read_frame(f, 1000), want)

    def test_write_frame_lengths(self):
        for n in (2, 127, 128, 16383, 16384, 1 << 20):
            with self.subTest(n=n), tempfile.TemporaryFile() as f:
                body = b"\x92\x01" + b"\xff" * (n - 2)
                _framing.write_frame(f.fileno(), body)
                f.seek(0)
                self.assertEqual(_framing.read_frame(f, 4 << 20), body)


class ServeTest(unittest.TestCase):
    def test_handshake(self):
        got, err = serve(lambda r, b: r, hello(), agent="test/1")
        self.assertIsNone(err)
        self.assertEqual(len(got), 1)
        self.assertEqual(got[0].WhichOneof("msg"), "ready")
        self.assertEqual(got[0].ready.version, 1)
        self.assertEqual(got[0].ready.agent, "test/1")

    def test_unsupported_version(self):
        got, err = serve(lambda r, b: r, hello(versions=[2, 3]))
        self.assertIsInstance(err, RuntimeError)
        self.assertEqual(got[0].WhichOneof("msg"), "init_error")
        self.assertIn("unsupported protocol versions [2, 3]", got[0].init_error.message)
        self.assertFalse(got[0].init_error.retryable)

    def test_init_hook(self):
        seen = []

        def init(ctx):
            seen.append(ctx.function)

        got, err = serve(lambda r, b: r, hello(), init=init)
        self.assertIsNone(err)
        self.assertEqual(seen, ["fn"])
        self.assertEqual(got[0].WhichOneof("msg"), "ready")

        def failing(ctx):
            raise culvert.RetryableError("database not reachable")

        got, err = serve(lambda r, b: r, hello(), init=failing)
        self.assertIsNotNone(err)
        self.assertEqual(got[0].init_error.message, "database not reachable")
        self.assertTrue(got[0].init_error.retryable)

    def test_records(self):
        binary = b"\x00\xff\xfe nul and invalid utf-8 \x80"

        def handle(r, b):
            v = r.value
            if v == b"drop":
                return None
            if v == b"bad":
                raise ValueError("bad value")
            if v == b"later":
                raise culvert.RetryableError("try later")
            if v == b"two":
                return [culvert.Record(value=b"a"), culvert.to("alerts", culvert.Record(value=b"b"))]
            if v == b"wrong type":
                return 42
            if v == b"gen":
                return (culvert.Record(value=bytes([c])) for c in b"xyz")
            r.value = v + b"!"
            return r

        recs = [
            rec("1", binary, key=b"\x00k", headers=[("h", b"\x00\x01"), ("h", b"again")]),
            rec("2", b"drop"),
            rec("3", b"bad"),
            rec("4", b"later"),
            rec("5", b"two"),
            rec("6", b"wrong type"),
            rec("7", b"gen"),
        ]
        got, err = serve(handle, hello(), batch(1, *recs))
        self.assertIsNone(err)
        res = got[1].result
        self.assertEqual(res.batch_id, 1)
        self.assertEqual(len(res.results), 7)
        r0 = res.results[0]
        self.assertEqual(r0.outputs[0].record.value, binary + b"!")
        self.assertEqual(r0.outputs[0].record.key, b"\x00k")
        self.assertEqual([(h.name, h.value) for h in r0.outputs[0].record.headers], [("h", b"\x00\x01"), ("h", b"again")])
        self.assertEqual(len(res.results[1].outputs), 0)
        self.assertFalse(res.results[1].HasField("failure"))
        self.assertEqual(res.results[2].failure.message, "ValueError: bad value")
        self.assertFalse(res.results[2].failure.retryable)
        self.assertEqual(res.results[3].failure.message, "try later")
        self.assertTrue(res.results[3].failure.retryable)
        self.assertEqual([o.record.value for o in res.results[4].outputs], [b"a", b"b"])
        self.assertEqual([o.output for o in res.results[4].outputs], ["", "alerts"])
        self.assertIn("a handler must return None, a culvert.Record", res.results[5].failure.message)
        self.assertEqual(len(res.results[5].outputs), 0)
        self.assertEqual([o.record.value for o in res.results[6].outputs], [b"x", b"y", b"z"])

    def test_empty_batch_and_batch_info(self):
        seen = []

        def handle(recs, b):
            seen.append((b.id, b.attempt, b.deadline, len(recs)))
            return [None] * len(recs)

        got, err = serve(handle, hello(), batch(1), batch(2, rec("a", b"x"), attempt=3, deadline=1767225600000),
                         batch_handler=True)
        self.assertIsNone(err)
        self.assertEqual(seen, [(1, 1, None, 0), (2, 3, 1767225600.0, 1)])
        self.assertEqual(got[1].result.batch_id, 1)
        self.assertEqual(len(got[1].result.results), 0)
        self.assertEqual(len(got[2].result.results), 1)

    def test_batch_handler_mistakes(self):
        cases = [
            ("wrong count", lambda recs, b: [None]),
            ("None", lambda recs, b: None),
            ("raises", lambda recs, b: 1 / 0),
        ]
        for name, h in cases:
            with self.subTest(name):
                got, err = serve(h, hello(), batch(1, rec("a", b"x"), rec("b", b"y")), batch_handler=True)
                self.assertIsNone(err)
                rs = got[1].result.results
                self.assertEqual(len(rs), 2)
                for r in rs:
                    self.assertTrue(r.HasField("failure"))
                    self.assertFalse(r.failure.retryable)

    def test_keep_alive_order_and_shutdown(self):
        stopped = []
        got, err = serve(lambda r, b: r, hello(), batch(1, rec("a", b"x")), keep_alive(7), batch(2),
                         shutdown(), batch(3), shutdown=lambda: stopped.append(True))
        self.assertIsNone(err)
        self.assertEqual([m.WhichOneof("msg") for m in got], ["ready", "result", "keep_alive", "result"])
        self.assertEqual(got[2].keep_alive.nonce, 7)
        self.assertEqual(stopped, [True])

    def test_eof_runs_shutdown(self):
        stopped = []
        got, err = serve(lambda r, b: r, hello(), batch(1), shutdown=lambda: stopped.append(True))
        self.assertIsNone(err)
        self.assertEqual(stopped, [True])
        self.assertEqual(len(got), 2)

    def test_protocol_violations(self):
        cases = [
            ("batch first", [batch(1)], "first frame is not Hello"),
            ("second hello", [hello(), hello()], "second Hello"),
            ("empty envelope", [hello(), fpb.HostMessage()], None),
        ]
        for name, msgs, want in cases:
            with self.subTest(name):
                _, err = serve(lambda r, b: r, *msgs)
                self.assertIsInstance(err, culvert.ProtocolError)
                if want:
                    self.assertIn(want, str(err))

    def test_result_over_frame_limit_fails_largest(self):
        def handle(r, b):
            r.value = r.value * 200
            return r

        got, err = serve(handle, hello(max_frame_bytes=4096), batch(1, rec("small", b"s"), rec("big", b"b" * 20)))
        self.assertIsNone(err)
        rs = got[1].result.results
        self.assertEqual(rs[0].outputs[0].record.value, b"s" * 200)
        self.assertIn("exceed the frame limit of 4096 bytes", rs[1].failure.message)


def pass_unchanged(r, b):
    """Passes records with unchanged(): "drop" is dropped, "keep-x" goes to
    output x and to the default destination, the rest to the default."""
    if r.value == b"drop":
        return None
    if r.value == b"keep-x":
        return [culvert.unchanged_to("x"), culvert.unchanged()]
    return culvert.unchanged()


def echo(r, b):
    """What pass_unchanged answers, with the records themselves."""
    if r.value == b"drop":
        return None
    if r.value == b"keep-x":
        return [culvert.to("x", r), r]
    return r


def unchanged_records():
    return [
        rec("a", b"\x00\xff binary", key=b"k", headers=[("h", b"1"), ("h", b"2")]),
        rec("b", b"keep-x", headers=[("only", b"")]),
        rec("c", b"drop"),
    ]


class UnchangedTest(unittest.TestCase):
    """The "unchanged" capability (proto/SPEC.md 4.3, 6 and 10)."""

    def test_with_the_capability(self):
        for name, batch_handler, h in [
            ("per record", False, pass_unchanged),
            ("per batch", True, lambda recs, b: [pass_unchanged(r, b) for r in recs]),
        ]:
            with self.subTest(name):
                data, err = serve_raw(h, hello(capabilities=["log-frames", "unchanged", "some-future-capability"]),
                                      batch(1, *unchanged_records()), shutdown(), batch_handler=batch_handler)
                self.assertIsNone(err)
                got = frames_of(data)
                self.assertEqual([m.WhichOneof("msg") for m in got], ["ready", "result"])
                self.assertEqual(list(got[0].ready.capabilities), ["unchanged"])
                rs = got[1].result.results
                self.assertEqual(len(rs), 3)
                for r in rs:
                    self.assertFalse(r.HasField("failure"))
                    for o in r.outputs:
                        self.assertTrue(o.unchanged)
                        self.assertFalse(o.HasField("record"))
                self.assertEqual([[o.output for o in r.outputs] for r in rs], [[""], ["x", ""], []])
                # Every byte of the result: Output.unchanged is field 3, varint 1,
                # after Output.output when that is set; no record field.
                want = fpb.FunctionMessage()
                want.result.batch_id = 1
                want.result.results.add().outputs.add(unchanged=True)
                two = want.result.results.add()
                two.outputs.add(output="x", unchanged=True)
                two.outputs.add(unchanged=True)
                want.result.results.add()
                body = raw_frames(data)[1]
                self.assertEqual(body, want.SerializeToString())
                self.assertEqual(body, b"\x92\x01\x17\x08\x01"
                                       b"\x12\x04\x0a\x02\x18\x01"
                                       b"\x12\x0b\x0a\x05\x12\x01x\x18\x01\x0a\x02\x18\x01"
                                       b"\x12\x00")

    def test_without_it_the_records_are_sent_back(self):
        for name, caps in [("not offered", []), ("other capabilities", ["log-frames"])]:
            with self.subTest(name):
                msgs = [hello(capabilities=caps), batch(1, *unchanged_records()), batch(2, rec("d", b"x")), shutdown()]
                data, err = serve_raw(pass_unchanged, *msgs)
                self.assertIsNone(err)
                want, err = serve_raw(echo, *msgs)
                self.assertIsNone(err)
                self.assertEqual(data, want)  # byte-equal to an echo
                got = frames_of(data)
                self.assertEqual(list(got[0].ready.capabilities), [])
                rs = got[1].result.results
                recs = unchanged_records()
                self.assertEqual(rs[0].outputs[0].record, recs[0])
                self.assertEqual([(o.output, o.record) for o in rs[1].outputs], [("x", recs[1]), ("", recs[1])])
                self.assertEqual(len(rs[2].outputs), 0)
                for r in rs:
                    for o in r.outputs:
                        self.assertFalse(o.unchanged)

    def test_offered_records_are_still_sent(self):
        msgs = [batch(1, *unchanged_records()), shutdown()]
        data, err = serve_raw(echo, hello(capabilities=["unchanged"]), *msgs)
        self.assertIsNone(err)
        got = frames_of(data)
        self.assertEqual(list(got[0].ready.capabilities), ["unchanged"])
        rs = got[1].result.results
        recs = unchanged_records()
        self.assertEqual(rs[0].outputs[0].record, recs[0])
        self.assertEqual([(o.output, o.record) for o in rs[1].outputs], [("x", recs[1]), ("", recs[1])])
        for r in rs:
            for o in r.outputs:
                self.assertFalse(o.unchanged)
        # The result is the one an echo sends to a host without the capability.
        want, err = serve_raw(echo, hello(), *msgs)
        self.assertIsNone(err)
        self.assertEqual(raw_frames(data)[1:], raw_frames(want)[1:])

    def test_mixed_and_misused(self):
        def handle(r, b):
            if r.value == b"mixed":
                return (o for o in [culvert.Record(value=b"new"), culvert.unchanged_to("x")])
            if r.value == b"both":
                return culvert.Output(r, "", True)
            return culvert.unchanged()

        for caps in ([], ["unchanged"]):
            with self.subTest(caps=caps):
                got, err = serve(handle, hello(capabilities=caps), batch(1, rec("m", b"mixed"), rec("b", b"both")))
                self.assertIsNone(err)
                rs = got[1].result.results
                self.assertEqual(rs[0].outputs[0].record.value, b"new")
                self.assertEqual(rs[0].outputs[1].output, "x")
                self.assertEqual(rs[0].outputs[1].unchanged, bool(caps))
                self.assertEqual(rs[0].outputs[1].HasField("record"), not caps)
                self.assertIn("an unchanged output has no record", rs[1].failure.message)
                self.assertEqual(len(rs[1].outputs), 0)

    def test_api(self):
        o = culvert.unchanged()
        self.assertIsInstance(o, culvert.Output)
        self.assertEqual((o.record, o.to, o.unchanged), (None, "", True))
        o = culvert.unchanged_to("alerts")
        self.assertEqual((o.record, o.to, o.unchanged), (None, "alerts", True))
        self.assertEqual(repr(o), "Output(to='alerts', unchanged=True)")
        self.assertFalse(culvert.to("x", culvert.Record()).unchanged)


class StdoutTakenTest(unittest.TestCase):
    def test_prints_go_to_stderr(self):
        script = textwrap.dedent(f"""
            import os, subprocess, sys
            sys.path.insert(0, {ROOT!r})
            import culvert
            print("buffered before run")
            def handle(r, b):
                print("print from the handler")
                os.write(1, b"raw write to fd 1\\n")
                subprocess.run(["echo", "child process"], check=True)
                return r
            culvert.run(handle)
        """)
        stdin = frame(hello()) + frame(batch(1, rec("a", b"x"))) + frame(shutdown())
        env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
        p = subprocess.run([sys.executable, "-c", script], input=stdin, capture_output=True, timeout=60, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        got = frames_of(p.stdout)
        self.assertEqual([m.WhichOneof("msg") for m in got], ["ready", "result"])
        self.assertEqual(got[1].result.results[0].outputs[0].record.value, b"x")
        for text in (b"buffered before run", b"print from the handler", b"raw write to fd 1", b"child process"):
            self.assertIn(text, p.stderr)

    def test_protocol_error_exits_1(self):
        script = f"import sys; sys.path.insert(0, {ROOT!r}); import culvert; culvert.run(lambda r, b: r)"
        p = subprocess.run([sys.executable, "-c", script], input=b"garbage\n", capture_output=True, timeout=60)
        self.assertEqual(p.returncode, 1)
        self.assertEqual(p.stdout, b"")
        self.assertIn(b"not a culvert.v1 frame", p.stderr)


if __name__ == "__main__":
    unittest.main()
