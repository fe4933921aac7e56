/**
 * Text ⇄ token ids for Mamba language models.
 *
 * {@link Tokenizer} loads a Hugging Face `tokenizer.json` (plus `tokenizer_config.json`
 * when present) and encodes with `@huggingface/tokenizers` (tokenizers.js). For
 * byte-level BPE tokenizers (GPT-2 / GPT-NeoX style, which is what the Mamba checkpoints
 * use) decoding is done here, byte-exactly: every token maps to its raw bytes, and the
 * bytes are decoded as UTF-8. That makes `decode` a pure concatenation, so the streaming
 * decoder from {@link Tokenizer.createDecoder} is exact, and no "clean-up of tokenization
 * spaces" rewrites the text (so `decode(encode(s)) === s` for NFC text).
 *
 * {@link byteLevelTokenizerJSON} builds the tiny byte-level tokenizer (one id per byte plus
 * `<|endoftext|>`) shipped with the demo model.
 *
 * @module
 */

// The full npm: specifier (not a bare name mapped in deno.json) so that mod.ts also imports from
// projects without this repository's deno.json (tests/import_test.ts).
// deno-lint-ignore no-import-prefix
import { Tokenizer as HFTokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { TokenizerError } from "./errors.ts";

/**
 * Options of {@link Tokenizer.encode}.
 *
 * @example
 * ```ts
 * import type { EncodeOptions } from "./tokenizer.ts";
 * const opts: EncodeOptions = { addSpecialTokens: false };
 * ```
 */
export interface EncodeOptions {
  /**
   * Let the tokenizer's post-processor add its special tokens (BOS/EOS templates), as
   * Hugging Face's `tokenizer(text)` does. Default true. GPT-NeoX adds none.
   */
  addSpecialTokens?: boolean;
}

/**
 * Incremental detokenizer: feed ids one at a time, get the text they complete.
 *
 * @example
 * ```ts
 * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
 * const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
 * const dec = tok.createDecoder();
 * let text = "";
 * for (const id of tok.encode("héllo 😀")) text += dec.push(id);
 * text += dec.flush();
 * console.log(text); // "héllo 😀"
 * ```
 */
export interface StreamDecoder {
  /**
   * Adds one token id and returns the newly completed text. Never returns part of a
   * multi-byte character: incomplete UTF-8 sequences are held until completed.
   */
  push(id: number): string;
  /**
   * Returns whatever is still held (an incomplete sequence decodes to U+FFFD, as in
   * {@link Tokenizer.decode}) and resets the decoder.
   */
  flush(): string;
}

/**
 * The part of a tokenizer that text generation needs. {@link Tokenizer} implements it;
 * tests may supply their own.
 *
 * @example
 * ```ts
 * import { byteLevelTokenizerJSON, Tokenizer, type TextTokenizer } from "./tokenizer.ts";
 * const t: TextTokenizer = Tokenizer.fromJSON(byteLevelTokenizerJSON());
 * console.log(t.eosTokenId); // 256
 * ```
 */
export interface TextTokenizer {
  /** Id that ends a document / generation, if the tokenizer defines one. */
  readonly eosTokenId: number | undefined;
  /** Encodes text to ids. */
  encode(text: string, options?: EncodeOptions): number[];
  /** Decodes ids to text. */
  decode(ids: ArrayLike<number>): string;
  /** New streaming detokenizer whose concatenated output equals {@link decode}. */
  createDecoder(): StreamDecoder;
}

/** GPT-2's `bytes_to_unicode`: byte value → printable character. */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const table: string[] = new Array(256);
  for (const b of bs) table[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (table[b] === undefined) table[b] = String.fromCharCode(256 + n++);
  }
  return table;
}

/**
 * Builds the `tokenizer.json` of a pure byte-level tokenizer: a ByteLevel BPE with an
 * empty merges list whose vocabulary is the 256 GPT-2 `bytes_to_unicode` characters with
 * id = byte value, plus the special added token `<|endoftext|>` with id 256. The
 * pre-tokenizer is ByteLevel with `add_prefix_space: false, use_regex: false`; the
 * decoder is ByteLevel. Encoding any text yields its UTF-8 bytes as ids.
 *
 * The object follows the layout the Rust `tokenizers` library writes, so Python's
 * `tokenizers.Tokenizer.from_file` can read it too.
 *
 * @example
 * ```ts
 * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
 * const json = byteLevelTokenizerJSON();
 * // Deno.writeTextFileSync("models/demo/tokenizer.json", JSON.stringify(json));
 * const tok = Tokenizer.fromJSON(json);
 * console.log(tok.encode("é")); // [195, 169]
 * ```
 */
export function byteLevelTokenizerJSON(): Record<string, unknown> {
  const table = bytesToUnicode();
  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[table[b]] = b;
  const byteLevel = {
    type: "ByteLevel",
    add_prefix_space: false,
    trim_offsets: true,
    use_regex: false,
  };
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [
      {
        id: 256,
        content: "<|endoftext|>",
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: true,
      },
    ],
    normalizer: null,
    pre_tokenizer: { ...byteLevel },
    post_processor: null,
    decoder: { ...byteLevel },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
}

const EMPTY = new Uint8Array(0);
const utf8 = new TextEncoder();

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function tokenContent(v: unknown): string | undefined {
  if (typeof v === "string") return v;
  if (isRecord(v) && typeof v.content === "string") return v.content;
  return undefined;
}

/**
 * Token ids must be non-negative integers, and not far beyond the number of tokens: tokenizers.js
 * sizes tables by the largest id, so one id of 1e9 in a 5 KB file hangs the load (found by
 * tests/fuzz_input_test.ts). Real vocabularies number their tokens 0, 1, 2, …
 */
function checkIds(file: string, json: Record<string, unknown>): void {
  const model = json.model as Record<string, unknown>;
  const added = json.added_tokens ?? [];
  if (!Array.isArray(added)) throw new TokenizerError(file, "added_tokens must be an array");
  const vocab = model.vocab;
  const entries: [string, unknown][] = isRecord(vocab) ? Object.entries(vocab) : [];
  const count = entries.length + added.length;
  const limit = 2 * count + 1024;
  const check = (where: string, id: unknown) => {
    if (!Number.isSafeInteger(id) || (id as number) < 0 || (id as number) >= limit) {
      throw new TokenizerError(
        file,
        `${where}: the id must be an integer in [0, ${limit}) for ${count} tokens, got ` +
          JSON.stringify(id),
      );
    }
  };
  for (const [token, id] of entries) check(`model.vocab[${JSON.stringify(token)}]`, id);
  added.forEach((t, i) => check(`added_tokens[${i}].id`, isRecord(t) ? t.id : undefined));
}

const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

/** Default most bytes of a `tokenizer.json` (the largest published ones are tens of MB). */
const DEFAULT_MAX_TOKENIZER_BYTES = 512 * 1024 * 1024;

/** Options of {@link Tokenizer.load}. */
export interface TokenizerLoadOptions {
  /** Most bytes a tokenizer file may have, checked before it is read. Default 512 MiB. */
  maxBytes?: number;
}

function tooBig(file: string, size: number, maxBytes: number): TokenizerError {
  return new TokenizerError(
    file,
    `the file has ${size} bytes, more than maxBytes ${maxBytes} (pass { maxBytes } to allow more)`,
  );
}

/** Reads a response body, refusing it as soon as it passes `maxBytes`. */
async function boundedText(res: Response, file: string, maxBytes: number): Promise<string> {
  const declared = Number(res.headers.get("content-length") ?? NaN);
  if (declared > maxBytes) {
    await res.body?.cancel();
    throw tooBig(file, declared, maxBytes);
  }
  if (!res.body) return "";
  const parts: Uint8Array[] = [];
  let n = 0;
  for await (const part of res.body) {
    n += part.length;
    if (n > maxBytes) throw tooBig(file, n, maxBytes);
    parts.push(part);
  }
  const all = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    all.set(p, o);
    o += p.length;
  }
  return new TextDecoder().decode(all);
}

/** Parses a tokenizer file's text, naming the file when it is empty or not JSON. */
function parseJsonFile(file: string, text: string): unknown {
  if (text.trim().length === 0) throw new TokenizerError(file, "the file is empty");
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new TokenizerError(file, `not JSON: ${(e as Error).message}`, { cause: e });
  }
}

async function fetchText(
  url: URL,
  optional: boolean,
  maxBytes = DEFAULT_MAX_TOKENIZER_BYTES,
): Promise<string | undefined> {
  let res: Response;
  try {
    res = await fetch(url);
  } catch (e) {
    // fetch() of a missing file: URL throws instead of answering 404.
    if (optional && url.protocol === "file:") return undefined;
    throw e;
  }
  if (!res.ok) {
    await res.body?.cancel();
    if (optional && res.status === 404) return undefined;
    throw new Error(`cannot fetch ${url.href}: HTTP ${res.status}`);
  }
  return await boundedText(res, url.href, maxBytes);
}

/** Reads a local file after checking its size (a stat, so nothing is read when it is too big). */
async function readChecked(path: string, maxBytes: number): Promise<string> {
  const st = await Deno.stat(path);
  if (st.size > maxBytes) throw tooBig(path, st.size, maxBytes);
  return await Deno.readTextFile(path);
}

async function readOptional(path: string, maxBytes: number): Promise<string | undefined> {
  try {
    return await readChecked(path, maxBytes);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

function joinPath(dir: string, name: string): string {
  return dir.endsWith("/") || dir.endsWith("\\") ? dir + name : `${dir}/${name}`;
}

function dirName(path: string): string {
  const i = Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\"));
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/**
 * A Hugging Face tokenizer (`tokenizer.json`) with exact, streaming-safe decoding.
 *
 * @example
 * ```ts ignore
 * import { Tokenizer } from "./tokenizer.ts";
 * const tok = await Tokenizer.load("path/to/model-dir"); // reads tokenizer.json
 * const ids = tok.encode("Hello world");
 * console.log(tok.decode(ids)); // "Hello world"
 * ```
 */
export class Tokenizer implements TextTokenizer {
  /** Id that ends a document: tokenizer_config's `eos_token`, else `<|endoftext|>`. */
  readonly eosTokenId: number | undefined;
  /** One more than the largest token id (vocabulary plus added tokens). */
  readonly vocabSize: number;
  /** Whether decoding is byte-level (exact and streamed through UTF-8). */
  readonly byteLevel: boolean;
  #hf: HFTokenizer;
  #bytes: (Uint8Array | undefined)[] = [];
  #byteOf: Map<string, number> | undefined;
  #cleanUp: boolean;

  private constructor(tokenizerJson: Record<string, unknown>, config: Record<string, unknown>) {
    this.#hf = new HFTokenizer(tokenizerJson, config);
    const decoder = tokenizerJson.decoder;
    this.byteLevel = isRecord(decoder) && decoder.type === "ByteLevel";
    if (this.byteLevel) {
      const table = bytesToUnicode();
      this.#byteOf = new Map(table.map((ch, b) => [ch, b]));
    }
    this.#cleanUp = config.clean_up_tokenization_spaces === true;
    let maxId = -1;
    for (const id of this.#hf.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    const eosName = tokenContent(config.eos_token);
    let eos = eosName === undefined ? undefined : this.#hf.token_to_id(eosName);
    if (eos === undefined) eos = this.#hf.token_to_id("<|endoftext|>");
    this.eosTokenId = eos;
  }

  /**
   * Loads `tokenizer.json` and, when present, `tokenizer_config.json` from a local
   * directory, a local `….json` file path, or a URL (http(s) or file) of a directory or of
   * the `tokenizer.json` file itself.
   *
   * @param dirOrUrl Model directory (or tokenizer.json path), as a path or URL.
   * @param options `maxBytes`: the most bytes a tokenizer file may have (default 512 MiB).
   * @throws {Deno.errors.NotFound} when `tokenizer.json` is missing.
   * @throws {TokenizerError} (naming the file) when it or `tokenizer_config.json` is empty, too
   *   large, not JSON or not a tokenizer.
   *
   * @example
   * ```ts ignore
   * import { Tokenizer } from "./tokenizer.ts";
   * const local = await Tokenizer.load("./models/demo");
   * const remote = await Tokenizer.load(
   *   "https://huggingface.co/state-spaces/mamba-130m-hf/resolve/main/",
   * );
   * ```
   */
  static async load(
    dirOrUrl: string | URL,
    options: TokenizerLoadOptions = {},
  ): Promise<Tokenizer> {
    const maxBytes = options.maxBytes ?? DEFAULT_MAX_TOKENIZER_BYTES;
    let tokText: string;
    let tokFile: string;
    let cfgFile: string;
    let cfgText: string | undefined;
    if (dirOrUrl instanceof URL || SCHEME.test(dirOrUrl)) {
      let base = new URL(dirOrUrl);
      let file: URL;
      if (base.pathname.endsWith(".json")) {
        file = base;
      } else {
        if (!base.pathname.endsWith("/")) base = new URL(base.href.replace(/[?#].*$/, "") + "/");
        file = new URL("tokenizer.json", base);
      }
      const text = await fetchText(file, false, maxBytes);
      if (text === undefined) throw new Error(`cannot fetch ${file.href}`);
      tokText = text;
      tokFile = file.href;
      const cfgUrl = new URL("tokenizer_config.json", file);
      cfgFile = cfgUrl.href;
      cfgText = await fetchText(cfgUrl, true, maxBytes);
    } else {
      let dir = dirOrUrl;
      let file = joinPath(dirOrUrl, "tokenizer.json");
      if (dirOrUrl.endsWith(".json")) {
        const st = await Deno.stat(dirOrUrl).catch(() => undefined);
        if (st?.isFile) {
          file = dirOrUrl;
          dir = dirName(dirOrUrl);
        }
      }
      tokFile = file;
      try {
        tokText = await readChecked(file, maxBytes);
      } catch (e) {
        if (e instanceof Deno.errors.NotFound) {
          throw new Deno.errors.NotFound(`tokenizer.json not found: ${file}`);
        }
        throw e;
      }
      cfgFile = joinPath(dir, "tokenizer_config.json");
      cfgText = await readOptional(cfgFile, maxBytes);
    }
    const tokJson = parseJsonFile(tokFile, tokText);
    const cfg = cfgText === undefined ? undefined : parseJsonFile(cfgFile, cfgText);
    if (cfg !== undefined && !isRecord(cfg)) {
      throw new TokenizerError(cfgFile, "tokenizer_config.json must be a JSON object");
    }
    return Tokenizer.#build(tokFile, tokJson, cfg);
  }

  /** Builds a tokenizer from parsed JSON, naming `file` in every error. */
  static #build(file: string, tokenizerJson: unknown, config?: Record<string, unknown>): Tokenizer {
    if (!isRecord(tokenizerJson) || !isRecord(tokenizerJson.model)) {
      throw new TokenizerError(file, "not a tokenizer: expected an object with a `model` object");
    }
    checkIds(file, tokenizerJson);
    const json = { added_tokens: [], ...tokenizerJson };
    try {
      return new Tokenizer(json, config ?? {});
    } catch (e) {
      // tokenizers.js reports malformed fields as TypeErrors (or worse) without the file.
      throw new TokenizerError(file, `not a valid tokenizer: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }

  /**
   * Builds a tokenizer from parsed `tokenizer.json` (and optional `tokenizer_config.json`)
   * objects.
   *
   * @throws {TokenizerError} when the objects do not look like a tokenizer.
   *
   * @example
   * ```ts
   * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
   * const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON(), { eos_token: "<|endoftext|>" });
   * console.log(tok.eosTokenId); // 256
   * ```
   */
  static fromJSON(tokenizerJson: object, config?: object): Tokenizer {
    if (config !== undefined && !isRecord(config)) {
      throw new TokenizerError("tokenizer_config.json", "must be a JSON object");
    }
    return Tokenizer.#build("tokenizer.json", tokenizerJson, config);
  }

  /**
   * Encodes text to token ids.
   *
   * @example
   * ```ts
   * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
   * const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
   * console.log(tok.encode("hi<|endoftext|>")); // [104, 105, 256]
   * ```
   */
  encode(text: string, options: EncodeOptions = {}): number[] {
    if (text.length === 0) return [];
    return this.#hf.encode(text, { add_special_tokens: options.addSpecialTokens ?? true }).ids;
  }

  /**
   * Decodes token ids to text. Special tokens are kept; ids outside the vocabulary are
   * skipped; incomplete UTF-8 sequences become U+FFFD.
   *
   * @example
   * ```ts
   * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
   * const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
   * console.log(tok.decode([240, 159, 152, 128])); // "😀"
   * ```
   */
  decode(ids: ArrayLike<number>): string {
    if (ids.length === 0) return "";
    if (this.byteLevel) {
      let len = 0;
      const parts: Uint8Array[] = new Array(ids.length);
      for (let i = 0; i < ids.length; i++) {
        const b = this.tokenBytes(ids[i]);
        parts[i] = b;
        len += b.length;
      }
      const all = new Uint8Array(len);
      let o = 0;
      for (const p of parts) {
        all.set(p, o);
        o += p.length;
      }
      return new TextDecoder("utf-8", { ignoreBOM: true }).decode(all);
    }
    const known = Array.from(ids).filter((id) => this.#hf.id_to_token(id) !== undefined);
    if (known.length === 0) return "";
    return this.#hf.decode(known, { clean_up_tokenization_spaces: this.#cleanUp });
  }

  /**
   * Creates a streaming detokenizer. For byte-level tokenizers the concatenation of all
   * `push` results and the final `flush` equals `decode(allIds)` exactly. For other
   * tokenizers it uses the usual prefix-diff method, which is exact for decoders that
   * act token by token.
   *
   * @example
   * ```ts
   * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
   * const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
   * const dec = tok.createDecoder();
   * console.log(JSON.stringify(dec.push(0xc3))); // "" (first half of "é")
   * console.log(dec.push(0xa9)); // "é"
   * console.log(JSON.stringify(dec.flush())); // ""
   * ```
   */
  createDecoder(): StreamDecoder {
    if (this.byteLevel) {
      const td = new TextDecoder("utf-8", { ignoreBOM: true });
      return {
        push: (id: number) => td.decode(this.tokenBytes(id), { stream: true }),
        flush: () => td.decode(),
      };
    }
    let ids: number[] = [];
    let prefix = 0;
    let read = 0;
    const step = (final: boolean): string => {
      const before = this.decode(ids.slice(prefix, read));
      const after = this.decode(ids.slice(prefix));
      if (after.length > before.length && (final || !after.endsWith("\uFFFD"))) {
        const delta = after.slice(before.length);
        prefix = read;
        read = ids.length;
        return delta;
      }
      return "";
    };
    return {
      push: (id: number) => {
        ids.push(id);
        return step(false);
      },
      flush: () => {
        const out = step(true);
        ids = [];
        prefix = 0;
        read = 0;
        return out;
      },
    };
  }

  /**
   * Raw bytes a token stands for in a byte-level tokenizer (empty for unknown ids).
   * Tokens that are not made of byte characters (e.g. some added tokens) give their
   * UTF-8 encoding, as the Rust `tokenizers` ByteLevel decoder does.
   *
   * @example
   * ```ts
   * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
   * const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
   * console.log(tok.tokenBytes(256).length); // 13 ("<|endoftext|>")
   * ```
   */
  tokenBytes(id: number): Uint8Array {
    const cached = this.#bytes[id];
    if (cached !== undefined) return cached;
    const token = Number.isInteger(id) && id >= 0 ? this.#hf.id_to_token(id) : undefined;
    if (token === undefined) return EMPTY;
    let out: Uint8Array | undefined;
    const map = this.#byteOf;
    if (map !== undefined) {
      out = new Uint8Array(token.length);
      let n = 0;
      for (const ch of token) {
        const b = map.get(ch);
        if (b === undefined) {
          out = undefined;
          break;
        }
        out[n++] = b;
      }
      if (out !== undefined) out = out.subarray(0, n);
    }
    out ??= utf8.encode(token);
    this.#bytes[id] = out;
    return out;
  }

  /**
   * Id of a token string (vocabulary or added token), if any.
   *
   * @example
   * ```ts
   * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
   * const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
   * console.log(tok.tokenToId("<|endoftext|>")); // 256
   * ```
   */
  tokenToId(token: string): number | undefined {
    return this.#hf.token_to_id(token);
  }

  /**
   * Token string of an id (in the tokenizer's internal alphabet, e.g. `Ġworld`), if any.
   *
   * @example
   * ```ts
   * import { byteLevelTokenizerJSON, Tokenizer } from "./tokenizer.ts";
   * const tok = Tokenizer.fromJSON(byteLevelTokenizerJSON());
   * console.log(tok.idToToken(32)); // "Ġ"
   * ```
   */
  idToToken(id: number): string | undefined {
    return this.#hf.id_to_token(id);
  }
}
