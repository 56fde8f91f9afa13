/** Every workload of the suite, in the order `npm run bench` runs them. */
import type { Workload } from "../lib/workload.ts";
import { memory } from "./memory.ts";
import { lz4 } from "./lz4.ts";
import { random } from "./random.ts";
import { s3 } from "./s3.ts";
import { seqCold, seqWarm } from "./seq.ts";
import { sort } from "./sort.ts";
import { touch } from "./touch.ts";
import { write } from "./write.ts";

export const WORKLOADS: Workload[] = [seqWarm, seqCold, touch, random, sort, write, memory, s3, lz4];
