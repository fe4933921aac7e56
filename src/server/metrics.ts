/**
 * The server's counters and histograms, written in the Prometheus text format (version 0.0.4)
 * for `GET /metrics`.
 *
 * @module
 */

/** A cumulative histogram with fixed bucket bounds (seconds). */
export class Histogram {
  readonly #bounds: readonly number[];
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  /** A histogram with these upper bounds (sorted ascending; +Inf is added). */
  constructor(bounds: readonly number[]) {
    this.#bounds = bounds;
    this.#counts = bounds.map(() => 0);
  }

  /** Records `value`, `times` times. */
  observe(value: number, times = 1): void {
    for (let i = 0; i < this.#bounds.length; i++) {
      if (value <= this.#bounds[i]) this.#counts[i] += times;
    }
    this.#sum += value * times;
    this.#count += times;
  }

  /** Prometheus lines for metric `name`. */
  lines(name: string): string[] {
    const out = this.#bounds.map((b, i) => `${name}_bucket{le="${b}"} ${this.#counts[i]}`);
    out.push(`${name}_bucket{le="+Inf"} ${this.#count}`);
    out.push(`${name}_sum ${this.#sum}`, `${name}_count ${this.#count}`);
    return out;
  }
}

const LATENCY = [0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Everything `GET /metrics` reports. */
export class Metrics {
  /** Finished requests by HTTP status. */
  readonly requests = new Map<number, number>();
  /** Prompt tokens prefilled. */
  promptTokens = 0;
  /** Tokens generated. */
  generatedTokens = 0;
  /** Decode blocks run, and the rows they carried (for the mean occupancy). */
  blocks = 0;
  /** Sum over decode blocks of the rows decoded. */
  blockRows = 0;
  /** Requests that joined a batch in a free slot (one row copied). */
  joinsInPlace = 0;
  /** Batches packed anew (every row copied: to grow past the free slots, or to shrink). */
  repacks = 0;
  /** Seconds from a request's arrival to its first token. */
  readonly ttft = new Histogram(LATENCY);
  /** Seconds between consecutive tokens of a sequence. */
  readonly interToken = new Histogram(LATENCY);

  /** Counts a finished request. */
  request(status: number): void {
    this.requests.set(status, (this.requests.get(status) ?? 0) + 1);
  }

  /** The text of `GET /metrics`; `gauges` are the values of the moment. */
  render(gauges: {
    active: number;
    queued: number;
    maxBatch: number;
    sessionsInMemory: number;
    sessionBytes: number;
  }): string {
    const l: string[] = [];
    const head = (name: string, type: string, help: string) =>
      l.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    head("mamba_requests_total", "counter", "Finished HTTP requests by status code.");
    for (const [code, n] of [...this.requests].sort((a, b) => a[0] - b[0])) {
      l.push(`mamba_requests_total{code="${code}"} ${n}`);
    }
    head("mamba_prompt_tokens_total", "counter", "Prompt tokens prefilled.");
    l.push(`mamba_prompt_tokens_total ${this.promptTokens}`);
    head("mamba_generated_tokens_total", "counter", "Tokens generated.");
    l.push(`mamba_generated_tokens_total ${this.generatedTokens}`);
    head("mamba_batch_rows", "gauge", "Sequences in the decode batch now.");
    l.push(`mamba_batch_rows ${gauges.active}`);
    head("mamba_batch_capacity", "gauge", "Most sequences decoded together (--max-batch).");
    l.push(`mamba_batch_capacity ${gauges.maxBatch}`);
    head("mamba_batch_occupancy", "gauge", "Mean rows per decode block over the run / capacity.");
    const occ = this.blocks ? this.blockRows / this.blocks / gauges.maxBatch : 0;
    l.push(`mamba_batch_occupancy ${occ}`);
    head("mamba_decode_blocks_total", "counter", "Decode blocks run.");
    l.push(`mamba_decode_blocks_total ${this.blocks}`);
    head("mamba_batch_joins_in_place_total", "counter", "Requests that joined in a free slot.");
    l.push(`mamba_batch_joins_in_place_total ${this.joinsInPlace}`);
    head("mamba_batch_repacks_total", "counter", "Batches packed anew (to grow or shrink).");
    l.push(`mamba_batch_repacks_total ${this.repacks}`);
    head("mamba_queue_length", "gauge", "Requests waiting for a batch slot.");
    l.push(`mamba_queue_length ${gauges.queued}`);
    head("mamba_sessions_in_memory", "gauge", "Sessions held in memory.");
    l.push(`mamba_sessions_in_memory ${gauges.sessionsInMemory}`);
    head("mamba_session_bytes", "gauge", "Bytes of session state held in memory.");
    l.push(`mamba_session_bytes ${gauges.sessionBytes}`);
    head("mamba_time_to_first_token_seconds", "histogram", "Arrival to first token.");
    l.push(...this.ttft.lines("mamba_time_to_first_token_seconds"));
    head("mamba_inter_token_seconds", "histogram", "Time between tokens of a sequence.");
    l.push(...this.interToken.lines("mamba_inter_token_seconds"));
    return l.join("\n") + "\n";
  }
}
