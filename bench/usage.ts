/**
 * `--help` for the benchmark scripts: prints the script's own module documentation (its leading
 * JSDoc block), so the usage text lives in one place.
 *
 * @module
 */

/** Prints the leading JSDoc of the module at `url` without its comment markers. */
export async function printUsage(url: string): Promise<void> {
  const src = await (await fetch(url)).text();
  const doc = src.match(/^\/\*\*([\s\S]*?)\*\//)?.[1] ?? "";
  const text = doc.split("\n")
    .map((l) => l.replace(/^\s*\* ?/, ""))
    .filter((l) => !l.startsWith("@module"))
    .join("\n")
    .trim();
  console.log(text);
}
