// Culvert SDK for Node.js: write a framed-mode function (proto/SPEC.md) as
// a handler. It speaks the protocol on stdin and stdout: the handshake, one
// result per batch, per-record failures, keep-alives and shutdown.
//
//   import * as culvert from "./culvert.js";
//
//   culvert.run(async (record, batch) => {
//     if (record.value.length === 0) return null;              // consumed: no output
//     if (record.value[0] === 0x7b) throw new Error("no JSON"); // permanent failure
//     record.value = Buffer.from(record.value).reverse();
//     return record;                                           // the input, modified
//   }, { agent: "reverse/1" });
//
// A handler that passes its record on exactly as it came returns
// culvert.pass() (or culvert.passTo("name")): with a host that offers the
// protocol's "unchanged" capability the record is not sent back.
//
// Handlers may be async; records and batches are still answered in order,
// one at a time. Before any handler, init or shutdown code runs, run() sends
// process.stdout and console output to stderr and writes frames to fd 1
// directly, so a stray console.log cannot corrupt the stream.

import fs from "node:fs";
import { Console } from "node:console";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  FunctionMessageSchema,
  HostMessageSchema,
  InitContextSchema,
  RecordResultSchema,
} from "./gen/culvert/v1/function_pb.js";
import { HeaderSchema, PositionSchema, RecordSchema } from "./gen/culvert/v1/record_pb.js";

export { HeaderSchema, PositionSchema, RecordSchema };

/** The protocol version this SDK speaks. */
export const VERSION = 1;
/** The Ready.agent sent unless options.agent says otherwise. */
export const DEFAULT_AGENT = "culvert-sdk-node/1";
/** The frame size limit until the handshake says otherwise (4 MiB). */
export const DEFAULT_MAX_FRAME = 4 << 20;

/**
 * Fails a record so that the host retries it with backoff. Other errors
 * fail it permanently (dead-lettered at once): most errors come from the
 * record itself. Any error with `retryable === true` counts as retryable.
 */
export class RetryableError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = "RetryableError";
  }
  get retryable() {
    return true;
  }
}

/** The host broke the framed protocol; the function must exit. */
export class ProtocolError extends Error {
  constructor(message) {
    super(message);
    this.name = "ProtocolError";
  }
}

/** The protocol capability behind pass() and passTo(). */
const CAP_UNCHANGED = "unchanged";

// Marks an Output made by pass() or passTo(): the input record as it came.
const INPUT = Symbol("culvert.input");

/**
 * One emitted record aimed at a named route output (see to()), or, made by
 * pass() or passTo(), the input record as it came (record is then
 * undefined).
 */
export class Output {
  constructor(record, to = "") {
    this.record = record;
    this.to = to;
  }
}

/** Returns record as an output aimed at the route output named output. */
export function to(output, record) {
  return new Output(record, output);
}

/**
 * Returns the input record, exactly as it came, as an output to the default
 * destination: what a filter, a router or a passthrough returns for a
 * record it keeps. It means the same as returning the untouched record, but
 * when the host offers the protocol's "unchanged" capability (proto/SPEC.md
 * section 10), as Culvert's does, the SDK answers with Output.unchanged:
 * the record is neither encoded nor written back, and the host uses the one
 * it sent. With another host the SDK sends the record, as returning it
 * would. Use it only for a record the handler did not change: a changed
 * record is returned itself.
 */
export function pass() {
  return passTo("");
}

/** pass() aimed at the route output named output. */
export function passTo(output) {
  const o = new Output(undefined, output);
  o[INPUT] = true;
  return o;
}

/** Makes a Record from its fields, e.g. record({ value: bytes, key }). */
export function record(init) {
  return create(RecordSchema, init);
}

/**
 * Serves handler(record, batch) for each record: the main function of a
 * framed-mode function. See runBatch.
 */
export function run(handler, options = {}) {
  return runBatch(perRecord(handler), options);
}

/**
 * Serves handler(records, batch) for each batch, which returns (or resolves
 * to) one result per record, in order: what a per-record handler returns,
 * or an Error to fail that record. Takes stdout away from user code first,
 * serves until the host sends Shutdown or closes stdin, then exits 0; exits
 * 1 with the reason on stderr when the protocol breaks, the handshake is
 * refused, or the shutdown hook fails.
 *
 * options: { init(ctx), shutdown(), agent }. init runs after the host's
 * Hello with the InitContext; a thrown error (or rejected promise) refuses
 * the handshake, retryably if the error is retryable.
 */
export function runBatch(handler, options = {}) {
  takeStdio();
  const input = fs.createReadStream(null, { fd: 0, autoClose: false, highWaterMark: 1 << 20 });
  const write = (buf) => writeAll(1, buf);
  return serve(input, write, handler, options).then(
    () => process.exit(0),
    (err) => {
      process.stderr.write(`culvert: ${err && err.message ? err.message : err}\n`);
      process.exit(1);
    },
  );
}

/**
 * Sends process.stdout, console and process.stdin away from the protocol:
 * process.stdout becomes process.stderr, the global console writes to
 * stderr, and process.stdin reads /dev/null. Frames go to fd 1 with raw
 * synchronous writes. Child processes started with stdio "inherit" still
 * share fd 1: give them "pipe" or ["ignore", 2, 2].
 */
export function takeStdio() {
  const stderr = process.stderr;
  Object.defineProperty(process, "stdout", { configurable: true, enumerable: true, get: () => stderr });
  let stdin;
  Object.defineProperty(process, "stdin", {
    configurable: true,
    enumerable: true,
    get: () => (stdin ??= fs.createReadStream("/dev/null")),
  });
  globalThis.console = new Console({ stdout: stderr, stderr });
}

const sleeper = new Int32Array(new SharedArrayBuffer(4));

/** Writes all of buf to fd, looping on short writes (and EAGAIN). */
export function writeAll(fd, buf) {
  let off = 0;
  while (off < buf.length) {
    try {
      off += fs.writeSync(fd, buf, off, buf.length - off);
    } catch (e) {
      if (e.code !== "EAGAIN") throw e;
      Atomics.wait(sleeper, 0, 0, 1); // a non-blocking pipe is full: wait for the host
    }
  }
}

/** Turns handler(record, batch) into a batch handler, keeping order. */
export function perRecord(handler) {
  return async (records, batch) => {
    const results = new Array(records.length);
    for (let i = 0; i < records.length; i++) {
      try {
        let r = handler(records[i], batch);
        if (r !== null && typeof r === "object" && typeof r.then === "function") r = await r;
        results[i] = r;
      } catch (e) {
        logError(`record ${JSON.stringify(records[i].id)}`, e);
        results[i] = e instanceof Error ? e : new Error(String(e));
      }
    }
    return results;
  };
}

/** Encodes the varint length of a frame. */
export function encodeLength(n) {
  const out = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

/** Frames body: its varint length, then the body. */
export function frame(body) {
  return Buffer.concat([encodeLength(body.length), body]);
}

/**
 * Splits a byte stream into frame bodies (SPEC.md section 3). push() adds
 * bytes, next() returns the next complete body or null, end() checks that
 * the stream did not stop inside a frame. The length is checked against
 * max before the body is gathered, and the tag as soon as it is there.
 */
export class FrameReader {
  constructor(max = DEFAULT_MAX_FRAME) {
    this.max = max;
    this.chunks = [];
    this.size = 0;
    this.offset = 0; // bytes consumed from the stream
  }

  push(chunk) {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.size += chunk.length;
    }
  }

  byte(i) {
    for (const c of this.chunks) {
      if (i < c.length) return c[i];
      i -= c.length;
    }
    return -1;
  }

  take(n) {
    const first = this.chunks[0];
    let out;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      const all = Buffer.concat(this.chunks, this.size);
      out = all.subarray(0, n);
      this.chunks = all.length > n ? [all.subarray(n)] : [];
    }
    this.size -= n;
    this.offset += n;
    return out;
  }

  next() {
    let n = 0;
    let i = 0;
    for (;;) {
      if (i === 5) throw this.error("frame length is longer than 5 bytes");
      const b = this.byte(i);
      if (b < 0) return null;
      n += (b & 0x7f) * 2 ** (7 * i);
      i++;
      if (b < 0x80) break;
    }
    if (n < 2 || n > this.max) throw this.error(`frame length ${n} is out of range [2, ${this.max}]`);
    const t0 = this.byte(i);
    const t1 = this.byte(i + 1);
    if ((t0 >= 0 && (t0 < 0x82 || t0 > 0xfa || (t0 - 0x82) % 8 !== 0)) || (t1 >= 0 && t1 !== 0x01)) {
      throw this.error(`not a culvert.v1 frame: body starts ${hex([t0, t1].filter((x) => x >= 0))}`);
    }
    if (this.size < i + n) return null;
    this.take(i);
    return this.take(n);
  }

  end() {
    if (this.size > 0) throw this.error(`the input ended inside a frame (${this.size} bytes left)`);
  }

  error(msg) {
    return new ProtocolError(`${msg} (at offset ${this.offset} of the input)`);
  }
}

function hex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(" ");
}

/**
 * Runs the protocol until Shutdown or the end of input, then resolves.
 * input is an async iterable of byte chunks (a stream), write(buf) writes
 * one whole frame synchronously, handler is a batch handler. Rejects with a
 * ProtocolError when the host breaks the protocol, and with an Error when
 * the handshake is refused (InitError has been sent) or the shutdown hook
 * fails.
 */
export async function serve(input, write, handler, options = {}) {
  const s = new Server(write, handler, options);
  const reader = new FrameReader();
  let started = false;
  for await (const chunk of input) {
    reader.push(chunk);
    let body;
    while ((body = reader.next()) !== null) {
      const m = decode(body);
      if (!started) {
        await s.handshake(m);
        reader.max = s.max;
        started = true;
        continue;
      }
      if (await s.handle(m)) {
        await s.stop();
        return;
      }
    }
  }
  reader.end();
  if (started) await s.stop();
}

function decode(body) {
  try {
    return fromBinary(HostMessageSchema, body);
  } catch (e) {
    throw new ProtocolError(`undecodable HostMessage of ${body.length} bytes: ${e.message}; starts ${hex(body.subarray(0, 32))}`);
  }
}

class Server {
  constructor(write, handler, options) {
    this.write = write;
    this.handler = handler;
    this.init = options.init;
    this.shutdown = options.shutdown;
    this.agent = options.agent ?? DEFAULT_AGENT;
    this.max = DEFAULT_MAX_FRAME;
    // The host offered the "unchanged" capability and Ready accepted it:
    // pass() and passTo() go out as Output.unchanged.
    this.unchanged = false;
  }

  send(msg) {
    this.write(frame(toBinary(FunctionMessageSchema, create(FunctionMessageSchema, { msg }))));
  }

  async handshake(m) {
    if (m.msg.case !== "hello") throw new ProtocolError("the host's first frame is not Hello");
    const hello = m.msg.value;
    if (hello.maxFrameBytes) this.max = hello.maxFrameBytes;
    if (!hello.versions.includes(VERSION)) {
      this.refuse(`unsupported protocol versions [${hello.versions.join(" ")}]: ${DEFAULT_AGENT} speaks [${VERSION}]`, false);
    }
    if (this.init) {
      try {
        await this.init(hello.context ?? create(InitContextSchema));
      } catch (e) {
        logError("init", e);
        this.refuse(message(e), retryable(e));
      }
    }
    const ready = { version: VERSION, agent: this.agent };
    if (hello.capabilities.includes(CAP_UNCHANGED)) {
      // Accepted whenever offered, never otherwise (SPEC.md section 10).
      this.unchanged = true;
      ready.capabilities = [CAP_UNCHANGED];
    }
    this.send({ case: "ready", value: ready });
  }

  refuse(msg, isRetryable) {
    this.send({ case: "initError", value: { message: msg, retryable: isRetryable } });
    throw new Error(`init failed: ${msg}`);
  }

  async stop() {
    if (!this.shutdown) return;
    try {
      await this.shutdown();
    } catch (e) {
      logError("shutdown", e);
      throw new Error(`shutdown: ${message(e)}`);
    }
  }

  // handle answers one frame after the handshake; true means stop.
  async handle(m) {
    switch (m.msg.case) {
      case "batch":
        await this.batch(m.msg.value);
        return false;
      case "keepAlive":
        // Batches are answered one at a time, in order, before the next
        // frame is read: echoing now keeps the order.
        this.send({ case: "keepAlive", value: { nonce: m.msg.value.nonce } });
        return false;
      case "shutdown":
        return true;
      case "hello":
        throw new ProtocolError("the host sent a second Hello");
      default:
        throw new ProtocolError("the host sent an empty or unknown frame, which protocol version 1 does not allow");
    }
  }

  async batch(b) {
    const deadline = b.deadlineUnixMs ? new Date(Number(b.deadlineUnixMs)) : null;
    const info = {
      id: b.id,
      attempt: b.attempt,
      deadline,
      signal: deadline ? AbortSignal.timeout(Math.max(0, deadline.getTime() - Date.now())) : undefined,
    };
    const recs = b.records;
    let results;
    try {
      results = this.handler(recs, info);
      if (results !== null && typeof results === "object" && typeof results.then === "function") results = await results;
      if (!Array.isArray(results) || results.length !== recs.length) {
        throw new Error(`the batch handler returned ${Array.isArray(results) ? results.length : typeof results} results for ${recs.length} records`);
      }
    } catch (e) {
      logError(`batch ${b.id} of ${recs.length} records`, e);
      results = new Array(recs.length).fill(e instanceof Error ? e : new Error(String(e)));
    }
    const rrs = results.map((r, i) => recordResult(r, recs[i], this.unchanged));
    let body;
    try {
      body = encodeResult(b.id, rrs);
    } catch {
      // Some output does not encode: find it, and fail only its record.
      for (let i = 0; i < rrs.length; i++) {
        try {
          toBinary(RecordResultSchema, rrs[i]);
        } catch (e) {
          process.stderr.write(`culvert: record ${JSON.stringify(recs[i].id)}: output does not encode: ${e.message}\n`);
          rrs[i] = failure(`an output does not encode: ${e.message}`, false);
        }
      }
      body = encodeResult(b.id, rrs);
    }
    if (body.length > this.max) body = this.shrink(b.id, rrs);
    this.write(frame(body));
  }

  shrink(id, rrs) {
    const sizes = rrs.map((rr) => toBinary(RecordResultSchema, rr).length);
    const order = sizes.map((_, i) => i).sort((a, b) => sizes[b] - sizes[a]);
    let body = encodeResult(id, rrs);
    for (const i of order) {
      if (body.length <= this.max) break;
      const msg = `the outputs of this record (${sizes[i]} bytes) make the batch result exceed the frame limit of ${this.max} bytes`;
      process.stderr.write(`culvert: ${msg}\n`);
      rrs[i] = failure(msg, false);
      body = encodeResult(id, rrs);
    }
    return body;
  }
}

function encodeResult(id, results) {
  return toBinary(FunctionMessageSchema, create(FunctionMessageSchema, { msg: { case: "result", value: { batchId: id, results } } }));
}

function failure(msg, isRetryable) {
  return create(RecordResultSchema, { failure: { message: msg, retryable: isRetryable } });
}

function isRecord(x) {
  return x !== null && typeof x === "object" && x.$typeName === "culvert.v1.Record";
}

// recordResult turns what a handler returned for rec into a RecordResult.
// unchanged: the capability is in use, so pass() outputs name the input
// record (Output.unchanged, no record) instead of carrying it.
function recordResult(r, rec, unchanged) {
  if (r === null || r === undefined) return create(RecordResultSchema);
  if (r instanceof Error) return failure(message(r), retryable(r));
  const items = Array.isArray(r) ? r : [r];
  const outputs = [];
  for (const item of items) {
    let out = item;
    let name = "";
    if (item instanceof Output) {
      if (item[INPUT] === true) {
        // The input record as the host sent it (SPEC.md sections 4.3, 6).
        outputs.push(unchanged ? { unchanged: true, output: item.to ?? "" } : { record: rec, output: item.to ?? "" });
        continue;
      }
      out = item.record;
      name = item.to ?? "";
    }
    if (!isRecord(out)) {
      const what = out === null ? "null" : typeof out === "object" ? out.constructor?.name ?? "object" : typeof out;
      const msg = `an output must be a Record (culvert.record({...}) or the input) or an Output, not ${what}`;
      process.stderr.write(`culvert: record ${JSON.stringify(rec.id)}: ${msg}\n`);
      return failure(msg, false);
    }
    outputs.push({ record: out, output: name });
  }
  return create(RecordResultSchema, { outputs });
}

function message(e) {
  if (e instanceof Error) {
    if (e instanceof RetryableError) return e.message || "retryable error";
    return e.message ? `${e.name}: ${e.message}` : e.name;
  }
  return String(e);
}

function retryable(e) {
  return e !== null && typeof e === "object" && e.retryable === true;
}

function logError(where, e) {
  if (e instanceof RetryableError) {
    process.stderr.write(`culvert: ${where}: ${message(e)}\n`);
    return;
  }
  process.stderr.write(`culvert: error in ${where}: ${e && e.stack ? e.stack : e}\n`);
}
