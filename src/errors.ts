/**
 * Every `code` the package's own errors carry: its own ERR_TCPZC_* codes and the Node
 * codes it uses for bad input and wrong states. Socket errors of a stream (ECONNRESET,
 * ETIMEDOUT, ...) are Node's system errors (`NodeJS.ErrnoException`), not in this list.
 */
export const TCP_ZEROCOPY_ERROR_CODES = [
  'ERR_TCPZC_ALREADY_ATTACHED',
  'ERR_TCPZC_SOCKET_READING',
  'ERR_TCPZC_UNSUPPORTED',
  'ERR_TCPZC_ALREADY_READABLE',
  'ERR_TCPZC_READABLE_WAIT',
  'ERR_TCPZC_ALREADY_PIPING',
  'ERR_INVALID_ARG_TYPE',
  'ERR_INVALID_ARG_VALUE',
  'ERR_OUT_OF_RANGE',
  'ERR_SOCKET_NOT_CONNECTED',
  'ERR_SOCKET_CLOSED',
  'ERR_STREAM_PREMATURE_CLOSE',
  'ABORT_ERR',
] as const;

/** A code of an error thrown (or rejected with) by the package itself. */
export type TcpZeroCopyErrorCode = (typeof TCP_ZEROCOPY_ERROR_CODES)[number];

/** An error made by the package: an Error, TypeError, RangeError or AbortError with a known `code`. */
export type TcpZeroCopyError = Error & { code: TcpZeroCopyErrorCode };

/** The code of the warning emitted when something reads an attached socket. */
export type TcpZeroCopyWarningCode = 'TCPZC_ATTACHED_SOCKET_READ';

// Shared by every copy of the package in a process (Symbol.for), not enumerable.
const MARK = Symbol.for('tcp-zerocopy.error');
const KNOWN_CODES: ReadonlySet<string> = new Set(TCP_ZEROCOPY_ERROR_CODES);

/**
 * True for errors the package made (bad input, wrong states, aborts), as opposed to Node's
 * own errors with the same code or socket errors of the stream:
 *
 *     try { attach(socket) } catch (e) { if (isTcpZeroCopyError(e) && e.code === 'ERR_TCPZC_SOCKET_READING') ... }
 */
export function isTcpZeroCopyError(error: unknown): error is TcpZeroCopyError {
  return (
    error instanceof Error &&
    (error as { [MARK]?: unknown })[MARK] === true &&
    KNOWN_CODES.has((error as { code?: unknown }).code as string)
  );
}

function mark(error: Error, code: TcpZeroCopyErrorCode): TcpZeroCopyError {
  const marked = error as TcpZeroCopyError;
  marked.code = code;
  Object.defineProperty(marked, MARK, { value: true, enumerable: false });
  return marked;
}

/** Builds `new Class(message)` carrying `code`, the way Node's own errors do. */
export function codedError(
  Class: ErrorConstructor | TypeErrorConstructor | RangeErrorConstructor,
  code: TcpZeroCopyErrorCode,
  message: string,
): TcpZeroCopyError {
  return mark(new Class(`tcp-zerocopy: ${message}`), code);
}

/** The error an aborted operation rejects with, shaped like Node's own AbortError. */
export function abortError(reason: unknown): TcpZeroCopyError {
  const error = new Error('tcp-zerocopy: the operation was aborted', { cause: reason });
  error.name = 'AbortError';
  return mark(error, 'ABORT_ERR');
}
