// What an attached net.Socket still needs from its reading side. Node drives 'end', the
// allowHalfOpen rule, 'close', bytesRead and setTimeout() from its own reads; once the
// receiver reads instead, the receiver has to tell the socket what Node would have.
import type * as net from 'node:net';

/** The receiver's side of the socket's life: called in stream order by the Receiver. */
export interface SocketLifecycle {
  /** Bytes arrived from the kernel: they count for bytesRead and as socket activity. */
  received(bytes: number): void;
  /** The reader took the end of the stream (read() gave null after a clean FIN). */
  ended(): void;
  /** The stream failed with a socket error (ECONNRESET, ...), already queued for the reader. */
  failed(error: Error): void;
  /** The reader left before the end (break, throw, close(), abort): nobody reads any more. */
  abandoned(): void;
}

interface ReadableSocketInternals {
  _read(size: number): void;
  _unrefTimer?: () => void;
}

/**
 * The lifecycle of a socket whose bytes the native receiver takes from the kernel: Node
 * never sees them, so the receiver emits the socket's 'end' itself, counts bytesRead, keeps
 * setTimeout() alive and warns about code that tries to read the socket as well.
 */
export function nativeSocketLifecycle(socket: net.Socket): SocketLifecycle {
  const internals = socket as unknown as ReadableSocketInternals;
  let bytesRead = 0;
  // An own property over net.Socket's getter, which asks Node's handle (always 0 here).
  Object.defineProperty(socket, 'bytesRead', { configurable: true, enumerable: false, get: () => bytesRead });

  let warned = false;
  const warnOnce = (): void => {
    if (warned) return;
    warned = true;
    process.emitWarning(
      'tcp-zerocopy: this socket is attached to a zero-copy receiver; its data arrives only ' +
        "through the receiver, never through 'data', 'readable', read() or resume()",
      { type: 'TcpZeroCopyWarning', code: 'TCPZC_ATTACHED_SOCKET_READ' },
    );
  };
  // Node's read path ends in _read(); a 'data' listener on a paused socket never gets there.
  internals._read = warnOnce;
  socket.on('newListener', (event: string | symbol) => {
    if (event === 'data' || event === 'readable') warnOnce();
  });

  return {
    received(bytes) {
      bytesRead += bytes;
      internals._unrefTimer?.call(socket); // what Node does on each read: resets setTimeout()
    },
    ended() {
      // After the turn that gave the reader its null, so code right after a `for await`
      // loop can still write its reply before an allowHalfOpen: false socket ends itself.
      setImmediate(() => {
        if (socket.destroyed || socket.readableEnded) return;
        // What Node's own read path does at EOF: 'end', then the allowHalfOpen rule
        // (end our side once pending writes are out), then 'close' once both sides are done.
        socket.push(null);
        socket.read(0);
      });
    },
    failed(error) {
      destroyForReader(socket, error);
    },
    abandoned() {
      if (!socket.destroyed) socket.destroy();
    },
  };
}

/**
 * The lifecycle of a socket read by Node itself (no addon): Node emits 'end' and counts
 * bytes, but its allowHalfOpen rule would end our side as soon as the FIN arrives, before
 * the reader has taken the last chunk and written a reply; the rule runs when the reader
 * takes the end instead.
 */
export function copySocketLifecycle(socket: net.Socket): SocketLifecycle {
  const endsWithPeer = !socket.allowHalfOpen;
  socket.allowHalfOpen = true;
  return {
    received() {
      // Node counts the bytes it reads itself, and its reads keep setTimeout() alive.
    },
    ended() {
      if (!endsWithPeer) return;
      setImmediate(() => {
        if (!socket.destroyed && !socket.writableEnded) socket.end();
      });
    },
    failed(error) {
      destroyForReader(socket, error);
    },
    abandoned() {
      if (!socket.destroyed) socket.destroy();
    },
  };
}

/**
 * A receive error is the reader's: it comes out of read(). Listeners of the socket's own
 * 'error' see it too, but without one a process that handled it in its loop must not die
 * of an unhandled 'error' event (as a stream's async iterator handles it for a Readable).
 */
function destroyForReader(socket: net.Socket, error: Error): void {
  if (socket.destroyed) return;
  if (socket.listenerCount('error') > 0) socket.destroy(error);
  else socket.destroy();
}
