"""The served runs by name: the runs named at start-up (pinned: loaded before the first request, never
unloaded) and, with `--adapters-dir DIR`, every run folder in DIR, loaded on its first request and
unloaded when it is the least recently used beyond --max-loaded / --max-adapter-memory.

How a folder becomes a run is loader.py's (the RunLoader seam; today over infer/pool.py's BasePool,
one copy of each base's weights); which names DIR serves, and that none escapes it, adapters_dir.py's.
This module keeps the state: what is loaded, in least-recently-used order, what is loading, and who
is using what. That state lives on the event loop's thread (every method but `load` and `close` is
called from it), so it needs no lock; the loads and unloads themselves run in one worker thread:

- off the event loop, so requests for loaded runs are answered while a run loads (a cold first
  request waits for its own load only);
- one at a time (BasePool is not thread-safe), in arrival order;
- concurrent first requests for one name await the same load (`loading[name]`, shielded: a client
  that leaves does not cancel the load the others wait for), so it loads once;
- a load that fails (a bad folder) answers every waiter 422 with the loader's reason and leaves
  nothing behind; the next request tries again (the folder may have been fixed).

A request holds its run from `acquire` to `release` (after its texts are computed). Only runs that
nobody holds and nobody waits for are evicted, so a request never finds its run gone; when every
candidate is in use the limits are exceeded for that moment and met again at the next release. An
evicted run is dropped from the registry, handed to the loader's `unload` (which forgets its
tensors and returns the memory) and loaded again if asked for later."""
from __future__ import annotations

import asyncio
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from ..errors import LorafitError
from .adapters_dir import NAME, AdaptersDir, NotServable
from .loader import PoolLoader, RunLoader, ServedRun, check_run

if TYPE_CHECKING:
    import torch

__all__ = ["NAME", "NotServable", "Registry", "ServedRun", "check_run", "parse_specs"]


def parse_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """RUN_DIR or NAME=RUN_DIR -> (name, folder); the name defaults to the folder's name."""
    out: list[tuple[str, Path]] = []
    seen: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not NAME.match(name):
            if sep and not Path(spec).exists():
                raise LorafitError(f"{spec}: '{name}' is not a valid model name (letters, digits, . _ -, at most 64, "
                                   "starting with a letter or digit)")
            name, path = Path(spec).resolve().name, spec
        folder = Path(path)
        if not folder.is_dir():
            raise LorafitError(f"{path}: no such run directory; give a folder written by lorafit train")
        if not NAME.match(name):
            raise LorafitError(f"{path}: folder name '{name}' is not a valid model name; serve it as NAME={path}")
        if name in seen:
            raise LorafitError(f"two runs are named '{name}' ({seen[name]} and {path}); name one with NAME={path}")
        seen[name] = path
        out.append((name, folder))
    return out


@dataclass(eq=False)
class Lease:
    """A run held by requests: loaded runs are only evicted when nobody holds them."""
    name: str
    run: ServedRun
    pinned: bool = False
    users: int = 0        # requests between acquire and release
    doomed: bool = False  # unloaded (DELETE) while in use: let go at its last release


class Registry:
    """name -> ServedRun: the pinned runs and, with an AdaptersDir, the runs loaded on demand."""

    def __init__(self, runs: dict[str, ServedRun], loader: Optional[RunLoader] = None,
                 adapters: Optional[AdaptersDir] = None, max_loaded: int = 0, max_bytes: int = 0,
                 log: Callable[[str], None] = lambda line: None):
        self.pinned = runs
        self.loader, self.adapters, self.log = loader, adapters, log
        self.max_loaded, self.max_bytes = max_loaded, max_bytes  # 0: no limit
        self.loaded: OrderedDict[str, Lease] = OrderedDict()  # loaded on demand, least recently used first
        self.loading: dict[str, asyncio.Future] = {}
        self.waiting: Counter = Counter()  # requests awaiting a name's load
        self.loads: Counter = Counter()    # loads done per name (lorafit_adapter_loads_total)
        self.failures: dict[str, str] = {}  # the last failed load's reason per name
        self.on_load: Callable[[str, float], None] = lambda name, seconds: None  # metrics hooks (app.py)
        self.on_unload: Callable[[str], None] = lambda name: None
        self._executor: Optional[ThreadPoolExecutor] = None

    # ------------------------------------------------------------ what is served

    @property
    def runs(self) -> dict[str, ServedRun]:
        """Every run loaded now, by name."""
        return {**{n: lease.run for n, lease in self.loaded.items()}, **self.pinned}

    def names(self) -> list[str]:
        return list(self.pinned) + [n for n in self.loaded if n not in self.pinned]

    def devices(self) -> list:
        return [r.device for r in self.pinned.values()] or [getattr(self.loader, "device", "cpu")]

    def check(self, name: str) -> None:
        """NotServable (404/403) unless name is served or servable: cheap, nothing is loaded."""
        if name in self.pinned or name in self.loaded:
            return
        if self.adapters is None:
            raise NotServable(404, f"model '{name[:80]}' is not served; served: {', '.join(self.names())}")
        self.adapters.folder(name)

    def known(self, name: str) -> bool:
        """A name worth its own metrics label (served or servable), without resolving anything."""
        return (name in self.pinned or name in self.loaded or
                (self.adapters is not None and bool(NAME.match(name)) and (self.adapters.path / name).is_dir()))

    def models(self) -> dict:
        """GET /v1/models: every loaded run (state loaded, all it reports) and every other servable name
        (state available or loading: its name, the loads so far, why the last one failed)."""
        out = [{**run.describe(), "state": "loaded", "pinned": True} for run in self.pinned.values()]
        out += [{**lease.run.describe(), "state": "loaded", "pinned": False, "in_use": lease.users,
                 "loads": self.loads[n]} for n, lease in self.loaded.items() if n not in self.pinned]
        if self.adapters is not None:
            for n in self.adapters.names():
                if n in self.pinned or n in self.loaded:
                    continue
                item = {"name": n, "state": "loading" if n in self.loading else "available", "loads": self.loads[n]}
                if n in self.failures:
                    item["error"] = self.failures[n]
                out.append(item)
        return {"models": out, "loaded_on_demand": len(self.loaded), "max_loaded": self.max_loaded,
                "adapter_bytes": self._bytes(), "max_adapter_bytes": self.max_bytes}

    # ------------------------------------------------------------ holding a run

    async def acquire(self, name: str) -> Lease:
        """name's run, held until release(lease); loaded first if it is not (NotServable: 404/403/422)."""
        run = self.pinned.get(name)
        if run is not None:
            return Lease(name, run, pinned=True)
        lease = self.loaded.get(name)
        if lease is None:
            lease = await self._load_once(name)
        lease.users += 1  # no await since the load: nothing could evict it in between
        if self.loaded.get(name) is lease:
            self.loaded.move_to_end(name)
        return lease

    def release(self, lease: Lease) -> None:
        if lease.pinned:
            return
        lease.users -= 1
        if lease.users > 0:
            return
        if lease.doomed:
            self._unload(lease, "unloaded on request")
        else:
            self._evict()  # the limits may have waited for this run to be free

    async def ensure_loaded(self, name: str) -> dict:
        """POST /v1/models/{name}/load: loaded (if not already) and reported."""
        lease = await self.acquire(name)
        try:
            return {**lease.run.describe(), "state": "loaded", "pinned": lease.pinned, "loads": self.loads[name]}
        finally:
            self.release(lease)

    async def unload(self, name: str) -> dict:
        """DELETE /v1/models/{name}: no longer loaded (freed now, or at the last release if in use)."""
        if name in self.pinned:
            raise NotServable(409, f"model '{name}' was named on the command line: it is pinned, never unloaded")
        self.check(name)
        if name in self.loading:
            try:
                await asyncio.shield(self.loading[name])
            except NotServable:
                pass
        lease = self.loaded.pop(name, None)
        if lease is not None:
            if lease.users or self.waiting[name]:
                lease.doomed = True
            else:
                self._unload(lease, "unloaded on request")
        return {"name": name, "state": "available", "loads": self.loads[name]}

    # ------------------------------------------------------------ loading and unloading

    async def _load_once(self, name: str) -> Lease:
        task = self.loading.get(name)
        if task is None:
            if self.adapters is None:
                self.check(name)  # raises: nothing is loaded on demand
            folder = self.adapters.folder(name)
            task = self.loading[name] = asyncio.ensure_future(self._load(name, folder))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # read even if every waiter left
        self.waiting[name] += 1
        try:
            return await asyncio.shield(task)  # a waiter cancelled does not cancel the load others wait for
        finally:
            self.waiting[name] -= 1
            if not self.waiting[name]:
                del self.waiting[name]

    async def _load(self, name: str, folder: Path) -> Lease:
        start = time.monotonic()
        try:
            run = await asyncio.get_running_loop().run_in_executor(self._worker(), self._load_sync, name, folder)
        except NotServable as e:
            self.failures[name] = e.detail
            raise
        finally:
            del self.loading[name]
        self.failures.pop(name, None)
        lease = self.loaded[name] = Lease(name, run)
        self.loads[name] += 1
        seconds = time.monotonic() - start
        self.on_load(name, seconds)
        self.log(f"loaded {name} on demand in {seconds:.2f} s: {run.own_parameters:,} own parameters "
                 f"({run.own_bytes / 2**20:.1f} MB), {run.shared_parameters:,} shared")
        self._evict()
        return lease

    def _load_sync(self, name: str, folder: Path) -> ServedRun:
        """In the worker thread: the loader's run, or NotServable(422) with its reason in one line (the
        server's own paths named by the model's name)."""
        try:
            return self.loader.load(name, folder, on_demand=True)
        except LorafitError as e:
            why = str(e)
        except Exception as e:  # a damaged file (safetensors, JSON, shapes): the library's own words
            why = f"{folder}: cannot be loaded ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]})"
        why = why.replace(str(folder), name).replace(str(self.adapters.path / name), name)
        raise NotServable(422, f"model '{name}': {why}")

    def _bytes(self) -> int:
        return sum(lease.run.own_bytes for lease in self.loaded.values())

    def _over(self) -> bool:
        return bool((self.max_loaded and len(self.loaded) > self.max_loaded) or
                    (self.max_bytes and self._bytes() > self.max_bytes))

    def _evict(self) -> None:
        """Least recently used first, until within the limits: only runs nobody holds or awaits, and never
        the most recently used (a run over --max-adapter-memory alone is still served)."""
        for name in list(self.loaded)[:-1]:
            if not self._over():
                return
            lease = self.loaded[name]
            if lease.users or self.waiting[name]:
                continue
            del self.loaded[name]
            limits = [f"--max-loaded {self.max_loaded}"] * bool(self.max_loaded) + \
                [f"--max-adapter-memory {self.max_bytes / 2**20:g} MB"] * bool(self.max_bytes)
            self._unload(lease, f"evicted: least recently used beyond {' / '.join(limits)}")

    def _unload(self, lease: Lease, why: str) -> None:
        self.on_unload(lease.name)
        self.log(f"{lease.name}: {why}")
        self._worker().submit(self.loader.unload, lease.run)  # after any load in progress (one worker)

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="lorafit-loader")
        return self._executor

    def close(self) -> None:
        """At exit: wait for a load or unload in progress (a thread inside torch at interpreter exit aborts it)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    @classmethod
    def load(cls, specs: list[tuple[str, Path]], device: torch.device | None = None, log=lambda line: None,
             packed: bool | None = None, *, adapters_dir: str | Path | None = None, max_loaded: int = 0,
             max_bytes: int = 0, mixed: bool = True, loader: Optional[RunLoader] = None) -> "Registry":
        """The pinned runs (specs) loaded now; adapters_dir's runs on demand, through the same loader.
        mixed: runs over one base share forwards (infer/mixed.py) where they can."""
        checked = [check_run(folder) for _, folder in specs]
        loader = loader or PoolLoader(device, expected=[c.cfg for c in checked], packed=packed, mixed=mixed)
        runs = {}
        for (name, folder), read in zip(specs, checked):
            cfg = read.cfg
            run = runs[name] = loader.load(name, Path(folder), on_demand=False, checked=read)
            log(f"loaded {name} ({folder}): {cfg.adapter.method} over {cfg.model.name}, {run.own_parameters:,} own "
                f"parameters, {run.shared_parameters:,} shared")
        adapters = AdaptersDir(adapters_dir) if adapters_dir is not None else None
        return cls(runs, loader, adapters, max_loaded, max_bytes, log)
