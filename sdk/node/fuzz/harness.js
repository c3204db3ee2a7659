// Fuzzing harness for the SDK's frame reader and protocol loop, driven by
// sdk/node/fuzz_test.go. It reads inputs as 4-byte big-endian lengths and
// bytes on stdin; for each it runs culvert.serve over a Hello followed by
// the input, checks that every frame written decodes, and answers one line
// on stdout: "ok" when the SDK coped (a ProtocolError or a refused
// handshake counts), or "bug: <stack>" for anything else.
import fs from "node:fs";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import * as culvert from "../culvert.js";
import { FunctionMessageSchema, HostMessageSchema } from "../gen/culvert/v1/function_pb.js";

const hello = culvert.frame(
  toBinary(HostMessageSchema, create(HostMessageSchema, { msg: { case: "hello", value: { versions: [1], maxFrameBytes: 1 << 16 } } })),
);

const handle = (r) => {
  const v = Buffer.from(r.value).toString("latin1");
  if (v === "f") throw new culvert.RetryableError("requested");
  if (v === "two") return [r, culvert.to("named", r)];
  return r;
};

async function one(data) {
  const written = [];
  async function* input() {
    yield hello;
    if (data.length) yield data;
  }
  try {
    await culvert.serve(input(), (b) => written.push(Buffer.from(b)), culvert.perRecord(handle));
  } catch (e) {
    if (!(e instanceof culvert.ProtocolError) && !/^init failed/.test(e.message)) throw e;
  }
  const r = new culvert.FrameReader(1 << 20);
  r.push(Buffer.concat(written));
  let b;
  while ((b = r.next()) !== null) {
    const m = fromBinary(FunctionMessageSchema, b);
    if (m.msg.case === undefined) throw new Error(`wrote an empty FunctionMessage: ${b.toString("hex")}`);
  }
  r.end();
}

process.stderr.write = () => true; // the SDK logs handler errors
let pending = Buffer.alloc(0);
const stdin = fs.createReadStream(null, { fd: 0 });
for await (const chunk of stdin) {
  pending = Buffer.concat([pending, chunk]);
  while (pending.length >= 4 && pending.length >= 4 + pending.readUInt32BE(0)) {
    const n = pending.readUInt32BE(0);
    const data = pending.subarray(4, 4 + n);
    pending = pending.subarray(4 + n);
    let line = "ok\n";
    try {
      await one(Buffer.from(data));
    } catch (e) {
      line = `bug: ${String(e && e.stack ? e.stack : e).replaceAll("\n", "\\n")}\n`;
    }
    fs.writeSync(1, line);
  }
}
