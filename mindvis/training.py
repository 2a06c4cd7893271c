"""Pieces both training stages share: seeded shuffling, the learning-rate schedule, checkpoint folders,
logging. Every epoch reseeds from (seed, epoch, process) and the sampler shuffles from (seed, epoch),
so a run resumed from a checkpoint repeats the uninterrupted run exactly."""
from __future__ import annotations

import errno
import json
import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Sampler

from .data.fmri import error_summary
from .utils.io import atomic_dir, atomic_write_text

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_NAME = "training_state.pt"


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf."""


class EpochShuffleSampler(Sampler):
    """A random permutation per epoch drawn from (seed, epoch): the same order on every process and resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def seed_epoch(seed: int, epoch: int, process_index: int) -> None:
    """Reseed torch's global generator for one epoch of one process."""
    torch.manual_seed(seed * 1_000_003 + epoch * 1_009 + process_index)


def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """Linear warm-up, then half-cycle cosine decay; ``epoch`` is fractional (per-iteration schedule)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(1e-8, epochs - warmup_epochs)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def decay_groups(named_params, weight_decay: float) -> list[dict]:
    """AdamW groups with no weight decay on biases and 1-D parameters (norms), as timm's ``add_weight_decay``."""
    decay, no_decay = [], []
    for name, p in named_params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def check_finite_loss(loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    if not torch.isfinite(loss):
        raise NonFiniteLossError(
            f"loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} (lr {lr:.3g}); the inputs are checked "
            "for NaN/Inf when loaded, so lower train.lr or use train.mixed_precision=no")


def record_epoch(history: list[dict], entry: dict, log: logging.Logger, accelerator, tracker: str) -> None:
    """Append an epoch's entry to the history, log it in one line and send it to the tracker (if any)."""
    history.append(entry)
    log.info("epoch %d: %s", entry["epoch"], ", ".join(f"{k} {v:.4f}" for k, v in entry.items()
                                                      if k not in ("epoch", "time_s")))
    if tracker != "none":
        accelerator.log({k: v for k, v in entry.items() if k != "epoch"}, step=entry["epoch"])


def latest_checkpoint(run_dir: str | Path) -> Path:
    ckpts = Path(run_dir) / CHECKPOINTS
    pointer = ckpts / LATEST
    if not pointer.is_file():
        raise FileNotFoundError(f"{run_dir} has no checkpoint to resume from ({pointer} is missing)")
    return ckpts / pointer.read_text().strip()


def load_resume_checkpoint(run_dir: str | Path, load_model: Callable[[Path], object]) -> tuple[Path, object, dict]:
    """The newest intact checkpoint of a run: (its folder, ``load_model(folder / "model")``, its training state).

    The checkpoint ``latest`` points at comes first, then the other ``epoch-*`` folders from the newest; one whose
    model or state cannot be read (truncated by a full disk, say) is named in the run's log and skipped.
    """
    ckpts = Path(run_dir) / CHECKPOINTS
    first = latest_checkpoint(run_dir)
    candidates = [first] + sorted((p for p in ckpts.glob("epoch-*") if p.is_dir() and p != first), reverse=True)
    log = _run_logger or logging.getLogger("mindvis.training")
    for ckpt in candidates:
        try:
            return ckpt, load_model(ckpt / "model"), load_training_state(ckpt / STATE_NAME)
        except Exception as e:  # noqa: BLE001 - a damaged file can fail in many ways; the next one is tried
            log.warning("checkpoint %s is damaged and skipped (%s)", ckpt, error_summary(e))
    raise FileNotFoundError(f"{run_dir} has no intact checkpoint to resume from (tried "
                            f"{', '.join(c.name for c in candidates)})")


def write_checkpoint(run_dir: Path, epoch: int, fill: Callable[[Path], None], keep: int) -> Path:
    """Write ``checkpoints/epoch-NNNN`` atomically with ``fill(tmp_dir)``, point ``latest`` at it, and
    keep the newest ``keep`` epoch folders."""
    ckpts = run_dir / CHECKPOINTS
    name = f"epoch-{epoch:04d}"
    atomic_dir(ckpts / name, fill)
    atomic_write_text(ckpts / LATEST, name + "\n")
    for old in sorted(p for p in ckpts.glob("epoch-*") if p.is_dir())[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return ckpts / name


def remove_stale_temporaries(run_dir: Path) -> int:
    """Delete what killed atomic writes left in a run folder (``.NAME.*.tmp`` and ``.NAME.old`` siblings of
    checkpoints, ``best/`` and ``model/``); returns how many were removed."""
    stale = [p for folder in (run_dir, run_dir / CHECKPOINTS) if folder.is_dir()
             for p in folder.glob(".*") if p.name.endswith((".tmp", ".old"))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return len(stale)


def save_training_state(path: Path, optimizer, epoch: int, history: list[dict], **extra) -> None:
    torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "history": json.dumps(history), **extra}, path)


def load_training_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    state["history"] = json.loads(state["history"])
    return state


_run_logger: logging.Logger | None = None  # the logger of the run this process started last (for its failure)
_current_run: Path | None = None  # its folder
WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


class RunLogHandler(logging.FileHandler):
    """``train.log``: a write that fails (full or read-only disk) is reported once on stderr, not per record."""

    failed = False

    def handleError(self, record) -> None:
        if not self.failed:
            self.failed = True
            print(f"warning: cannot write to {self.baseFilename}: {sys.exc_info()[1]}; the log goes to stderr only",
                  file=sys.stderr)


def setup_logging(name: str, run_dir: Path, main: bool) -> logging.Logger:
    """Log to stderr and ``run_dir/train.log`` on the main process; warnings only elsewhere."""
    log = logging.getLogger(name)
    log.handlers.clear()
    log.setLevel(logging.INFO if main else logging.WARNING)
    log.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    handlers = [logging.StreamHandler(sys.stderr)] + ([RunLogHandler(run_dir / "train.log")] if main else [])
    for h in handlers:
        h.setFormatter(fmt)
        log.addHandler(h)
    return log


#: what makes a folder a run (a folder holding only train.log is a run that failed before it began)
RUN_CONTENTS = ("config.yaml", CHECKPOINTS, "model", "best")


def check_new_run_folder(run_dir: Path) -> None:
    """A new run never writes into a file or into an earlier run's folder: a one-line DataError naming it."""
    from .data.fmri import DataError

    for folder in (run_dir, *run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise DataError(f"{folder} is a file, not a folder: --out names the folder that holds run folders")
            break
    held = [name for name in RUN_CONTENTS if (run_dir / name).exists()]
    if held:
        raise DataError(f"{run_dir} holds an earlier run ({', '.join(held)}): continue it with --resume {run_dir}, or "
                        "choose another --run-name")


def start_run(train_cfg, output_dir: str, resume: str | Path | None, run_name: str | None, logger: str):
    """An accelerate ``Accelerator`` for ``train_cfg`` and the run folder (new, or ``resume``), with logging set up.

    Returns (accelerator, run_dir, is_main_process).
    """
    from datetime import datetime

    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tc = train_cfg
    run_dir = Path(resume) if resume else Path(output_dir) / (run_name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    if not resume:
        check_new_run_folder(run_dir)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.accum_iter,
                              log_with=None if tc.tracker == "none" else tc.tracker,
                              project_dir=str(Path(resume or output_dir)))
    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    global _run_logger, _current_run
    _current_run = run_dir
    log = _run_logger = setup_logging(logger, run_dir, main)
    if main:
        removed = remove_stale_temporaries(run_dir)
        if removed:
            log.info("removed %d unfinished temporary file(s) of an interrupted write in %s", removed, run_dir)
    set_seed(tc.seed)
    return accelerator, run_dir, main


def add_run_arguments(parser, stage: str, resume_help: str = "continue the run in RUN_DIR from its latest intact "
                                                              "checkpoint, with its saved config.yaml (overrides that "
                                                              "would change a setting are refused)"):
    """The flags every training command shares: preset, resume, output folder, run name, --print-config and the
    ``key=value`` overrides (accepted anywhere on the line when parsed with ``parse_intermixed_args``)."""
    from .configs import preset_names

    parser.add_argument("--config", metavar="PRESET",
                        help=f"YAML preset: a file or a shipped name ({', '.join(preset_names(stage))})")
    parser.add_argument("--resume", metavar="RUN_DIR", help=resume_help)
    parser.add_argument("--output-dir", "--out", dest="output_dir", metavar="DIR",
                        help="parent folder of run folders (sets output_dir)")
    parser.add_argument("--run-name", metavar="NAME", help="run folder name (default: date and time); an earlier run's "
                                                           "folder is refused (continue it with --resume)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides (see below; --print-config lists every key)")


def _report_failure(message: str) -> None:
    """On stderr, and in the run's train.log when the run folder exists already."""
    print(message, file=sys.stderr)
    for h in _run_logger.handlers if _run_logger else []:
        if isinstance(h, RunLogHandler) and not h.failed:
            h.emit(logging.LogRecord(_run_logger.name, logging.ERROR, "", 0, message, None, None))


def run_training_command(prog: str, args, resolve, train, errors: tuple = ()) -> int:
    """Resolve the config, print it (``--print-config``) or train; user mistakes become one-line errors (exit 2),
    a non-finite loss exit 1."""
    from omegaconf import OmegaConf

    from .compat.original import OriginalCheckpointError
    from .config import ConfigError
    from .data.fmri import DataError

    global _run_logger, _current_run
    _run_logger = _current_run = None
    try:
        cfg = resolve(args)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            return 0
        train(cfg, resume=args.resume, run_name=args.run_name)
    except (ConfigError, DataError, FileNotFoundError, OriginalCheckpointError, *errors) as e:
        _report_failure(f"{prog}: error: {e}")
        return 2
    except NonFiniteLossError as e:
        _report_failure(f"{prog}: training stopped: {e}")
        return 1
    except Exception as e:  # noqa: BLE001 - only failed writes are reported in one line; anything else is raised
        reason = write_failure(e)
        if reason is None:
            raise
        _report_failure(f"{prog}: error: cannot write to {reason}; the checkpoints written before stay intact "
                        f"(--resume continues from the newest)")
        return 2
    return 0


#: how writers that are not Python's own say that a write failed: safetensors (its I/O error names the OS error)
#: and torch.save (its zip writer's failed assertions; never the reader's)
_WRITE_FAILURE = ("os error 28", "No space left", "Disk quota", "Read-only file system", "PytorchStreamWriter",
                  "file write failed", "unexpected pos")


def write_failure(e: BaseException) -> str | None:
    """``"<where>: <why>"`` when ``e`` is a failed write of the output folder (full, read-only, no permission), else
    None."""
    import shutil as _shutil

    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return f"{e.filename or _current_run or 'the output folder'}: {e.strerror}"
    text = str(e)
    if isinstance(e, OSError) or not any(m in text for m in _WRITE_FAILURE):
        return None
    where = _current_run or "the output folder"
    why = "No space left on device" if "os error 28" in text or "No space left" in text else text.splitlines()[0]
    try:
        if "No space" not in why and _current_run and _shutil.disk_usage(_current_run).free < 1 << 20:
            why = f"No space left on device ({why})"
    except OSError:
        pass
    return f"{where}: {why}"
