/** Test helper: a call with `console.error` captured (a model moving backends notes itself there). */

/** Runs `fn` with console.error captured; returns its value and the lines it logged. */
export async function quiet<T>(fn: () => Promise<T>): Promise<{ value: T; logged: string[] }> {
  const logged: string[] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => logged.push(args.join(" "));
  try {
    return { value: await fn(), logged };
  } finally {
    console.error = error;
  }
}
