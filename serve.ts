/**
 * The completions server as a `deno serve` module: `MAMBA_MODEL=models/demo deno serve -A serve.ts`
 * (or `deno serve -A --parallel serve.ts`). Configured by environment variables (see
 * `deno task serve --help` for the list: MAMBA_MODEL, MAMBA_BACKEND, MAMBA_MAX_BATCH, …).
 *
 * With `--parallel`, every worker loads its own copy of the model and batches its own
 * requests; sessions are shared only through the session directory (a session written by one
 * worker is read by another from the directory, and two requests on one session at once in two
 * workers are not told apart).
 *
 * @module
 */

import { configFromEnv, startServer } from "./src/server/config.ts";

const { server } = await startServer(configFromEnv());

/** The `deno serve` handler. */
export default { fetch: server.fetch } satisfies Deno.ServeDefaultExport;
