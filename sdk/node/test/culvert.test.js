// Unit tests of the Node SDK: node --test test/ (from sdk/node).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as culvert from "../culvert.js";
import { FunctionMessageSchema, HostMessageSchema, OutputSchema } from "../gen/culvert/v1/function_pb.js";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));

function host(msg) {
  return culvert.frame(toBinary(HostMessageSchema, create(HostMessageSchema, { msg })));
}
const hello = (v = {}) => host({ case: "hello", value: { versions: [1], context: { function: "fn" }, ...v } });
const batch = (id, records = [], v = {}) => host({ case: "batch", value: { id: BigInt(id), attempt: 1, records, ...v } });
const keepAlive = (nonce) => host({ case: "keepAlive", value: { nonce: BigInt(nonce) } });
const shutdown = () => host({ case: "shutdown", value: { reason: "test" } });
const rec = (id, value, headers = []) =>
  culvert.record({ id, value: Buffer.from(value, "latin1"), key: Buffer.from("k\0"), headers });

function decodeAll(buf) {
  const r = new culvert.FrameReader(64 << 20);
  r.push(buf);
  const out = [];
  let b;
  while ((b = r.next()) !== null) out.push(fromBinary(FunctionMessageSchema, b).msg);
  r.end();
  return out;
}

// serve runs culvert.serve over frames, fed in chunks of chunkSize bytes.
async function serve(handler, frames, { batchHandler = false, chunkSize = 7, ...options } = {}) {
  const input = Buffer.concat(frames);
  async function* chunks() {
    for (let i = 0; i < input.length; i += chunkSize) yield input.subarray(i, i + chunkSize);
  }
  const written = [];
  let err = null;
  try {
    await culvert.serve(chunks(), (b) => written.push(Buffer.from(b)), batchHandler ? handler : culvert.perRecord(handler), options);
  } catch (e) {
    err = e;
  }
  const raw = Buffer.concat(written);
  return { got: decodeAll(raw), err, raw };
}

test("FrameReader", async (t) => {
  const cases = [
    ["clean end", [], null, null],
    ["one frame", [3, 0x82, 1, 0], [0x82, 1, 0], null],
    ["non-minimal length", [0x83, 0x80, 0, 0x82, 1, 0], [0x82, 1, 0], null],
    ["cut length", [0x80], null, /ended inside a frame/],
    ["length of 6 bytes", [0x80, 0x80, 0x80, 0x80, 0x80, 1], null, /longer than 5 bytes/],
    ["length 1", [1, 0x82], null, /out of range/],
    ["over the limit", [0xe9, 0x07, 0x82, 1], null, /out of range/],
    ["printed text", [...Buffer.from("hello world\n")], null, /not a culvert.v1 frame/],
    ["bad second tag byte", [3, 0x82, 2, 0], null, /not a culvert.v1 frame/],
    ["tag off the grid", [3, 0x83, 1, 0], null, /not a culvert.v1 frame/],
    ["cut body", [5, 0x82, 1, 0], null, /ended inside a frame/],
  ];
  for (const [name, bytes, want, err] of cases) {
    await t.test(name, () => {
      const r = new culvert.FrameReader(1000);
      // Byte by byte: the reader must not depend on chunk boundaries.
      const run = () => {
        let got = null;
        for (const b of bytes) {
          r.push(Buffer.from([b]));
          got ??= r.next();
        }
        got ??= r.next();
        r.end();
        return got;
      };
      if (err) assert.throws(run, err);
      else {
        const got = run();
        assert.deepEqual(got === null ? null : [...got], want);
      }
    });
  }
});

test("encodeLength round trip", () => {
  for (const n of [2, 127, 128, 16383, 16384, 4 << 20]) {
    const r = new culvert.FrameReader(8 << 20);
    const body = Buffer.alloc(n, 0);
    body[0] = 0x92;
    body[1] = 1;
    r.push(culvert.frame(body));
    assert.equal(r.next().length, n);
  }
});

test("handshake", async () => {
  const { got, err } = await serve((r) => r, [hello()], { agent: "test/1" });
  assert.equal(err, null);
  assert.equal(got.length, 1);
  assert.equal(got[0].case, "ready");
  assert.equal(got[0].value.version, 1);
  assert.equal(got[0].value.agent, "test/1");
});

test("unsupported version", async () => {
  const { got, err } = await serve((r) => r, [hello({ versions: [2, 3] })]);
  assert.match(err.message, /init failed/);
  assert.equal(got[0].case, "initError");
  assert.match(got[0].value.message, /unsupported protocol versions \[2 3\]/);
  assert.equal(got[0].value.retryable, false);
});

test("init hook", async () => {
  const seen = [];
  let { got, err } = await serve((r) => r, [hello()], { init: async (ctx) => seen.push(ctx.function) });
  assert.equal(err, null);
  assert.deepEqual(seen, ["fn"]);
  assert.equal(got[0].case, "ready");
  ({ got, err } = await serve((r) => r, [hello()], {
    init: () => {
      throw new culvert.RetryableError("database not reachable");
    },
  }));
  assert.notEqual(err, null);
  assert.equal(got[0].case, "initError");
  assert.equal(got[0].value.message, "database not reachable");
  assert.equal(got[0].value.retryable, true);
});

test("records", async () => {
  const binary = "\x00\xff\xfe nul and invalid utf-8 \x80";
  const handle = async (r) => {
    const v = Buffer.from(r.value).toString("latin1");
    await new Promise((res) => setImmediate(res)); // async handlers keep order
    switch (v) {
      case "drop":
        return null;
      case "bad":
        throw new TypeError("bad value");
      case "later":
        throw new culvert.RetryableError("try later");
      case "two":
        return [culvert.record({ value: Buffer.from("a") }), culvert.to("alerts", culvert.record({ value: Buffer.from("b") }))];
      case "wrong type":
        return { value: "not a record" };
    }
    r.value = Buffer.concat([r.value, Buffer.from("!")]);
    return r;
  };
  const headers = [
    { name: "h", value: Buffer.from([0, 1]) },
    { name: "h", value: Buffer.from("again") },
  ];
  const recs = [rec("1", binary, headers), rec("2", "drop"), rec("3", "bad"), rec("4", "later"), rec("5", "two"), rec("6", "wrong type")];
  const { got, err } = await serve(handle, [hello(), batch(1, recs)]);
  assert.equal(err, null);
  assert.equal(got[1].case, "result");
  const res = got[1].value;
  assert.equal(res.batchId, 1n);
  assert.equal(res.results.length, 6);
  const o = res.results[0].outputs[0].record;
  assert.equal(Buffer.from(o.value).toString("latin1"), binary + "!");
  assert.deepEqual(Buffer.from(o.key), Buffer.from("k\0"));
  assert.deepEqual(o.headers.map((h) => [h.name, Buffer.from(h.value).toString("latin1")]), [["h", "\x00\x01"], ["h", "again"]]);
  assert.equal(res.results[1].outputs.length, 0);
  assert.equal(res.results[1].failure, undefined);
  assert.equal(res.results[2].failure.message, "TypeError: bad value");
  assert.equal(res.results[2].failure.retryable, false);
  assert.equal(res.results[3].failure.message, "try later");
  assert.equal(res.results[3].failure.retryable, true);
  assert.deepEqual(res.results[4].outputs.map((o) => [Buffer.from(o.record.value).toString(), o.output]), [["a", ""], ["b", "alerts"]]);
  assert.match(res.results[5].failure.message, /an output must be a Record/);
});

test("empty batch and batch info", async () => {
  const seen = [];
  const handle = (recs, b) => {
    seen.push([b.id, b.attempt, b.deadline?.getTime() ?? null, recs.length, b.signal instanceof AbortSignal]);
    return recs.map(() => null);
  };
  const { got, err } = await serve(handle, [hello(), batch(1), batch(2, [rec("a", "x")], { attempt: 3, deadlineUnixMs: 1767225600000n })], {
    batchHandler: true,
  });
  assert.equal(err, null);
  assert.deepEqual(seen, [
    [1n, 1, null, 0, false],
    [2n, 3, 1767225600000, 1, true],
  ]);
  assert.equal(got[1].value.results.length, 0);
  assert.equal(got[2].value.results.length, 1);
});

test("batch handler mistakes fail the whole batch", async (t) => {
  const cases = [
    ["wrong count", () => [null]],
    ["not an array", () => undefined],
    ["throws", () => {
      throw new Error("boom");
    }],
    ["rejects", async () => {
      throw new Error("boom");
    }],
  ];
  for (const [name, h] of cases) {
    await t.test(name, async () => {
      const { got, err } = await serve(h, [hello(), batch(1, [rec("a", "x"), rec("b", "y")])], { batchHandler: true });
      assert.equal(err, null);
      const rs = got[1].value.results;
      assert.equal(rs.length, 2);
      for (const r of rs) {
        assert.ok(r.failure);
        assert.equal(r.failure.retryable, false);
      }
    });
  }
});

test("keep-alive order and shutdown", async () => {
  let stopped = 0;
  const { got, err } = await serve((r) => r, [hello(), batch(1, [rec("a", "x")]), keepAlive(7), batch(2), shutdown(), batch(3)], {
    shutdown: () => stopped++,
  });
  assert.equal(err, null);
  assert.deepEqual(got.map((m) => m.case), ["ready", "result", "keepAlive", "result"]);
  assert.equal(got[2].value.nonce, 7n);
  assert.equal(stopped, 1);
});

test("end of input runs shutdown", async () => {
  let stopped = 0;
  const { got, err } = await serve((r) => r, [hello(), batch(1)], { shutdown: () => stopped++ });
  assert.equal(err, null);
  assert.equal(stopped, 1);
  assert.equal(got.length, 2);
});

test("protocol violations", async (t) => {
  const cases = [
    ["batch first", [batch(1)], /first frame is not Hello/],
    ["second hello", [hello(), hello()], /second Hello/],
    ["zero length", [hello(), Buffer.from([0])], /out of range/],
    ["unknown frame", [hello(), culvert.frame(Buffer.from([0xfa, 1, 0]))], /empty or unknown frame/],
    ["cut frame", [hello(), batch(1).subarray(0, 4)], /ended inside a frame/],
  ];
  for (const [name, frames, want] of cases) {
    await t.test(name, async () => {
      const { err } = await serve((r) => r, frames);
      assert.ok(err instanceof culvert.ProtocolError, `got ${err}`);
      assert.match(err.message, want);
    });
  }
});

test("a result over the frame limit fails its largest records", async () => {
  const handle = (r) => {
    r.value = Buffer.from(Buffer.from(r.value).toString().repeat(200));
    return r;
  };
  const { got, err } = await serve(handle, [hello({ maxFrameBytes: 4096 }), batch(1, [rec("small", "s"), rec("big", "b".repeat(20))])]);
  assert.equal(err, null);
  const rs = got[1].value.results;
  assert.equal(Buffer.from(rs[0].outputs[0].record.value).toString(), "s".repeat(200));
  assert.match(rs[1].failure.message, /exceed the frame limit of 4096 bytes/);
});

test("run takes stdout away from user code", () => {
  const script = `
    import * as culvert from ${JSON.stringify(path.join(root, "culvert.js"))};
    import { spawnSync } from "node:child_process";
    culvert.run((r) => {
      console.log("console.log from the handler");
      process.stdout.write("process.stdout.write from the handler\\n");
      spawnSync("echo", ["child with stdio pipe"], { stdio: ["ignore", 2, 2] });
      return r;
    });
  `;
  const input = Buffer.concat([hello(), batch(1, [rec("a", "x")]), shutdown()]);
  const p = spawnSync(process.execPath, ["--input-type=module", "-e", script], { input, cwd: root, timeout: 60_000 });
  assert.equal(p.status, 0, p.stderr.toString());
  const got = decodeAll(p.stdout);
  assert.deepEqual(got.map((m) => m.case), ["ready", "result"]);
  assert.equal(Buffer.from(got[1].value.results[0].outputs[0].record.value).toString(), "x");
  const stderr = p.stderr.toString();
  for (const text of ["console.log from the handler", "process.stdout.write from the handler", "child with stdio pipe"]) {
    assert.ok(stderr.includes(text), `${text} not in stderr: ${stderr}`);
  }
});

test("a protocol error exits 1 without writing", () => {
  const script = `import * as culvert from ${JSON.stringify(path.join(root, "culvert.js"))}; culvert.run((r) => r);`;
  const p = spawnSync(process.execPath, ["--input-type=module", "-e", script], { input: "garbage\n", timeout: 60_000 });
  assert.equal(p.status, 1);
  assert.equal(p.stdout.length, 0);
  assert.match(p.stderr.toString(), /not a culvert.v1 frame/);
});

// passing answers with culvert.pass(): "drop" is dropped, "keep-x" goes to
// the output x and to the default destination, anything else to the
// default destination.
const passing = (r) => {
  switch (Buffer.from(r.value).toString("latin1")) {
    case "drop":
      return null;
    case "keep-x":
      return [culvert.passTo("x"), culvert.pass()];
  }
  return culvert.pass();
};
const marker = "a value the answer must not carry \x00\xff";
const passRecs = () => [rec("1", marker, [{ name: "h", value: Buffer.from("v") }]), rec("2", "keep-x"), rec("3", "drop")];
const outputs = (res) => res.results.map((rr) => rr.outputs.map((o) => [o.unchanged, o.record === undefined, o.output]));

test("pass with the unchanged capability", async (t) => {
  for (const batchHandler of [false, true]) {
    await t.test(batchHandler ? "runBatch" : "run", async () => {
      const handler = batchHandler ? (recs) => recs.map(passing) : passing;
      const { got, err, raw } = await serve(handler, [hello({ capabilities: ["log-frames", "unchanged", "some-future-capability"] }), batch(1, passRecs())], {
        batchHandler,
      });
      assert.equal(err, null);
      assert.equal(got[0].case, "ready");
      assert.deepEqual(got[0].value.capabilities, ["unchanged"]); // the offered one it uses, nothing else
      assert.equal(got[1].case, "result");
      // [unchanged, no record, output]
      assert.deepEqual(outputs(got[1].value), [[[true, true, ""]], [[true, true, "x"], [true, true, ""]], []]);
      // On the wire: field 3 true and nothing else, and the record is not sent.
      const first = got[1].value.results[0].outputs[0];
      assert.deepEqual([...toBinary(OutputSchema, first)], [0x18, 0x01]);
      assert.ok(!raw.includes(Buffer.from(marker, "latin1")), "the record's value was sent back");
    });
  }
});

test("pass without the unchanged capability sends the records back, as an echo does", async (t) => {
  for (const [name, hostHello] of [
    ["none offered", hello()],
    ["others offered", hello({ capabilities: ["log-frames", "some-future-capability"] })],
  ]) {
    await t.test(name, async () => {
      const pass = await serve(passing, [hostHello, batch(1, passRecs())]);
      const echo = await serve(
        (r) => {
          const v = Buffer.from(r.value).toString("latin1");
          if (v === "drop") return null;
          if (v === "keep-x") return [culvert.to("x", r), r];
          return r;
        },
        [hostHello, batch(1, passRecs())],
      );
      assert.equal(pass.err, null);
      assert.equal(echo.err, null);
      assert.deepEqual(pass.got[0].value.capabilities, []); // never a capability the host did not offer
      assert.deepEqual(outputs(pass.got[1].value), [[[false, false, ""]], [[false, false, "x"], [false, false, ""]], []]);
      const o = pass.got[1].value.results[0].outputs[0].record;
      assert.equal(Buffer.from(o.value).toString("latin1"), marker);
      assert.deepEqual(o.headers.map((h) => [h.name, Buffer.from(h.value).toString()]), [["h", "v"]]);
      assert.ok(pass.raw.equals(echo.raw), "pass() without the capability is not byte for byte an echo");
    });
  }
});

test("the capability offered, returned records are still sent", async () => {
  const handle = (r) => {
    const v = Buffer.from(r.value).toString("latin1");
    if (v === "keep-x") return [culvert.to("x", r), culvert.record({ value: Buffer.from("new") })];
    if (v === "drop") {
      r.value = Buffer.from("changed");
      return r;
    }
    return r;
  };
  const { got, err, raw } = await serve(handle, [hello({ capabilities: ["unchanged"] }), batch(1, passRecs())]);
  assert.equal(err, null);
  assert.deepEqual(got[0].value.capabilities, ["unchanged"]);
  const res = got[1].value;
  assert.deepEqual(outputs(res), [[[false, false, ""]], [[false, false, "x"], [false, false, ""]], [[false, false, ""]]]);
  assert.deepEqual(
    res.results.map((rr) => rr.outputs.map((o) => Buffer.from(o.record.value).toString("latin1"))),
    [[marker], ["keep-x", "new"], ["changed"]],
  );
  assert.ok(raw.includes(Buffer.from(marker, "latin1")));
});
