/**
 * HTTP errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.
 *
 * @module
 */

/** An error answered with `status` and an OpenAI-style body. */
export class HttpError extends Error {
  /** HTTP status. */
  readonly status: number;
  /** OpenAI's error `type` (`invalid_request_error`, `rate_limit_error`, …). */
  readonly type: string;
  /** A short machine-readable code. */
  readonly code: string;
  /** The request field at fault, if any. */
  readonly param: string | null;

  /** An error answered with `status`. */
  constructor(status: number, code: string, message: string, param: string | null = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.param = param;
    this.type = status === 429
      ? "rate_limit_error"
      : status >= 500
      ? "server_error"
      : status === 404
      ? "not_found_error"
      : "invalid_request_error";
  }

  /** The JSON response. */
  response(): Response {
    return Response.json(
      { error: { message: this.message, type: this.type, param: this.param, code: this.code } },
      { status: this.status },
    );
  }
}

/** 400 for a request field. */
export function badField(param: string, message: string): HttpError {
  return new HttpError(400, "invalid_value", message, param);
}
