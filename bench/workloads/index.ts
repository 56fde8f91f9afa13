/**
 * Every workload of the suite, in the order `npm run bench` runs them.
 *
 * Two more join when their stores land (each is built in its own branch): `s3` (a 256 MiB object
 * on a loopback S3 server, through the S3 store against ranged GETs) and `lz4` (a compressible
 * 256 MiB dataset packed with Lz4Store, against reading it unpacked).
 */
import type { Workload } from "../lib/workload.ts";
import { memory } from "./memory.ts";
import { random } from "./random.ts";
import { seqCold, seqWarm } from "./seq.ts";
import { sort } from "./sort.ts";
import { touch } from "./touch.ts";
import { write } from "./write.ts";

export const WORKLOADS: Workload[] = [seqWarm, seqCold, touch, random, sort, write, memory];
