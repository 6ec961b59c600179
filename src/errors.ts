/** An Error with a Node-style `code`, as thrown for bad input and wrong states. */
export type CodedError = Error & { code: string };

/** Builds `new Class(message)` carrying `code`, the way Node's own errors do. */
export function codedError(
  Class: ErrorConstructor | TypeErrorConstructor | RangeErrorConstructor,
  code: string,
  message: string,
): CodedError {
  const error = new Class(`tcp-zerocopy: ${message}`) as CodedError;
  error.code = code;
  return error;
}

/** The error an aborted operation rejects with, shaped like Node's own AbortError. */
export function abortError(reason: unknown): CodedError {
  const error = new Error('tcp-zerocopy: the operation was aborted', { cause: reason }) as CodedError;
  error.name = 'AbortError';
  error.code = 'ABORT_ERR';
  return error;
}
