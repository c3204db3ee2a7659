#!/usr/bin/env node
// The smallest Culvert function: every record passes through unchanged.
// It answers with culvert.pass(), so that a host offering the protocol's
// "unchanged" capability gets no record back, only "the input, as it
// came"; with --emit it returns each record itself instead, which sends it
// back (what it did before the capability, and what an SDK without it does).
import * as culvert from "../../culvert.js";

const handler = process.argv.slice(2).includes("--emit") ? (record) => record : () => culvert.pass();
culvert.run(handler, { agent: "passthrough-node/1" });
