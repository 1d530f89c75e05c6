"""`ServeSettings`: every `lorafit serve` option with its default, checked when built.

The library starts a server with `serve(ServeSettings(runs=[...], port=...))`; the CLI only parses argv
into one (its argparse defaults are read from these fields, so the two cannot drift). A bad value raises
the one-line LorafitError the command prints, naming the command-line flag; the cheap checks live here,
the ones that read files (the key file, the run folders) run in serve() before anything binds."""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import LorafitError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    runs: Sequence[str] = ()             # "[NAME=]RUN_DIR" each; names default to the folder's name (pinned)
    adapters_dir: Optional[str] = None   # every run folder in it servable by its name, loaded on first request
    max_loaded: int = 0                  # runs loaded on demand at most at once (LRU unloaded); 0: no limit
    max_adapter_memory: float = 0        # MB of their own parameters at most (LRU unloaded); 0: no limit
    host: str = "127.0.0.1"
    port: int = 8000                     # 0: any free port, printed at start
    max_batch: int = 64
    max_wait_ms: float = 5.0
    max_round: int = 0                   # 0: 4 x max_batch
    streams: int = 0                     # 0: 2 on a CPU, 1 on a GPU
    queue: int = 512
    max_texts: int = 256
    max_chars: int = 100_000
    api_key_file: Optional[str] = None
    insecure: bool = False
    grace: float = 30.0
    log_level: str = "warning"
    mixed: bool = True                   # runs over one base share forwards (infer/mixed.py); False: each its own

    def __post_init__(self):
        # a str given as runs would be served letter by letter
        runs = (self.runs,) if isinstance(self.runs, str) else self.runs
        object.__setattr__(self, "runs", tuple(str(r) for r in runs))
        if self.adapters_dir is not None:
            object.__setattr__(self, "adapters_dir", str(self.adapters_dir))
        if not self.runs and self.adapters_dir is None:
            raise LorafitError("serve: give at least one RUN_DIR, or --adapters-dir DIR")
        if self.adapters_dir is None and (self.max_loaded or self.max_adapter_memory):
            raise LorafitError("--max-loaded / --max-adapter-memory: limit the runs loaded on demand; give --adapters-dir DIR")
        mb = self.max_adapter_memory
        if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb >= 0:
            raise LorafitError(f"--max-adapter-memory: {mb!r} is not a number of MB >= 0")
        for flag, value, low in (("--port", self.port, 0), ("--max-batch", self.max_batch, 1), ("--queue", self.queue, 1),
                                 ("--max-loaded", self.max_loaded, 0),
                                 ("--max-texts", self.max_texts, 1), ("--max-chars", self.max_chars, 1),
                                 ("--max-round", self.max_round, 0), ("--streams", self.streams, 0)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise LorafitError(f"{flag}: {value!r} is not a whole number")
            if value < low:
                raise LorafitError(f"{flag}: {value} is below {low}")
        if self.port > 65535:
            raise LorafitError(f"--port: {self.port} is above 65535")
        for value in (self.max_wait_ms, self.grace):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise LorafitError("--max-wait-ms / --grace: give a number >= 0")
        if self.log_level not in LOG_LEVELS:
            raise LorafitError(f"--log-level: unknown level '{self.log_level}'; use one of {', '.join(LOG_LEVELS)}")
        # a key file is read (and refused if bad) by serve(); without one, only this machine may connect
        if self.api_key_file is None and not is_loopback(self.host) and not self.insecure:
            raise LorafitError(f"--host: {self.host} is reachable from other machines; give --api-key-file FILE "
                               "(or --insecure to serve without a key)")


def defaults() -> dict:
    """Each field's default by name: what the CLI's parser offers."""
    return {f.name: f.default for f in dataclasses.fields(ServeSettings)}
