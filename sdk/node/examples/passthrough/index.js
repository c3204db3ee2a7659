#!/usr/bin/env node
// The smallest Culvert function: every record passes through unchanged.
import * as culvert from "../../culvert.js";

culvert.run((record) => record, { agent: "passthrough-node/1" });
