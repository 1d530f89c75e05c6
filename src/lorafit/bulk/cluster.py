"""The Ray cluster of `lorafit predict --ray ADDRESS`: `local` starts one on this machine, on loopback
only, that lorafit stops itself whatever happens (an error, Ctrl-C); `auto` or `ray://host:port` joins one
that outlives the command.

Quiet: lorafit prints nothing a dependency logs, and Ray logs much (its workers' output, Ray Data's plan and
progress bars, its usage-stats notice): workers' output stays in the cluster's log files, Ray's loggers
report errors only, usage stats are off unless the user turned them on. An error inside an actor comes
back as the one line lorafit would print locally (`unwrap`).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator, Optional

from ..errors import LorafitError

LOCAL = "local"
RAY_MISSING = "--ray needs Ray Data: pip install 'lorafit[ray]'"


def import_ray():
    """The ray module with Ray Data, or LorafitError(RAY_MISSING)."""
    # before ray is imported: its usage-stats prompt and reporting read this once (the user's choice wins)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        import ray
        import ray.data  # noqa: F401  (ray without the [data] extra lacks its pandas/pyarrow glue)
    except ImportError:
        raise LorafitError(RAY_MISSING) from None
    return ray


def check_address(address: str) -> str:
    """`local`, `auto`, `ray://host:port` or a head's `host:port` (what `ray.init(address=...)` takes), the
    last two checked to be listening (`reachable`)."""
    if address in (LOCAL, "auto"):
        return address
    if address.startswith("ray://") or (":" in address and "/" not in address):
        reachable(address)
        return address
    raise LorafitError(f"--ray: '{address}' is not a cluster address; use local (a cluster on this machine, stopped "
                       "at the end), auto (the cluster this machine belongs to) or ray://HEAD:10001")


@contextmanager
def cluster(address: str, num_cpus: Optional[int] = None) -> Iterator[object]:
    """Ray connected to `address` for the block (the ray module); a local cluster is shut down on the way out.
    num_cpus: of a local cluster (default: the machine's)."""
    check_address(address)
    if address == LOCAL and "ray" not in sys.modules:
        # Ray turns 127.0.0.1 into the machine's network address (for other nodes to join) unless its
        # single-machine mode is on, which its constants read once, at import: on, every daemon and worker of
        # the local cluster listens on loopback only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray = import_ray()
    quiet(ray)
    common = dict(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True,
                  include_dashboard=False)
    # Ray gives a starting node a fixed 30 s to register, which a loaded machine can exceed: a local cluster
    # is started a second time before giving up
    for attempt in (1, 2) if address == LOCAL else (2,):
        try:
            if address == LOCAL:
                # loopback only: the local cluster's processes listen on 127.0.0.1 and nothing else reaches them
                ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **common)
            else:
                common.pop("include_dashboard")  # a setting of a cluster that is started, not joined
                ray.init(address=address, **common)
            break
        except Exception as e:  # ConnectionError, a timeout, a version mismatch: Ray raises many types
            ray.shutdown()  # what a failed start left running
            if attempt == 2:
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise LorafitError(f"--ray {address}: could not {'start' if address == LOCAL else 'join'} a Ray "
                                   f"cluster ({type(e).__name__}: {first})") from None
    try:
        yield ray
    finally:
        ray.shutdown()  # a local cluster's processes stop with it; a joined cluster only loses this driver


def reachable(address: str, timeout: float = 10.0) -> None:
    """LorafitError unless something listens at the head's host:port. Ray itself would retry for minutes,
    printing its C++ client's warnings, before failing."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except ValueError:
        raise LorafitError(f"--ray {address}: the port must be a number, e.g. ray://HEAD:10001") from None
    except OSError as e:
        raise LorafitError(f"--ray {address}: cannot reach the cluster's head ({e.strerror or e}); is it started "
                           "(`ray start --head` there) and is the port open to this machine?") from None


def quiet(ray) -> None:
    """Ray Data's settings for a command-line run: input order kept (the output is written in input order as
    it arrives), no progress bars or plan printed (lorafit reports progress), Ray's loggers errors only."""
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    for name in ("enable_operator_progress_bars", "print_on_execution_start"):
        if hasattr(ctx, name):  # newer Ray Data only
            setattr(ctx, name, False)
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # our own line says what failed
    warnings.filterwarnings("ignore", module=r"ray(\.|$)")
    # Ray's notices of its own API changes, raised where lorafit calls it (Ray shows them by default)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lorafit\.bulk\.")


def unwrap(e: BaseException) -> Optional[LorafitError]:
    """The LorafitError that an actor or a read task raised, as lorafit's one line, from what Ray Data raised
    on the driver; else None. Ray Data wraps it in a UserCodeException whose remote traceback (in the text
    of the exception, the original no longer attached once it crossed processes) ends the original's part
    with `lorafit.errors.<Type>: <message>`."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, LorafitError) and not type(e).__module__.startswith("ray"):
            return e
        found = _ERROR_LINE.search(str(e))
        if found:
            return LorafitError(found.group(1).strip())
        e = getattr(e, "cause", None) or e.__cause__
    return None


_ERROR_LINE = re.compile(r"^lorafit\.errors\.\w+: (.+)$", re.MULTILINE)
