"""A run directory: what is in it, how trained weights are written and read back exactly.

Layout: config.yaml, labels.json, metrics.jsonl, params.txt, eval.json, curves.png,
confusion.png, report.md, tokenizer/, adapter/ (PEFT format) or model/ (full fine-tuning),
checkpoints/ (top-k weights by the selection metric), resume/ (resumable state while training: checkpoint.py).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch

from .config import RunConfig, load_config
from .errors import LorafitError


RUN_MARKER = ".lorafit-run"  # written first into every new run: what --overwrite is allowed to replace


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask alone must set
    it to read it, a race with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """What open()/mkdir() would give under the user's umask."""
    return (0o777 if folder else 0o666) & ~current_umask()


def follow_umask(folder: Path) -> None:
    """Give every file under `folder` the umask's mode: safetensors, like mkstemp, writes its
    temporary file 0600 and renames it, so a teammate or a serving account could not read it."""
    mode = default_mode()
    for p in [Path(folder), *Path(folder).rglob("*")]:
        if p.is_file() and not p.is_symlink():
            os.chmod(p, mode)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, default_mode())  # mkstemp's 0600 would otherwise become the final file's mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------- output-side I/O errors

def _fs_trouble(folder: Path) -> int | None:
    """EROFS or ENOSPC when the file system holding `folder` is read-only or (nearly) full."""
    import errno

    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if st.f_bavail * st.f_frsize < 1 << 20:
        return errno.ENOSPC
    return None


def io_failure(e: BaseException, where: Path) -> str | None:
    """'PATH: what the OS said' when `e` is a failed file operation, else None. torch and
    safetensors raise RuntimeError / SafetensorError for a full or read-only disk, with the OS
    error in their text or (torch's zip writer: 'unexpected pos') not at all: then the file system
    of `where` (the folder being written) is asked whether it is read-only or full."""
    if isinstance(e, OSError) and e.errno:
        return f"{e.filename or where}: {e.strerror or os.strerror(e.errno)}"
    if type(e).__name__ not in ("RuntimeError", "SafetensorError"):
        return None
    text = str(e)
    path = re.search(r'at path "([^"]+)"', text)
    path = path.group(1) if path else where
    code = re.search(r"os error (\d+)", text)
    if code:
        return f"{path}: {os.strerror(int(code.group(1)))}"
    said = re.search(r"strerror: ([^\n]+)", text)
    if said:
        return f"{path}: {said.group(1).strip()}"
    if re.search(r"inline_container|I/O error|write failed|unexpected pos", text):
        code = _fs_trouble(Path(where))
        if code is not None:
            return f"{path}: {os.strerror(code)}"
    return None


# ---------------------------------------------------------------- the run directory itself

def is_run_dir(folder: Path) -> bool:
    """A lorafit run: the marker, or (runs written before it) config.yaml + labels.json."""
    folder = Path(folder)
    return (folder / RUN_MARKER).is_file() or ((folder / "config.yaml").is_file() and (folder / "labels.json").is_file())


def _protected(folder: Path) -> str | None:
    """Why `folder` must never be replaced, even when it holds a run."""
    real, cwd = folder.resolve(), Path.cwd().resolve()
    if real == cwd:
        return "the current directory"
    if real in cwd.parents:
        return "a parent of the current directory"
    if real == Path.home().resolve():
        return "the home directory"
    if os.path.ismount(real):
        return "a mount point"
    return None


def check_writable(run_dir: Path, fix: str = "choose another --out") -> None:
    """The run directory, or the nearest folder above it that exists, takes a new file: a probe
    is created and deleted, as permission bits alone miss read-only file systems (and root)."""
    run_dir = Path(run_dir)
    p = Path(os.path.abspath(run_dir))
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise LorafitError(f"{run_dir}: {p} is a file, not a folder; {fix}")
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".lorafit-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise LorafitError(f"{run_dir}: cannot write in {p} ({os.strerror(e.errno) if e.errno else e}); {fix}") from None


def check_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> None:
    """Refuse, before any work, a run directory that cannot be used; writes nothing (but a probe)."""
    run_dir = Path(run_dir)
    if resume:
        from .checkpoint import read_meta

        if not (run_dir / "config.yaml").is_file():
            raise LorafitError(f"{run_dir}: not a lorafit run directory (config.yaml missing); nothing to resume")
        read_meta(run_dir)  # refuses when there is no checkpoint
        check_writable(run_dir, "make it writable to resume the run there")
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise LorafitError(f"{run_dir}: exists and is not a folder; choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite and is_run_dir(run_dir):
            raise LorafitError(f"{run_dir}: run directory already exists; pass --overwrite to replace it, "
                               f"--resume to continue it, or --out for a new one")
        if not overwrite:
            raise LorafitError(f"{run_dir}: folder exists and is not a lorafit run directory (no {RUN_MARKER}, no "
                               "config.yaml + labels.json); choose another --out (--overwrite replaces only a run)")
        why = _protected(run_dir)
        if why is not None:
            raise LorafitError(f"{run_dir}: is {why}; --overwrite never replaces it: choose another --out")
        if run_dir.is_symlink():
            raise LorafitError(f"{run_dir}: is a symbolic link; --overwrite replaces only a run directory itself: "
                               f"give --out {run_dir.resolve()}")
        if not is_run_dir(run_dir):
            raise LorafitError(f"{run_dir}: not a lorafit run directory (no {RUN_MARKER}, no config.yaml + labels.json); "
                               "--overwrite replaces only a run: choose another --out, or empty the folder yourself")
        check_writable(run_dir.parent)  # the old run is moved aside there
    check_writable(run_dir)


class NewRunDir:
    """What prepare_run_dir changed, so that a setup failing later puts it back: undo() leaves the
    folder as it was (absent, empty, or the run it replaces); commit() drops the replaced run."""

    def __init__(self, path: Path, before: str, aside: Path | None = None):
        self.path, self.before, self.aside = path, before, aside

    def undo(self) -> None:
        if self.before == "absent":
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.before == "empty":
            for p in list(self.path.iterdir()):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
        elif self.aside is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            try:
                os.rename(self.aside, self.path)
                self.aside = None
            except OSError:
                pass  # the replaced run stays where it was moved, whole: never deleted by a failure

    def commit(self) -> None:
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)
            self.aside = None


def prepare_run_dir(run_dir: Path, *, overwrite: bool, resume: bool) -> NewRunDir | None:
    """Make the run directory (None for a resumed run, which keeps its own). A run being replaced
    is renamed aside, not deleted: NewRunDir.commit() deletes it once setup has passed."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite=overwrite, resume=resume)
    if resume:
        return None
    if not run_dir.exists():
        made = NewRunDir(run_dir, "absent")
    elif not any(run_dir.iterdir()):
        made = NewRunDir(run_dir, "empty")
    else:  # check_run_dir let it through: --overwrite on a run
        n = 0
        while (aside := run_dir.with_name(f".{run_dir.name}.replaced-{os.getpid()}-{n}")).exists() or aside.is_symlink():
            n += 1
        os.rename(run_dir, aside)
        made = NewRunDir(run_dir, "replaced", aside)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RUN_MARKER, "lorafit run directory: `lorafit train --overwrite` may replace it\n")
    except BaseException:
        made.undo()
        raise
    return made


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu").clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def initial_lora(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """LoRA A/B right after a PiSSA/OLoRA init, keyed as in adapter_model.safetensors (see to_plain_lora)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu").clone() for k, v in get_peft_model_state_dict(model).items()
            if ".lora_A." in k or ".lora_B." in k}


def to_plain_lora(folder: Path, init: dict[str, torch.Tensor]) -> None:
    """Rewrite a saved PiSSA/OLoRA adapter as plain LoRA over the unmodified base weights.

    Those inits move s·B0A0 out of the base: W_res = W - s·B0A0, and training gives W_res + s·BA
    = W + s·[B | -B0][A ; A0], a LoRA of rank 2r with the same scale s (alpha doubled, or times √2
    with rsLoRA). PEFT's own conversion (save_pretrained(path_initial_model_for_weight_conversion))
    drops modules_to_save, i.e. the trained head, so lorafit does the same algebra itself and keeps
    every other tensor as saved."""
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    state = load_file(str(weights))
    missing = [k for k in init if k not in state]
    if missing:
        raise RuntimeError(f"{weights}: initial LoRA tensors {missing[:2]} not in the saved adapter")
    for k, v0 in init.items():
        state[k] = torch.cat([state[k], v0], 0) if ".lora_A." in k else torch.cat([state[k], -v0], 1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    path = folder / "adapter_config.json"
    pc = json.loads(path.read_text(encoding="utf-8"))
    pc["r"] *= 2
    pc["lora_alpha"] *= 2 ** 0.5 if pc.get("use_rslora") else 2
    pc["init_lora_weights"] = True
    path.write_text(json.dumps(pc, indent=2), encoding="utf-8")


CLASSIFIER_CONFIG = "classifier_config.json"  # in adapter/: AutoConfig.from_pretrained(adapter / CLASSIFIER_CONFIG)


def save_weights(model: torch.nn.Module, tokenizer, run_dir: Path, cfg: RunConfig,
                 lora_init: dict[str, torch.Tensor] | None = None) -> Path:
    """Final weights: PEFT format in adapter/ (loadable by PeftModel.from_pretrained) or, for full
    fine-tuning, the whole model in model/. Written to a temporary folder, then renamed.
    lora_init: the PiSSA/OLoRA starting A/B, to save as plain LoRA (to_plain_lora)."""
    name = "model" if cfg.adapter.method == "full" else "adapter"
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.adapter.method == "adalora":
        # Saved at init_r with pruned ranks zeroed (no rank_pattern resize): reload is exact at any step.
        for pc in model.peft_config.values():
            pc.rank_pattern = None
    model.save_pretrained(tmp, safe_serialization=True)
    if lora_init is not None:
        to_plain_lora(tmp, lora_init)
    tokenizer.save_pretrained(tmp)
    if name == "adapter":
        # adapter_config.json has no label map: ship the classifier's config (num_labels, id2label,
        # label2id) beside it. Not as config.json: transformers then takes adapter/ for a whole model
        # and AutoModelForSequenceClassification.from_pretrained(adapter/) stops finding the base.
        model.get_base_model().config.to_json_file(tmp / CLASSIFIER_CONFIG)
    follow_umask(tmp)  # safetensors wrote its file 0600
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def read_run(run_dir: str | Path) -> tuple[RunConfig, list[str]]:
    run_dir = Path(run_dir)
    cfg_path, labels_path = run_dir / "config.yaml", run_dir / "labels.json"
    if not cfg_path.is_file() or not labels_path.is_file():
        raise LorafitError(f"{run_dir}: not a finished lorafit run (config.yaml / labels.json missing)")
    return load_config(cfg_path), json.loads(labels_path.read_text(encoding="utf-8"))


def load_trained(run_dir: str | Path, *, merge: bool = False, device: str | torch.device = "cpu",
                 first_token: bool | None = None, packed: bool | None = None):
    """(model in eval mode, tokenizer, cfg, label names) from a run directory.

    Adapters load through `PeftModel.from_pretrained` over the base model with the same head
    surgery as in training; merge=True folds LoRA into the base weights (no adapter overhead).
    first_token: run the last layer on the first token only where that applies (first_token.py);
    None follows the run's train.last_layer_first_token, False gives the plain model.
    packed: Linear layers on prepacked oneDNN weights on CPU (packed.py; for inference only); None
    follows the run's train.packed_inference."""
    from .model import head_plan
    from .model.load import cap_max_length, load_base, load_tokenizer

    run_dir = Path(run_dir)
    cfg, names = read_run(run_dir)
    weights = run_dir / ("model" if cfg.adapter.method == "full" else "adapter")
    if not weights.is_dir():
        raise LorafitError(f"{run_dir}: no trained weights ({weights.name}/ missing); did training finish?")
    tokenizer = load_tokenizer(cfg.model, str(weights))
    base = load_base(cfg.model, names)
    cfg = cap_max_length(cfg, base.config, tokenizer)
    head_plan(base, cfg)
    if cfg.adapter.method == "full":
        from safetensors.torch import load_file

        state = load_file(str(weights / "model.safetensors"))
        missing, unexpected = base.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if m not in getattr(base, "_tied_weights_keys", None) or []]:
            raise LorafitError(f"{weights}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        model = base
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(weights))
        if merge:
            model = model.merge_and_unload()
    if cfg.train.last_layer_first_token if first_token is None else first_token:
        from . import first_token as ft

        ft.apply(model, cfg.head.type)
    model = model.to(device).eval()
    if cfg.train.packed_inference if packed is None else packed:
        from . import packed as packing

        packing.apply(model, device)
    return model, tokenizer, cfg, names
