import { oracleCheckpointSuite, oracleModelSuite } from "./oracle_util.ts";

oracleModelSuite("ref");
oracleCheckpointSuite("ref");
