/**
 * Download progress for the command line: a bar redrawn in place when stderr is a terminal, one
 * line per file otherwise (logs stay readable).
 *
 * @module
 */

import type { DownloadProgress } from "./download.ts";

/** Bytes as a short human figure: `517.0 MB`. */
export function formatBytes(n: number): string {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let u = 0;
  while (n >= 1000 && u < units.length - 1) {
    n /= 1000;
    u++;
  }
  return u === 0 ? `${n} B` : `${n.toFixed(1)} ${units[u]}`;
}

/** Where the reporter writes: stderr, or a stand-in in tests. */
export interface ProgressSink {
  writeSync(p: Uint8Array): number;
  isTerminal(): boolean;
}

/**
 * A `onDownload` callback that reports on `sink` (default stderr): on a terminal a bar redrawn
 * at most ten times a second, `org/name file [#####-----] 45% 232.0 MB / 517.0 MB 38.1 MB/s`;
 * elsewhere one line when each file starts.
 */
export function downloadReporter(sink: ProgressSink = Deno.stderr): (p: DownloadProgress) => void {
  const enc = new TextEncoder();
  const write = (s: string) => {
    const b = enc.encode(s);
    for (let o = 0; o < b.length;) o += sink.writeSync(b.subarray(o));
  };
  const tty = sink.isTerminal();
  let current = "";
  let started = 0;
  let startBytes = 0;
  let lastDraw = 0;
  return (p) => {
    const key = `${p.repo}/${p.file}`;
    const now = performance.now();
    if (key !== current) {
      if (current !== "" && tty) write("\n");
      current = key;
      started = now;
      startBytes = p.loaded;
      lastDraw = 0;
      if (!tty) {
        const size = p.total === undefined ? "" : ` (${formatBytes(p.total)})`;
        const from = p.loaded > 0 ? `, resuming at ${formatBytes(p.loaded)}` : "";
        write(`downloading ${key}${size}${from}\n`);
      }
    }
    if (!tty) return;
    const done = p.total !== undefined && p.loaded >= p.total;
    if (!done && now - lastDraw < 100) return;
    lastDraw = now;
    const secs = (now - started) / 1000;
    const rate = secs > 0 ? `${formatBytes((p.loaded - startBytes) / secs)}/s` : "";
    let bar = "";
    if (p.total !== undefined && p.total > 0) {
      const frac = Math.min(1, p.loaded / p.total);
      const filled = Math.round(frac * 30);
      bar = `[${"#".repeat(filled)}${"-".repeat(30 - filled)}] ${Math.floor(frac * 100)}% `;
    }
    const total = p.total === undefined ? "" : ` / ${formatBytes(p.total)}`;
    write(`\r\x1b[K${key} ${bar}${formatBytes(p.loaded)}${total} ${rate}`);
    if (done) {
      write("\n");
      current = "";
    }
  };
}
