/**
 * The Hugging Face hub cache, laid out exactly as Python's `huggingface_hub` lays it out, so that
 * files either side downloaded are reused by the other:
 *
 * ```text
 * $HF_HUB_CACHE/                      (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
 *   models--org--name/
 *     blobs/<etag>                    file contents, named by etag: the sha256 of an LFS file,
 *                                     the git blob sha1 of a small one
 *     blobs/<etag>.incomplete         a download in progress (resumed from its length)
 *     snapshots/<commit>/<file>       relative symlink to ../../blobs/<etag>
 *     refs/<revision>                 text file: the commit a branch or tag pointed to
 *     .no_exist/<commit>/<file>       empty file: the Hub said <file> is not in <commit>
 *   .locks/models--org--name/<etag>.lock   held (flock) while a blob downloads
 * ```
 *
 * @module
 */

import { HubError } from "./errors.ts";

/** A full commit hash: a revision that never moves. */
export const COMMIT_HASH = /^[0-9a-f]{40}$/;

/** An environment variable, or `undefined` when unset or when env access is not granted. */
export function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/** `huggingface_hub`'s reading of a boolean variable such as `HF_HUB_OFFLINE`. */
export function envFlag(name: string): boolean {
  return /^(1|on|yes|true)$/i.test(env(name) ?? "");
}

/**
 * The hub cache directory, as `huggingface_hub` finds it: `$HF_HUB_CACHE` (or its older name
 * `$HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
 * `~/.cache/huggingface/hub`.
 */
export function hubCacheDir(): string {
  const direct = env("HF_HUB_CACHE") ?? env("HUGGINGFACE_HUB_CACHE");
  if (direct) return expandHome(direct);
  const hfHome = env("HF_HOME");
  if (hfHome) return `${expandHome(hfHome)}/hub`;
  const xdg = env("XDG_CACHE_HOME");
  if (xdg) return `${expandHome(xdg)}/huggingface/hub`;
  return `${home()}/.cache/huggingface/hub`;
}

function home(): string {
  const h = env("HOME") ?? env("USERPROFILE");
  if (!h) {
    throw new HubError(
      "cannot find the Hugging Face cache: HOME is not set (or not readable); set HF_HUB_CACHE or pass cacheDir",
    );
  }
  return h;
}

function expandHome(p: string): string {
  return p === "~" || p.startsWith("~/") ? home() + p.slice(1) : p;
}

/** Whether `p` is a safe relative path inside a directory (no `..`, not absolute). */
export function isSafeRelativePath(p: string): boolean {
  if (p.length === 0 || p.startsWith("/") || p.includes("\\") || p.includes("\0")) return false;
  return p.split("/").every((s) => s.length > 0 && s !== "." && s !== "..");
}

async function statOrUndefined(path: string): Promise<Deno.FileInfo | undefined> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
      return undefined;
    }
    throw e;
  }
}

/** One repository's part of the cache. */
export class RepoCache {
  /** The cache root (`…/hub`). */
  readonly cacheDir: string;
  /** `org/name`. */
  readonly repo: string;
  /** `cacheDir/models--org--name`. */
  readonly root: string;

  constructor(cacheDir: string, repo: string) {
    this.cacheDir = cacheDir.replace(/\/+$/, "") || "/";
    this.repo = repo;
    this.root = `${this.cacheDir}/${RepoCache.folderName(repo)}`;
  }

  /** `models--org--name`, huggingface_hub's folder name for a model repository. */
  static folderName(repo: string): string {
    return ["models", ...repo.split("/")].join("--");
  }

  /** Where the contents of the file with this etag live. */
  blobPath(etag: string): string {
    return `${this.root}/blobs/${etag}`;
  }

  /** Where a download of that blob grows until it is complete and checked. */
  incompletePath(etag: string): string {
    return `${this.root}/blobs/${etag}.incomplete`;
  }

  /** The lock file held while that blob downloads (huggingface_hub's place for it). */
  lockPath(etag: string): string {
    return `${this.cacheDir}/.locks/${RepoCache.folderName(this.repo)}/${etag}.lock`;
  }

  /** The directory of a commit's files. */
  snapshotDir(commit: string): string {
    return `${this.root}/snapshots/${commit}`;
  }

  /** The commit that `revision` resolves to: itself if a commit hash, else what refs/ says. */
  async commitOf(revision: string): Promise<string | undefined> {
    if (COMMIT_HASH.test(revision)) return revision;
    try {
      const text = (await Deno.readTextFile(`${this.root}/refs/${revision}`)).trim();
      return COMMIT_HASH.test(text) ? text : undefined;
    } catch (e) {
      if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
        return undefined;
      }
      throw e;
    }
  }

  /** Records that `revision` (a branch or tag) points at `commit`. */
  async writeRef(revision: string, commit: string): Promise<void> {
    if (revision === commit) return;
    if ((await this.commitOf(revision)) === commit) return; // the cache may be read-only
    const path = `${this.root}/refs/${revision}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(path, commit);
  }

  /** Whether `file` of `commit` is here (its link resolves to a blob). */
  async has(commit: string, file: string): Promise<boolean> {
    return (await statOrUndefined(`${this.snapshotDir(commit)}/${file}`))?.isFile === true;
  }

  /** Whether the Hub is known to have no `file` at `commit`. */
  async knownMissing(commit: string, file: string): Promise<boolean> {
    return (await statOrUndefined(`${this.root}/.no_exist/${commit}/${file}`)) !== undefined;
  }

  /** Records that the Hub has no `file` at `commit`. */
  async markMissing(commit: string, file: string): Promise<void> {
    const path = `${this.root}/.no_exist/${commit}/${file}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeFile(path, new Uint8Array(0));
  }

  /** Whether a complete blob with this etag is here. */
  async hasBlob(etag: string): Promise<boolean> {
    return (await statOrUndefined(this.blobPath(etag)))?.isFile === true;
  }

  /**
   * Puts `file` into the snapshot of `commit` as a relative symlink to its blob (a copy where
   * symlinks cannot be made, as huggingface_hub does on such file systems).
   */
  async link(commit: string, file: string, etag: string): Promise<void> {
    const pointer = `${this.snapshotDir(commit)}/${file}`;
    await Deno.mkdir(pointer.slice(0, pointer.lastIndexOf("/")), { recursive: true });
    const depth = 2 + file.split("/").length - 1; // snapshots/<commit>/[sub/]file → root
    const target = `${"../".repeat(depth)}blobs/${etag}`;
    await Deno.remove(pointer).catch(() => {});
    try {
      await Deno.symlink(target, pointer);
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) return; // linked meanwhile by another process
      await Deno.copyFile(this.blobPath(etag), pointer);
    }
  }
}
