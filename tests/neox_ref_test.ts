import { neoxSuite } from "./neox_util.ts";

neoxSuite("ref");
