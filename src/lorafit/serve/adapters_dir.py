"""`lorafit serve --adapters-dir DIR`: which names DIR serves, and the one folder a name means.

A name is a run folder directly under DIR, named by its folder's name. Nothing outside DIR can be
named: a name must match NAME (letters, digits, `. _ -`, starting with a letter or digit, so never
`..`, never a `/` or an absolute path), and the folder it means is resolved (symlinks followed) and
must lie inside DIR's own resolved path, so a symlink in DIR pointing elsewhere is refused. The
folder is resolved again at every load: a link changed after start-up cannot escape either.

Listing reads DIR's entries only (one scandir: no run's files are opened), so a thousand adapters
are listed in milliseconds and nothing is loaded until it is asked for (registry.py)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import LorafitError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a URL path segment without quoting


class NotServable(Exception):
    """A name DIR does not serve: status (404 unknown or refused) and a one-line reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class AdaptersDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise LorafitError(f"--adapters-dir: {path} is not a folder; give the folder holding the run folders to serve")
        self.real = self.path.resolve()

    def names(self) -> list[str]:
        """Every servable name, sorted: sub-folders whose name is a valid model name and that resolve inside DIR."""
        out = []
        with os.scandir(self.path) as entries:
            for e in entries:
                if not NAME.match(e.name):
                    continue
                try:
                    if not e.is_dir():  # follows a symlink: a link to a folder counts, then its target is checked
                        continue
                    if e.is_symlink() and not self._inside(Path(e.path).resolve()):
                        continue
                except OSError:
                    continue
                out.append(e.name)
        return sorted(out)

    def _inside(self, real: Path) -> bool:
        return real != self.real and self.real in real.parents

    def folder(self, name: str) -> Path:
        """The run folder `name` means (resolved), or NotServable saying why not."""
        shown = name[:80]
        if not NAME.match(name):
            raise NotServable(404, f"model '{shown}' is not a valid model name (letters, digits, . _ -, at most 64, "
                                   f"starting with a letter or digit)")
        path = self.path / name
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            raise NotServable(404, f"model '{shown}' is not served: no folder {name} in the adapters folder") from None
        if not self._inside(real):
            raise NotServable(403, f"model '{shown}': its folder resolves outside the adapters folder; refused")
        if not real.is_dir():
            raise NotServable(404, f"model '{shown}' is not served: {name} in the adapters folder is not a folder")
        return real
