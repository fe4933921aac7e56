/**
 * A stand-in for the Hugging Face Hub on 127.0.0.1, answering as the real one does:
 *
 * - `HEAD|GET /{org}/{name}/resolve/{revision}/{file}`: `x-repo-commit`; a file kept in git
 *   answers 200 with its git blob sha1 as `etag`; an LFS file (weights) answers 302 to the CDN
 *   with `x-linked-etag` (its sha256) and `x-linked-size`, and the `etag` of its pointer file;
 * - a missing file: 404 with `x-error-code: EntryNotFound` (and `x-repo-commit`); a missing
 *   revision: 404 `RevisionNotFound`; a missing repository: 401 `RepoNotFound`;
 * - the CDN (a second server, another origin): `GET /blobs/{sha256}` with `Range: bytes=N-`.
 *
 * Faults for tests: drop the connection after N bytes, corrupt a byte, go down.
 *
 * Also here: {@link writePythonCache}, which lays files out exactly as Python's huggingface_hub
 * does, for tests of a cache "filled by a Python tool".
 */

/** A file of a commit. */
export interface HubFile {
  name: string;
  bytes: Uint8Array;
}

/** What a request looked like, for assertions. */
export interface Seen {
  method: string;
  path: string;
  range: string | null;
  authorization: string | null;
}

const enc = new TextEncoder();

function hex(b: ArrayBuffer | Uint8Array): string {
  return Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
}

/** sha256 of bytes, hex. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  return hex(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
}

/** git's blob sha1 (what the Hub gives as the etag of a file kept in git). */
export async function gitSha1(bytes: Uint8Array): Promise<string> {
  const head = enc.encode(`blob ${bytes.length}\0`);
  const all = new Uint8Array(head.length + bytes.length);
  all.set(head);
  all.set(bytes, head.length);
  return hex(await crypto.subtle.digest("SHA-1", all));
}

/** Whether the Hub keeps this file in LFS (weights do; JSON files do not). */
export function isLfs(name: string): boolean {
  return /\.(safetensors|bin)$/.test(name);
}

/** The etag of a file as the Hub reports it (sha256 for LFS, git sha1 otherwise). */
export async function etagOf(name: string, bytes: Uint8Array): Promise<string> {
  return isLfs(name) ? await sha256Hex(bytes) : await gitSha1(bytes);
}

/** A made-up but well-formed commit hash. */
export async function fakeCommit(label: string): Promise<string> {
  return (await gitSha1(enc.encode(label))).slice(0, 40);
}

interface Commit {
  files: Map<string, Uint8Array>;
}

/** The fake Hub and its CDN. */
export class FakeHub {
  readonly seen: Seen[] = [];
  /** Per file name: how many of the next CDN downloads drop, and after how many bytes. */
  readonly drops = new Map<string, { times: number; after: number }>();
  /** File names whose CDN bytes come back with one byte flipped. */
  readonly corrupt = new Set<string>();
  /** When set, every request answers 503. */
  down = false;
  #repos = new Map<string, { refs: Map<string, string>; commits: Map<string, Commit> }>();
  #blobs = new Map<string, { name: string; bytes: Uint8Array }>();
  #hub: Deno.HttpServer<Deno.NetAddr>;
  #cdn: Deno.HttpServer<Deno.NetAddr>;

  constructor() {
    const quiet = { hostname: "127.0.0.1", port: 0, onListen() {} };
    this.#hub = Deno.serve(quiet, (req) => this.#serveHub(req));
    this.#cdn = Deno.serve(quiet, (req) => this.#serveCdn(req));
  }

  /** The Hub's base URL (what HF_ENDPOINT would be). */
  get endpoint(): string {
    return `http://127.0.0.1:${this.#hub.addr.port}`;
  }

  /** The CDN's base URL. */
  get cdn(): string {
    return `http://127.0.0.1:${this.#cdn.addr.port}`;
  }

  /** Adds a commit to `repo` and points the `refs` (branches, tags) at it. */
  async addCommit(repo: string, files: HubFile[], refs: string[] = ["main"]): Promise<string> {
    const commit = await fakeCommit(`${repo}:${files.map((f) => f.name).join(",")}:${refs}`);
    let r = this.#repos.get(repo);
    if (!r) this.#repos.set(repo, r = { refs: new Map(), commits: new Map() });
    r.commits.set(commit, { files: new Map(files.map((f) => [f.name, f.bytes])) });
    for (const ref of refs) r.refs.set(ref, commit);
    for (const f of files) {
      if (isLfs(f.name)) this.#blobs.set(await sha256Hex(f.bytes), f);
    }
    return commit;
  }

  /** Requests seen whose path contains `part`. */
  requests(part = ""): Seen[] {
    return this.seen.filter((s) => s.path.includes(part));
  }

  /** Stops both servers. */
  async close(): Promise<void> {
    await Promise.all([this.#hub.shutdown(), this.#cdn.shutdown()]);
  }

  #note(req: Request): URL {
    const url = new URL(req.url);
    this.seen.push({
      method: req.method,
      path: url.pathname,
      range: req.headers.get("range"),
      authorization: req.headers.get("authorization"),
    });
    return url;
  }

  async #serveHub(req: Request): Promise<Response> {
    const url = this.#note(req);
    if (this.down) return new Response("down", { status: 503 });
    const m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (!m) return new Response("not found", { status: 404 });
    const [, repo, rawRev, rawFile] = m;
    const revision = decodeURIComponent(rawRev);
    const file = rawFile.split("/").map(decodeURIComponent).join("/");
    const r = this.#repos.get(repo);
    if (!r) {
      return new Response("Repository not found", {
        status: 401,
        headers: { "x-error-code": "RepoNotFound" },
      });
    }
    const commit = r.commits.has(revision) ? revision : r.refs.get(revision);
    if (!commit) {
      return new Response("Invalid rev id", {
        status: 404,
        headers: { "x-error-code": "RevisionNotFound" },
      });
    }
    const bytes = r.commits.get(commit)!.files.get(file);
    if (!bytes) {
      return new Response("Entry not found", {
        status: 404,
        headers: { "x-error-code": "EntryNotFound", "x-repo-commit": commit },
      });
    }
    if (isLfs(file)) {
      const sha = await sha256Hex(bytes);
      const pointer = enc.encode(
        `version https://git-lfs.github.com/spec/v1\noid sha256:${sha}\nsize ${bytes.length}\n`,
      );
      return new Response(null, {
        status: 302,
        headers: {
          location: `${this.cdn}/blobs/${sha}?name=${encodeURIComponent(file)}`,
          "x-repo-commit": commit,
          "x-linked-etag": `"${sha}"`,
          "x-linked-size": String(bytes.length),
          etag: `"${await gitSha1(pointer)}"`,
        },
      });
    }
    const headers = { "x-repo-commit": commit, etag: `"${await gitSha1(bytes)}"` };
    return new Response(req.method === "HEAD" ? null : bytes as Uint8Array<ArrayBuffer>, {
      headers: { ...headers, "content-length": String(bytes.length) },
    });
  }

  #serveCdn(req: Request): Response {
    const url = this.#note(req);
    if (this.down) return new Response("down", { status: 503 });
    const blob = this.#blobs.get(url.pathname.replace(/^\/blobs\//, ""));
    if (!blob) return new Response("no such blob", { status: 404 });
    let bytes = blob.bytes;
    if (this.corrupt.has(blob.name)) {
      bytes = bytes.slice();
      bytes[bytes.length >> 1] ^= 0xff;
    }
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(req.headers.get("range") ?? "");
    if (range) {
      start = Number(range[1]);
      if (start >= bytes.length) {
        return new Response(null, {
          status: 416,
          headers: { "content-range": `bytes */${bytes.length}` },
        });
      }
    }
    const body = bytes.subarray(start);
    const headers: Record<string, string> = { "content-length": String(body.length) };
    if (range) headers["content-range"] = `bytes ${start}-${bytes.length - 1}/${bytes.length}`;
    const status = range ? 206 : 200;
    const drop = this.drops.get(blob.name);
    if (drop && drop.times > 0) {
      // The connection dies after `after` bytes of the file (counted from its start).
      drop.times--;
      const cut = Math.max(0, Math.min(body.length, drop.after - start));
      const stream = new ReadableStream<Uint8Array>({
        start(c) {
          if (cut > 0) c.enqueue(body.slice(0, cut));
        },
        pull(c) {
          c.close(); // ends short of content-length: the server cuts the connection
        },
      });
      return new Response(stream, { status, headers });
    }
    return new Response(body as Uint8Array<ArrayBuffer>, { status, headers });
  }
}

/**
 * Lays files out in a hub cache exactly as Python's huggingface_hub does: blobs named by etag,
 * relative symlinks from the snapshot, and `refs/<revision>` holding the commit.
 */
export async function writePythonCache(
  cacheDir: string,
  repo: string,
  commit: string,
  files: HubFile[],
  refs: string[] = ["main"],
): Promise<string> {
  const root = `${cacheDir}/models--${repo.replace("/", "--")}`;
  await Deno.mkdir(`${root}/blobs`, { recursive: true });
  await Deno.mkdir(`${root}/snapshots/${commit}`, { recursive: true });
  await Deno.mkdir(`${root}/refs`, { recursive: true });
  for (const f of files) {
    const etag = await etagOf(f.name, f.bytes);
    await Deno.writeFile(`${root}/blobs/${etag}`, f.bytes);
    await Deno.symlink(`../../blobs/${etag}`, `${root}/snapshots/${commit}/${f.name}`);
  }
  for (const ref of refs) await Deno.writeTextFile(`${root}/refs/${ref}`, commit);
  return root;
}
