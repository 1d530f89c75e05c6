"""`lorafit serve`: start-up checks (before anything binds or loads), the socket, the models, uvicorn.

Order: settings (checked when the ServeSettings is built), key file, run folders and names, the
--adapters-dir folder (cheap, one `error:` line each; DIR's runs are not read: they load on demand)
-> bind the port (in use: one line, nothing loaded) -> load the named runs -> serve. SIGTERM/SIGINT: /readyz and new
requests 503, uvicorn stops accepting, in-flight requests finish within --grace seconds; those that
cannot are answered 503 + Retry-After at the deadline and their texts dropped (drain.py); the
batcher's threads stop, exit 0."""
from __future__ import annotations

import gc
import os
import signal
import socket
import sys

from ..errors import LorafitError
from .auth import read_key
from .settings import ServeSettings


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
    # listening from now on: a client that connects once the start line is printed waits in the backlog
    # while uvicorn starts, instead of being refused (uvicorn's own listen on this socket changes nothing)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServeSettings, log=lambda line: print(line, file=sys.stderr, flush=True)) -> int:
    """Serve settings.runs until SIGTERM/SIGINT; 0 after a drained stop. Bad input raises LorafitError
    before anything binds or loads."""
    from .adapters_dir import AdaptersDir
    from .registry import check_run, parse_specs

    if not isinstance(settings, ServeSettings):
        raise TypeError(f"serve() takes a ServeSettings, not {type(settings).__name__}")
    key = read_key(settings.api_key_file) if settings.api_key_file else None
    specs = parse_specs(list(settings.runs))
    for _, folder in specs:
        check_run(folder)
    if settings.adapters_dir is not None:
        AdaptersDir(settings.adapters_dir)  # a folder, or one error line
    sock = bind(settings.host, settings.port)
    try:
        return _run(settings, specs, key, sock, log)
    finally:
        sock.close()


def _run(settings, specs, key, sock, log) -> int:
    import uvicorn

    from .app import Limits, create_app
    from .registry import Registry

    registry = Registry.load(specs, log=log, adapters_dir=settings.adapters_dir, max_loaded=settings.max_loaded,
                             max_bytes=int(settings.max_adapter_memory * 2**20), mixed=settings.mixed)
    limits = Limits(settings.max_batch, settings.max_wait_ms, settings.queue, settings.max_texts, settings.max_chars,
                    max_round=settings.max_round, streams=settings.streams)
    app = create_app(registry, limits, key)
    host, port = sock.getsockname()[:2]

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            # /readyz says 503 at once (a load balancer stops sending here); the deadline is armed
            app.state.drain.begin(settings.grace)
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level=settings.log_level, timeout_graceful_shutdown=settings.grace,
                            access_log=False, lifespan="on")
    server = Server(config)
    # until uvicorn installs its own handlers (its start-up), a SIGTERM/SIGINT must start the same
    # graceful stop, not be lost; and uvicorn re-raises the signal it caught once it has shut down: with
    # these handlers that re-raise only repeats the request to stop, and the command exits 0 (a drained
    # stop is a clean stop)
    previous = {s: signal.signal(s, server.handle_exit) for s in (signal.SIGTERM, signal.SIGINT)}
    served = registry.names()
    if registry.adapters is not None:  # one scandir: no run in it is read
        served.append(f"{len(registry.adapters.names())} runs on demand from {settings.adapters_dir}")
    log(f"serving {', '.join(served)} on http://{host}:{port} (auth {'on' if key else 'off'})")
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
