/**
 * `deno task serve`: the completions server from the command line (see {@link USAGE}).
 *
 * @module
 */

import { MambaError } from "../errors.ts";
import { configFromArgs, ServeUsageError, startServer, USAGE } from "./config.ts";

if (import.meta.main) {
  let cfg;
  try {
    cfg = configFromArgs(Deno.args);
  } catch (e) {
    if (!(e instanceof ServeUsageError)) throw e;
    console.error(`error: ${e.message}\n\n${USAGE}`);
    Deno.exit(2);
  }
  if (cfg === "help") {
    console.log(USAGE);
    Deno.exit(0);
  }
  let started;
  try {
    started = await startServer(cfg);
  } catch (e) {
    // A model the server cannot run (missing, malformed, not Mamba): the message says which.
    if (!(e instanceof MambaError)) throw e;
    console.error(`error: ${e.message}`);
    Deno.exit(1);
  }
  const { lm, server } = started;
  Deno.serve({
    port: cfg.port,
    hostname: cfg.hostname,
    onListen: ({ hostname, port }) =>
      console.error(
        `mamba serve: ${cfg.model} on ${lm.backendName}, http://${hostname}:${port}/v1 ` +
          `(max batch ${cfg.maxBatch}, sessions in ${cfg.sessionDir})`,
      ),
  }, server.fetch);
}
