/**
 * Hub ids: `MambaLM.load("state-spaces/mamba-130m")` resolves the id to a snapshot directory in
 * the Hugging Face cache (see {@link RepoCache} for the layout), downloading what is missing,
 * and the model loads from that directory as from any other.
 *
 * What is fetched: `config.json`; the weights the loader reads, in its order of preference —
 * `model.safetensors`, else `model.safetensors.index.json` and its shards, else
 * `pytorch_model.bin`, else `pytorch_model.bin.index.json` and its shards; and the tokenizer: the repository's `tokenizer.json` (with
 * `tokenizer_config.json` when there is one), else `EleutherAI/gpt-neox-20b`'s, as the Mamba
 * reference code does (the `state-spaces` repositories have none). A branch or tag is resolved to
 * its commit once, and every file comes from that commit.
 *
 * @module
 */

import { downloadBlob, type DownloadProgress, type HubClient, lookupFile } from "./download.ts";
import { HubError } from "./errors.ts";
import {
  COMMIT_HASH,
  env,
  envFlag,
  hubCacheDir,
  isSafeRelativePath,
  RepoCache,
} from "./hf_cache.ts";

export type { DownloadProgress } from "./download.ts";

/** Options for models named by a Hub id (part of {@link LoadOptions}). */
export interface HubOptions {
  /** A branch, tag or commit hash. Default `"main"`. */
  revision?: string;
  /**
   * Never use the network: take the files from the cache (`refs/<revision>` → snapshot). Default:
   * whether `HF_HUB_OFFLINE` is set (`1`, `true`, `yes`, `on`).
   */
  offline?: boolean;
  /** The hub cache. Default `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. */
  cacheDir?: string;
  /** The Hub. Default `$HF_ENDPOINT`, else `https://huggingface.co`. */
  endpoint?: string;
  /** A token for private or gated repositories. Default `$HF_TOKEN`; `false` sends none. */
  token?: string | false;
  /** Called as file downloads progress (not called for files already cached). */
  onDownload?: (progress: DownloadProgress) => void;
}

/** The repository whose tokenizer Mamba checkpoints without one use (as mamba_ssm does). */
export const FALLBACK_TOKENIZER_REPO = "EleutherAI/gpt-neox-20b";

/** A model repository resolved to a snapshot directory of the cache. */
export interface HubSnapshot {
  /** `org/name`. */
  readonly repo: string;
  /** The commit the files are from. */
  readonly commit: string;
  /** The snapshot directory (an absolute path when the cache's is). */
  readonly dir: string;
  /** The weight files picked, relative to `dir`. */
  readonly weights: readonly string[];
  /** A directory holding the tokenizer.json to use, when one could be had. */
  readonly tokenizerDir: string | undefined;
  /** Why there is no tokenizer, when there is none. */
  readonly tokenizerProblem: string | undefined;
}

const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * Whether `s` has the form of a Hub model id, `org/name` (letters, digits, `-`, `_`, `.`; no
 * `--` or `..`, at most 96 characters, as the Hub allows).
 */
export function isHubId(s: string): boolean {
  return s.length <= 96 && REPO_ID.test(s) && !s.includes("--") && !s.includes("..") &&
    !s.endsWith(".") && !s.endsWith("-");
}

/** Whether `s` names a Hub model rather than a local path: a Hub id that is not a local path. */
export async function isHubModel(s: string): Promise<boolean> {
  if (!isHubId(s)) return false;
  try {
    await Deno.stat(s);
    return false;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) return true;
    throw e;
  }
}

/** The settings a download uses: options, else the environment. */
interface Resolved {
  revision: string;
  offline: boolean;
  cacheDir: string;
  client: HubClient;
}

function resolveOptions(options: HubOptions): Resolved {
  const revision = options.revision ?? "main";
  if (!isSafeRelativePath(revision)) {
    throw new HubError(`revision "${revision}" is not a branch, tag or commit name`);
  }
  const endpoint = (options.endpoint ?? env("HF_ENDPOINT") ?? "https://huggingface.co")
    .replace(/\/+$/, "");
  const token = options.token === false
    ? undefined
    : options.token ?? env("HF_TOKEN") ?? env("HUGGING_FACE_HUB_TOKEN");
  const onDownload = options.onDownload;
  return {
    revision,
    offline: options.offline ?? (envFlag("HF_HUB_OFFLINE") || envFlag("TRANSFORMERS_OFFLINE")),
    cacheDir: options.cacheDir ?? hubCacheDir(),
    client: { endpoint, token, onProgress: onDownload },
  };
}

/** The weight files of a snapshot, in the loader's order of preference (an index lists shards). */
const WEIGHT_FILES = [
  "model.safetensors",
  "model.safetensors.index.json",
  "pytorch_model.bin",
  "pytorch_model.bin.index.json",
];

/** The shard names the index `file` lists, checked to stay inside the snapshot. */
function shardNames(repo: string, file: string, text: string): string[] {
  let map: unknown;
  try {
    map = JSON.parse(text)?.weight_map;
  } catch (e) {
    throw new HubError(`${repo}/${file}: not JSON: ${(e as Error).message}`, repo, file);
  }
  if (typeof map !== "object" || map === null) {
    throw new HubError(`${repo}/${file}: no "weight_map" object`, repo, file);
  }
  const names = [...new Set(Object.values(map as Record<string, unknown>))];
  for (const n of names) {
    if (typeof n !== "string" || !isSafeRelativePath(n)) {
      throw new HubError(
        `${repo}/${file}: shard name ${JSON.stringify(n)} is not a file name`,
        repo,
        file,
      );
    }
  }
  return (names as string[]).sort();
}

/** One repository at one revision: files fetched into the cache as needed. */
class RepoFetcher {
  readonly cache: RepoCache;
  readonly repo: string;
  readonly #r: Resolved;

  constructor(repo: string, r: Resolved) {
    this.repo = repo;
    this.#r = r;
    this.cache = new RepoCache(r.cacheDir, repo);
  }

  /**
   * The commit to take files from: offline, what the cache says the revision is; online, what
   * the Hub says (asking about `probe`, a file the repository must have), unless the revision is
   * a commit whose `probe` is cached.
   */
  async commit(probe: string): Promise<string> {
    const { revision, offline } = this.#r;
    if (offline || (COMMIT_HASH.test(revision) && await this.cache.has(revision, probe))) {
      const commit = await this.cache.commitOf(revision);
      if (commit === undefined) {
        throw new HubError(
          `${this.repo}: offline, and revision "${revision}" of it is not in the cache ` +
            `(no ${this.cache.root}/refs/${revision}); load it once online first`,
          this.repo,
        );
      }
      return commit;
    }
    const got = await this.#lookup(revision, probe);
    if (!got.found) {
      throw new HubError(
        `${this.repo} has no ${probe} at revision "${revision}" (is it a model repository?)`,
        this.repo,
        probe,
      );
    }
    await this.cache.writeRef(revision, got.meta.commit);
    await this.#fetch(got.meta.commit, probe, got.meta);
    return got.meta.commit;
  }

  /**
   * Makes `file` of `commit` present in the snapshot; `false` when the repository has no such
   * file (offline: when the cache does not have it).
   */
  async ensure(commit: string, file: string): Promise<boolean> {
    if (await this.cache.has(commit, file)) return true;
    if (this.#r.offline || await this.cache.knownMissing(commit, file)) return false;
    const got = await this.#lookup(commit, file);
    if (!got.found) {
      await this.cache.markMissing(commit, file).catch(() => {}); // a hint only
      return false;
    }
    await this.#fetch(commit, file, got.meta);
    return true;
  }

  async #lookup(revision: string, file: string) {
    try {
      return await lookupFile(this.#r.client, this.repo, revision, file);
    } catch (e) {
      throw await this.#withCacheHint(e);
    }
  }

  async #fetch(
    commit: string,
    file: string,
    meta: Parameters<typeof downloadBlob>[3],
  ): Promise<void> {
    if (await this.cache.has(commit, file)) return; // (the cache may be read-only)
    if (!(await this.cache.hasBlob(meta.etag))) {
      try {
        await downloadBlob(this.#r.client, this.cache, file, meta);
      } catch (e) {
        throw await this.#withCacheHint(e);
      }
    }
    await this.cache.link(commit, file, meta.etag);
  }

  /**
   * A failure to get a file (network, Hub unavailable, repository or revision not found, a bad
   * download), with how to use the cached copy when there is one.
   */
  async #withCacheHint(e: unknown): Promise<unknown> {
    if (!(e instanceof HubError)) return e;
    if (!(await this.#cachedCopy())) return e;
    return new HubError(
      `${e.message}. ${this.repo} has files in the cache (${this.cache.root}): to use them ` +
        `without the network, load with { offline: true } or set HF_HUB_OFFLINE=1`,
      e.repo,
      e.file,
      { cause: e },
    );
  }

  /** Whether the cache holds a loadable copy of the revision: its config and weights. */
  async #cachedCopy(): Promise<boolean> {
    const commit = await this.cache.commitOf(this.#r.revision);
    if (commit === undefined || !(await this.cache.has(commit, "config.json"))) return false;
    for (const f of WEIGHT_FILES) if (await this.cache.has(commit, f)) return true;
    return false;
  }

  /** Whether this fetcher only reads the cache. */
  get offline(): boolean {
    return this.#r.offline;
  }

  /** Where `file` of `commit` is. */
  path(commit: string, file: string): string {
    return `${this.cache.snapshotDir(commit)}/${file}`;
  }
}

/**
 * Resolves a Hub model id to a snapshot directory of the cache, downloading `config.json`, the
 * weights and the tokenizer when they are not cached (see the module doc for which files).
 *
 * @throws {HubError} naming the repository and file: not found, no weights, a network failure,
 *   a checksum mismatch, or offline and not cached. A missing tokenizer is not an error: the
 *   snapshot says why there is none.
 */
export async function hubSnapshot(repo: string, options: HubOptions = {}): Promise<HubSnapshot> {
  if (!isHubId(repo)) throw new HubError(`"${repo}" is not a Hub id (org/name)`, repo);
  const r = resolveOptions(options);
  const f = new RepoFetcher(repo, r);
  const commit = await f.commit("config.json");
  if (!(await f.ensure(commit, "config.json"))) {
    throw new HubError(
      `${repo}: ${r.offline ? "offline, and " : ""}config.json of revision "${r.revision}" is ` +
        `not in the cache (${f.path(commit, "config.json")}); load it once online first`,
      repo,
      "config.json",
    );
  }
  const weights = await pickWeights(f, commit);
  const tok = await tokenizerFor(f, commit, r);
  return { repo, commit, dir: f.cache.snapshotDir(commit), weights, ...tok };
}

async function pickWeights(f: RepoFetcher, commit: string): Promise<string[]> {
  for (const file of WEIGHT_FILES) {
    if (!(await f.ensure(commit, file))) continue;
    if (!file.endsWith(".index.json")) return [file];
    const shards = shardNames(f.repo, file, await Deno.readTextFile(f.path(commit, file)));
    for (const shard of shards) {
      if (!(await f.ensure(commit, shard))) {
        throw new HubError(
          `${f.repo}: shard ${shard}, listed in ${file}, is ` +
            (f.offline ? "not in the cache" : "not in the repository"),
          f.repo,
          shard,
        );
      }
    }
    return [file, ...shards];
  }
  throw new HubError(
    f.offline
      ? `${f.repo}: offline, and the cache has none of ${WEIGHT_FILES.join(", ")} in ` +
        `${f.cache.snapshotDir(commit)}; load it once online first`
      : `${f.repo} (commit ${commit}) has no weights: none of ${WEIGHT_FILES.join(", ")}`,
    f.repo,
  );
}

async function tokenizerFor(
  f: RepoFetcher,
  commit: string,
  r: Resolved,
): Promise<{ tokenizerDir: string | undefined; tokenizerProblem: string | undefined }> {
  let own: string;
  try {
    if (await f.ensure(commit, "tokenizer.json")) {
      await f.ensure(commit, "tokenizer_config.json").catch(() => false);
      return { tokenizerDir: f.cache.snapshotDir(commit), tokenizerProblem: undefined };
    }
    own = `${f.repo} has no tokenizer.json${r.offline ? " in the cache" : ""}`;
  } catch (e) {
    own = `${f.repo}'s tokenizer.json could not be had (${(e as Error).message})`;
  }
  if (f.repo === FALLBACK_TOKENIZER_REPO) return { tokenizerDir: undefined, tokenizerProblem: own };
  // As mamba_ssm does: the GPT-NeoX tokenizer the Mamba models were trained with.
  try {
    const neox = new RepoFetcher(FALLBACK_TOKENIZER_REPO, { ...r, revision: "main" });
    const c = await neox.commit("tokenizer.json");
    if (await neox.ensure(c, "tokenizer.json")) {
      await neox.ensure(c, "tokenizer_config.json").catch(() => false);
      return { tokenizerDir: neox.cache.snapshotDir(c), tokenizerProblem: undefined };
    }
    return {
      tokenizerDir: undefined,
      tokenizerProblem:
        `${own}, and ${FALLBACK_TOKENIZER_REPO}'s tokenizer.json is not in the cache`,
    };
  } catch (e) {
    return {
      tokenizerDir: undefined,
      tokenizerProblem: `${own}, and ${FALLBACK_TOKENIZER_REPO}'s could not be had either: ${
        (e as Error).message
      }`,
    };
  }
}
