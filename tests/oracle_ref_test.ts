import { oracleModelSuite } from "./oracle_util.ts";

oracleModelSuite("ref");
