#!/usr/bin/env node
// Echo function that honours the conformance convention (proto/SPEC.md,
// appendix A), so that `culvert fn conform -- node index.js` can drive every
// rule: with CULVERT_CONFORMANCE=1 in its environment, a record's
// culvert-conformance header asks it to echo, emit N copies, drop, fail,
// fail retryably or print to stdout. Every other record is echoed, with
// culvert.pass().
//
// With --batch it serves the same answers through the per-batch API
// (culvert.runBatch), failing single records by putting an Error in their
// slot, so that the kit checks that API too.
import { clone } from "@bufbuild/protobuf";
import * as culvert from "../../culvert.js";

const HEADER = "culvert-conformance";
const enabled = process.env.CULVERT_CONFORMANCE === "1";

function directive(record) {
  const h = record.headers.find((h) => h.name === HEADER);
  return h ? Buffer.from(h.value).toString("latin1") : null;
}

function handle(record) {
  const d = enabled ? directive(record) : null;
  // The record passes on as it came: culvert.pass(), so that a host offering
  // the "unchanged" capability (the kit's rule "unchanged") gets
  // Output.unchanged, and any other gets the record back.
  if (d === null || d === "echo") return culvert.pass();
  if (d === "drop") return null;
  if (d === "fail") throw new Error("failure requested by the culvert-conformance header");
  if (d === "retry") throw new culvert.RetryableError("failure requested by the culvert-conformance header");
  const emit = /^emit=(0|[1-9][0-9]{0,3})$/.exec(d);
  if (emit && Number(emit[1]) <= 1000) {
    const copy = clone(culvert.RecordSchema, record);
    copy.source = undefined;
    return Array.from({ length: Number(emit[1]) }, () => copy);
  }
  if (d.startsWith("stdout=") && /^[\x20-\x7e]*$/.test(d.slice(7))) {
    console.log(d.slice(7));
    return record;
  }
  throw new Error(`${HEADER}: unknown directive ${JSON.stringify(d)} (echo, emit=N, drop, fail, retry, stdout=TEXT)`);
}

if (process.argv.slice(2).includes("--batch")) {
  culvert.runBatch(
    (records) =>
      records.map((record) => {
        try {
          return handle(record);
        } catch (e) {
          return e; // the failure of this record only
        }
      }),
    { agent: "conformance-node-batch/1" },
  );
} else {
  culvert.run(handle, { agent: "conformance-node/1" });
}
