"""`lorafit serve`: start-up checks (before anything binds or loads), the socket, the models, uvicorn.

Order: arguments, key file, run folders and names (cheap, one `error:` line each) -> bind the port
(in use: one line, nothing loaded) -> load the runs -> serve. SIGTERM/SIGINT: /readyz and new
requests 503, uvicorn stops accepting, in-flight requests finish within --grace seconds; those that
cannot are answered 503 + Retry-After at the deadline and their texts dropped (drain.py); the
batcher's threads stop, exit 0."""
from __future__ import annotations

import gc
import ipaddress
import os
import signal
import socket
import sys

from ..errors import LorafitError
from .auth import read_key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound now so a port in use fails before the models load."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise LorafitError(f"--host: cannot resolve {host} ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise LorafitError(f"--port: cannot listen on {host}:{port} ({e.strerror}); choose another --port") from None
    sock.set_inheritable(True)
    return sock


def check_limits(args) -> None:
    for flag, value, low in (("--port", args.port, 0), ("--max-batch", args.max_batch, 1), ("--queue", args.queue, 1),
                             ("--max-texts", args.max_texts, 1), ("--max-chars", args.max_chars, 1),
                             ("--max-round", args.max_round, 0), ("--streams", args.streams, 0)):
        if value < low:
            raise LorafitError(f"{flag}: {value} is below {low}")
    if args.port > 65535:
        raise LorafitError(f"--port: {args.port} is above 65535")
    if args.max_wait_ms < 0 or args.grace < 0:
        raise LorafitError("--max-wait-ms / --grace: give a number >= 0")


def serve(args, log=lambda line: print(line, file=sys.stderr, flush=True)) -> int:
    from .registry import check_run, parse_specs

    check_limits(args)
    key = read_key(args.api_key_file) if args.api_key_file else None
    if key is None and not is_loopback(args.host) and not args.insecure:
        raise LorafitError(f"--host: {args.host} is reachable from other machines; give --api-key-file FILE "
                           "(or --insecure to serve without a key)")
    specs = parse_specs(args.runs)
    for _, folder in specs:
        check_run(folder)
    sock = bind(args.host, args.port)
    try:
        return _run(args, specs, key, sock, log)
    finally:
        sock.close()


def _run(args, specs, key, sock, log) -> int:
    import uvicorn

    from .app import Limits, create_app
    from .registry import Registry

    registry = Registry.load(specs, log=log)
    limits = Limits(args.max_batch, args.max_wait_ms, args.queue, args.max_texts, args.max_chars,
                    max_round=args.max_round, streams=args.streams)
    app = create_app(registry, limits, key)
    host, port = sock.getsockname()[:2]

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # /readyz says 503 at once (a load balancer stops sending here); the deadline is armed
            app.state.drain.begin(args.grace)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=args.grace, access_log=False,
                            lifespan="on")
    server = Server(config)
    # until uvicorn installs its own handlers (its start-up), a SIGTERM/SIGINT must start the same
    # graceful stop, not be lost; and uvicorn re-raises the signal it caught once it has shut down: with
    # these handlers that re-raise only repeats the request to stop, and the command exits 0 (a drained
    # stop is a clean stop)
    previous = {s: signal.signal(s, server.handle_exit) for s in (signal.SIGTERM, signal.SIGINT)}
    log(f"serving {', '.join(registry.names())} on http://{host}:{port} (auth {'on' if key else 'off'})")
    try:
        server.run(sockets=[sock])
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    batcher = app.state.batcher
    # again here: a second Ctrl-C (uvicorn's force exit) skips the app's shutdown, and a thread left
    # inside torch at interpreter shutdown aborts the process (exit 134)
    stopped = batcher.stop(limits.stop_wait_s)
    if not server.started:
        raise LorafitError(f"--port: the server did not start on {host}:{port}")
    log(f"stopped: {batcher.texts_computed} texts computed, {batcher.texts_dropped} dropped (requests answered 503 "
        "at the --grace deadline, or whose client went away)")
    if not stopped:
        # a forward outlasted stop_wait_s: every request is answered and serve writes no files, so end
        # now rather than let the interpreter's shutdown abort inside it
        log(f"a forward still running after {limits.stop_wait_s:g} s was abandoned")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    # the interpreter's last collection would walk every object torch, transformers and the runs made
    # (~0.5M; 2-7 s on a busy 2-core machine, after the grace) only to free what the exit frees anyway
    gc.freeze()
    return 0
