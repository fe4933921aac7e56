/**
 * Talking to the Hugging Face Hub: what a file of a repository is (`HEAD` on
 * `{endpoint}/{repo}/resolve/{revision}/{file}`), and getting its bytes into the cache.
 *
 * The Hub answers `HEAD` with the commit the revision resolves to (`x-repo-commit`) and the
 * file's etag: for a file kept in git the git blob sha1, for an LFS file a 302 to a CDN whose
 * `x-linked-etag` is the sha256 of the contents and `x-linked-size` their length. Downloads grow
 * `blobs/<etag>.incomplete`, continue from its length with `Range: bytes=N-` after a dropped
 * connection (in this call, or a later one), are hashed as they stream and checked against the
 * etag before they become `blobs/<etag>`.
 *
 * @module
 */

import { HubError } from "./errors.ts";
import type { RepoCache } from "./hf_cache.ts";
import { Sha256 } from "./sha256.ts";

/** Progress of one file's download. */
export interface DownloadProgress {
  /** The repository, `org/name`. */
  readonly repo: string;
  /** The file being downloaded. */
  readonly file: string;
  /** Bytes in the cache so far (a resumed download starts above 0). */
  readonly loaded: number;
  /** The file's size, when the Hub said. */
  readonly total: number | undefined;
}

/** Where and how to ask the Hub. */
export interface HubClient {
  /** The Hub's base URL without a trailing slash, e.g. `https://huggingface.co`. */
  readonly endpoint: string;
  /** A bearer token (`HF_TOKEN`), sent to the Hub but never to the CDN it redirects to. */
  readonly token: string | undefined;
  /** Called as bytes arrive. */
  readonly onProgress?: (p: DownloadProgress) => void;
  /** Attempts after a dropped connection before giving up (the partial file stays). Default 5. */
  readonly retries?: number;
  /** Milliseconds to wait for a response or the next bytes. Default 10 s (huggingface_hub's). */
  readonly timeoutMs?: number;
}

/** What the Hub says about a file at a revision. */
export interface FileMetadata {
  /** The commit the revision resolved to. */
  readonly commit: string;
  /** The normalised etag: the blob's name in the cache. */
  readonly etag: string;
  /** The size in bytes, when given. */
  readonly size: number | undefined;
  /** Where to download it from (the resolve URL, or the CDN it redirects to). */
  readonly location: string;
}

/** The Hub's answer: the file's metadata, or that the revision has no such file. */
export type FileLookup =
  | { readonly found: true; readonly meta: FileMetadata }
  | { readonly found: false; readonly commit: string | undefined };

const COMMIT = /^[0-9a-f]{40}$/;
const SAFE_ETAG = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** huggingface_hub's etag normalisation: drop a weak `W/` prefix and the quotes. */
export function normalizeEtag(etag: string): string {
  return etag.replace(/^W\//, "").replace(/^"+|"+$/g, "");
}

/** The URL of `file` of `repo` at `revision` (huggingface_hub's `hf_hub_url`). */
export function resolveUrl(endpoint: string, repo: string, revision: string, file: string): string {
  const path = file.split("/").map(encodeURIComponent).join("/");
  return `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${path}`;
}

function authHeaders(client: HubClient): Record<string, string> {
  return client.token ? { authorization: `Bearer ${client.token}` } : {};
}

function what(repo: string, file: string, revision: string): string {
  return `${repo}/${file} (revision "${revision}")`;
}

/**
 * Asks the Hub about `file` of `repo` at `revision`. Relative redirects (a renamed repository)
 * are followed; an absolute one (an LFS file on the CDN) is where the bytes will come from.
 *
 * @throws {HubError} for a network failure, a repository or revision the Hub does not have or
 *   will not show without a token, or an answer that is not the Hub's.
 */
export async function lookupFile(
  client: HubClient,
  repo: string,
  revision: string,
  file: string,
): Promise<FileLookup> {
  let url = resolveUrl(client.endpoint, repo, revision, file);
  const label = what(repo, file, revision);
  for (let hop = 0;; hop++) {
    let res: Response;
    try {
      res = await fetch(url, {
        method: "HEAD",
        redirect: "manual",
        headers: { ...authHeaders(client), "accept-encoding": "identity" },
        signal: AbortSignal.timeout(client.timeoutMs ?? 10_000),
      });
    } catch (e) {
      throw new HubError(
        `cannot reach ${client.endpoint} for ${label}: ${(e as Error).message}`,
        repo,
        file,
        { cause: e },
      );
    }
    await res.body?.cancel();
    const h = res.headers;
    const code = h.get("x-error-code") ?? "";
    if (res.status >= 300 && res.status < 400) {
      const location = h.get("location");
      if (!location) {
        throw new HubError(`${label}: HTTP ${res.status} without a location`, repo, file);
      }
      if (!/^[a-z][a-z0-9+.-]*:/i.test(location)) {
        // Relative: the repository moved on the Hub itself. Follow it, with the token.
        if (hop >= 5) throw new HubError(`${label}: too many redirects`, repo, file);
        url = new URL(location, url).href;
        continue;
      }
      return { found: true, meta: metadata(h, location, repo, file, label) };
    }
    if (res.ok) return { found: true, meta: metadata(h, url, repo, file, label) };
    if (res.status === 404 && (code === "" || code === "EntryNotFound")) {
      const commit = h.get("x-repo-commit") ?? undefined;
      return { found: false, commit: commit && COMMIT.test(commit) ? commit : undefined };
    }
    const tokenHint = client.token
      ? "the token in HF_TOKEN does not give access to it"
      : "for a private or gated repository set HF_TOKEN";
    if (code === "RevisionNotFound") {
      throw new HubError(`${repo}: the Hub has no revision "${revision}"`, repo, file);
    }
    if (code === "GatedRepo") {
      throw new HubError(
        `${repo} is gated: accept its terms on the Hub, then set HF_TOKEN (${label}, HTTP ${res.status})`,
        repo,
        file,
      );
    }
    if (code === "RepoNotFound" || res.status === 401 || res.status === 403) {
      throw new HubError(
        `${repo}: repository not found on ${client.endpoint} (HTTP ${res.status}): check the name; ${tokenHint}`,
        repo,
        file,
      );
    }
    if (res.status >= 500) {
      throw new HubError(
        `${client.endpoint} is unavailable (HTTP ${res.status}) for ${label}`,
        repo,
        file,
      );
    }
    throw new HubError(`${label}: HTTP ${res.status} ${res.statusText}`.trim(), repo, file);
  }
}

function metadata(
  h: Headers,
  location: string,
  repo: string,
  file: string,
  label: string,
): FileMetadata {
  const commit = h.get("x-repo-commit");
  if (!commit || !COMMIT.test(commit)) {
    throw new HubError(
      `${label}: the answer has no commit hash (x-repo-commit): is HF_ENDPOINT a Hugging Face Hub?`,
      repo,
      file,
    );
  }
  const raw = h.get("x-linked-etag") ?? h.get("etag");
  const etag = raw === null ? "" : normalizeEtag(raw);
  if (!SAFE_ETAG.test(etag)) {
    throw new HubError(
      `${label}: the answer has no usable etag (got ${JSON.stringify(raw)})`,
      repo,
      file,
    );
  }
  const sizeText = h.get("x-linked-size") ?? h.get("content-length");
  const size = sizeText !== null && /^\d+$/.test(sizeText) ? Number(sizeText) : undefined;
  return { commit, etag, size, location };
}

async function fileSize(path: string): Promise<number> {
  try {
    return (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return 0;
    throw e;
  }
}

/** Feeds the first `length` bytes of the file at `path` to `hasher`, a chunk at a time. */
async function hashPrefix(path: string, length: number, hasher: Sha256): Promise<void> {
  using f = await Deno.open(path, { read: true });
  const buf = new Uint8Array(1 << 20);
  let left = length;
  while (left > 0) {
    const n = await f.read(buf.subarray(0, Math.min(buf.length, left)));
    if (n === null) break;
    hasher.update(buf.subarray(0, n));
    left -= n;
  }
}

/** The git blob sha1 of a file (the etag the Hub gives files kept in git). */
async function gitBlobSha1(path: string): Promise<string> {
  const body = await Deno.readFile(path);
  const head = new TextEncoder().encode(`blob ${body.length}\0`);
  const all = new Uint8Array(head.length + body.length);
  all.set(head);
  all.set(body, head.length);
  const d = await crypto.subtle.digest("SHA-1", all);
  return Array.from(new Uint8Array(d), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Largest git-stored file whose sha1 is checked (it is read whole; such files are small). */
const GIT_CHECK_LIMIT = 64 << 20;

/** Why an attempt ended early: the connection, not the content, so it may be resumed. */
class Dropped extends Error {}

/**
 * Downloads the blob `meta` describes into `cache` (unless it is there), resuming a partial
 * download, and checks it against its etag. Holds the blob's lock file meanwhile, so that
 * another process (this library or huggingface_hub) does not write the same blob.
 *
 * @throws {HubError} when the download fails after the retries (the partial file is kept for
 *   the next call to resume), or when the bytes do not match the etag (the partial file is
 *   removed).
 */
export async function downloadBlob(
  client: HubClient,
  cache: RepoCache,
  file: string,
  meta: FileMetadata,
): Promise<void> {
  const blob = cache.blobPath(meta.etag);
  const part = cache.incompletePath(meta.etag);
  const lockPath = cache.lockPath(meta.etag);
  await Deno.mkdir(blob.slice(0, blob.lastIndexOf("/")), { recursive: true });
  await Deno.mkdir(lockPath.slice(0, lockPath.lastIndexOf("/")), { recursive: true });
  using lock = await Deno.open(lockPath, { create: true, write: true });
  await lock.lock(true);
  try {
    if (await cache.hasBlob(meta.etag)) return; // another process finished it meanwhile
    const sha256 = /^[0-9a-f]{64}$/.test(meta.etag);
    let loaded = await fileSize(part);
    if (meta.size !== undefined && loaded > meta.size) {
      await Deno.truncate(part, 0);
      loaded = 0;
    }
    // The hash and the length always describe exactly the bytes in the partial file.
    const state = { loaded, hasher: new Sha256() };
    if (sha256 && loaded > 0) await hashPrefix(part, loaded, state.hasher);
    const retries = client.retries ?? 5;
    for (let attempt = 0;; attempt++) {
      try {
        await fetchInto(client, cache.repo, file, meta, part, state);
        break;
      } catch (e) {
        if (!(e instanceof Dropped)) throw e;
        if (attempt >= retries) {
          throw new HubError(
            `${cache.repo}/${file}: the download failed after ${retries + 1} attempts ` +
              `(${e.message}); ${state.loaded} bytes are kept in ${part} and the next load ` +
              `resumes there`,
            cache.repo,
            file,
            { cause: e },
          );
        }
        await new Promise((r) => setTimeout(r, Math.min(2000, 100 * 2 ** attempt)));
      }
    }
    loaded = state.loaded;
    const mismatch = (got: string) =>
      new HubError(
        `${cache.repo}/${file}: checksum mismatch: the download hashes to ${got} but the Hub's ` +
          `etag is ${meta.etag}; the corrupt file was removed, load again to download it anew`,
        cache.repo,
        file,
      );
    if (meta.size !== undefined && loaded !== meta.size) {
      await Deno.remove(part);
      throw new HubError(
        `${cache.repo}/${file}: downloaded ${loaded} bytes but the Hub said ${meta.size}; the ` +
          `file was removed, load again to download it anew`,
        cache.repo,
        file,
      );
    }
    if (sha256) {
      const got = state.hasher.hex();
      if (got !== meta.etag) {
        await Deno.remove(part);
        throw mismatch(got);
      }
    } else if (/^[0-9a-f]{40}$/.test(meta.etag) && loaded <= GIT_CHECK_LIMIT) {
      const got = await gitBlobSha1(part);
      if (got !== meta.etag) {
        await Deno.remove(part);
        throw mismatch(got);
      }
    }
    await Deno.rename(part, blob);
  } finally {
    await lock.unlock().catch(() => {});
  }
}

/**
 * One attempt: GET from `state.loaded` on (a `Range` request when above 0), appending to `part`
 * and hashing as the bytes arrive; `state` follows the file. Throws {@link Dropped} when the
 * connection fails or stalls.
 */
async function fetchInto(
  client: HubClient,
  repo: string,
  file: string,
  meta: FileMetadata,
  part: string,
  state: { loaded: number; hasher: Sha256 },
): Promise<void> {
  const sameOrigin = meta.location.startsWith(client.endpoint + "/");
  const headers: Record<string, string> = {
    ...(sameOrigin ? authHeaders(client) : {}),
    "accept-encoding": "identity",
  };
  if (state.loaded > 0) headers.range = `bytes=${state.loaded}-`;
  const timeoutMs = client.timeoutMs ?? 10_000;
  const abort = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const arm = () => {
    clearTimeout(timer);
    timer = setTimeout(() => abort.abort(new Error(`no data for ${timeoutMs} ms`)), timeoutMs);
  };
  const progress = () =>
    client.onProgress?.({ repo, file, loaded: state.loaded, total: meta.size });
  arm();
  try {
    let res: Response;
    try {
      res = await fetch(meta.location, { headers, signal: abort.signal });
    } catch (e) {
      throw new Dropped(`cannot reach ${new URL(meta.location).host}: ${(e as Error).message}`);
    }
    if (res.status === 416 && meta.size !== undefined && state.loaded === meta.size) {
      await res.body?.cancel(); // the partial file was already complete
      return;
    }
    let append = state.loaded > 0;
    if (res.status === 206 && state.loaded > 0) {
      const start = /^bytes (\d+)-/.exec(res.headers.get("content-range") ?? "")?.[1];
      if (Number(start) !== state.loaded) append = false; // not where we asked: start over
    } else if (res.status === 200) {
      append = false; // the whole file (the server ignored Range, or there was none)
    } else {
      await res.body?.cancel();
      if (res.status >= 500 || res.status === 429) throw new Dropped(`HTTP ${res.status}`);
      throw new HubError(`${repo}/${file}: download failed: HTTP ${res.status}`, repo, file);
    }
    if (!append && res.status === 206) {
      await res.body?.cancel();
      await Deno.truncate(part, 0);
      state.loaded = 0;
      state.hasher = new Sha256();
      throw new Dropped("the server resumed elsewhere than asked; starting over");
    }
    if (!append) {
      state.loaded = 0;
      state.hasher = new Sha256();
    }
    if (!res.body) throw new Dropped("a response without a body");
    using out = await Deno.open(part, { create: true, write: true, truncate: !append, append });
    progress();
    const reader = res.body.getReader();
    for (;;) {
      let r: ReadableStreamReadResult<Uint8Array>;
      try {
        r = await reader.read();
      } catch (e) {
        throw new Dropped(`connection lost after ${state.loaded} bytes: ${(e as Error).message}`);
      }
      if (r.done) break;
      const chunk = r.value;
      let o = 0;
      while (o < chunk.length) o += await out.write(chunk.subarray(o));
      state.hasher.update(chunk);
      state.loaded += chunk.length;
      arm();
      progress();
    }
    if (meta.size !== undefined && state.loaded < meta.size) {
      throw new Dropped(`connection closed after ${state.loaded} of ${meta.size} bytes`);
    }
  } finally {
    clearTimeout(timer);
  }
}
