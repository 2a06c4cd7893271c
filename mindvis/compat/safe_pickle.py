"""Read foreign PyTorch checkpoints without running any code from them.

Training scripts often ``torch.save`` more than weights: the optimizer, the learning-rate scheduler (whose state
can hold a bound method, which pickles the scheduler object itself), a gradient scaler, a config object. A plain
``torch.load`` would import and run those classes; ``torch.load(weights_only=True)`` refuses them.
:func:`load_torch_checkpoint` keeps ``weights_only=True`` and admits the names of such training-state objects as
:class:`Inert` stand-ins: each records the name it stands for, the arguments it was rebuilt with and its pickled
state as data, and runs nothing. Names outside the admitted namespaces (``os.system``, ``builtins.eval``, a
``subprocess`` class ...) are refused with one line before anything is unpickled.
"""
from __future__ import annotations

import os
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import torch

from ..data.fmri import DataError

# Plain builtins run no foreign code, so they are admitted as themselves; the restricted unpickler stores items
# only into plain dicts and lists, so mapping and sequence types rebuild as those.
_AS_ITSELF = {f"builtins.{t.__name__}": t for t in (dict, list, tuple, set, frozenset, int, float, str, bool, bytes,
                                                    complex, slice, range, object)}
_AS_CONTAINER = {"collections.defaultdict": lambda *args: {}, "collections.deque": lambda items=(), *args: list(items)}


#: Namespaces of the objects that training scripts save beside their weights: optimizers, schedulers (and the
#: bound methods in their state), gradient scalers, and the containers those use.
TRAINING_STATE = ("torch.optim.", "torch.amp.", "torch.cuda.amp.", "collections.", "functools.partial",
                  "copyreg._reconstructor", "builtins.getattr", "numpy.", *_AS_ITSELF)
_REFUSED_GLOBAL = re.compile(r"[Uu]nsupported (?:global: )?GLOBAL ([\w.<>]+)")


class CheckpointError(DataError):
    """A file is not a readable checkpoint of the expected kind, or it would run code when unpickled."""


class Inert:
    """Stand-in for a pickled object of a foreign class or function: it holds data and runs nothing.

    ``name`` is what it stands for (``torch.optim.lr_scheduler.OneCycleLR``); ``args`` the arguments it was
    rebuilt with; ``state`` what the pickle set on it.
    """

    name = "?"

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.name}>"


@lru_cache(maxsize=None)
def stand_in(name: str):
    """What the pickled global ``name`` is rebuilt as: a plain builtin or container, else an :class:`Inert`
    subclass of its own (one class per name, so each stand-in knows what it stands for)."""
    if name in _AS_ITSELF:
        return _AS_ITSELF[name]
    if name in _AS_CONTAINER:
        return _AS_CONTAINER[name]
    return type(f"Inert[{name}]", (Inert,), {"name": name, "__module__": __name__})


def _admitted(name: str, admit: tuple[str, ...]) -> bool:
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in admit)


def _refusal(path: Path, name: str, what: str) -> CheckpointError:
    # never pass on torch's advice to retry with weights_only=False: this file would run code
    return CheckpointError(f"{path}: refused: it holds a pickled {name}, which would run code when unpickled "
                           f"(a {what} holds tensors, plain data and training state only)")


def load_torch_checkpoint(path: str | os.PathLike, what: str = "checkpoint",
                          admit: tuple[str, ...] = TRAINING_STATE):
    """``torch.load`` of ``path`` with the restricted unpickler, the globals under ``admit`` as :class:`Inert`.

    ``admit`` holds full names or prefixes ending in a dot. Raises :class:`CheckpointError` in one line naming the
    file: a refused global, a truncated or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint (legacy format or damaged): found while loading below
        names = []
    for _ in range(64):  # legacy-format files: admit the globals one at a time as the unpickler meets them
        for name in names:
            if not _admitted(name, admit):
                raise _refusal(path, name, what)
        try:
            with torch.serialization.safe_globals([(stand_in(n), n) for n in names]):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised in one line with the file named
            refused = _REFUSED_GLOBAL.search(str(e))
            name = refused and refused.group(1)
            if name and "." not in name:  # torch's message drops the "builtins." of builtins
                name = f"builtins.{name}"
            if name and name not in names:
                names = [*names, name]
                continue
            if name:
                raise _refusal(path, name, what) from None
            if "Unsupported operand" in str(e) and zipfile.is_zipfile(path):
                return _load_zip_restricted(path, what, admit)  # e.g. POP, which torch's unpickler lacks
            detail = next((line for line in str(e).splitlines() if line.strip() and "weights_only" not in line),
                          type(e).__name__)
            raise CheckpointError(f"{path}: truncated or not a readable {what} "
                                  f"({type(e).__name__}: {detail.strip()})") from None
    raise CheckpointError(f"{path}: too many foreign objects pickled in this {what}")


def _load_zip_restricted(path: Path, what: str, admit: tuple[str, ...]):
    """A zip-format ``torch.save`` file read by a restricted :class:`pickle.Unpickler` (Python's "restricting
    globals" pattern) for pickles that use opcodes torch's restricted unpickler does not implement (POP, which
    ``pickle`` writes for self-referencing objects such as a scheduler whose bound method is in its own state).

    Globals resolve to what torch's ``weights_only`` unpickler allows (tensor rebuilding, dtypes, storages, plain
    containers) or to the stand-ins of ``admit``; any other name refuses the file. Storages are read from the
    archive's records.
    """
    import io
    import pickle

    from torch._weights_only_unpickler import _get_allowed_globals

    allowed = _get_allowed_globals()
    renamed = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol-2 pickles name Python 2's modules

    try:
        with zipfile.ZipFile(path) as archive:
            records = {name.split("/", 1)[-1]: name for name in archive.namelist()}
            if records.get("byteorder") and archive.read(records["byteorder"]) != b"little":
                raise CheckpointError(f"{path}: a big-endian {what}; mindvis reads little-endian files")
            storages = {}

            class Restricted(pickle.Unpickler):
                def find_class(self, module, name):
                    full = f"{renamed.get(module, module)}.{name}"
                    if full in allowed:
                        return allowed[full]
                    if _admitted(full, admit):
                        return stand_in(full)
                    raise _refusal(path, full, what)

                def persistent_load(self, pid):
                    kind, storage_type, key, _location, _numel = pid
                    if kind != "storage":
                        raise pickle.UnpicklingError(f"unsupported persistent id {kind!r}")
                    if key not in storages:
                        data = archive.read(records[f"data/{key}"])
                        raw = torch.UntypedStorage.from_buffer(data, dtype=torch.uint8) if data else torch.UntypedStorage(0)
                        dtype = storage_type if isinstance(storage_type, torch.dtype) else storage_type.dtype
                        storages[key] = torch.storage.TypedStorage(wrap_storage=raw, dtype=dtype, _internal=True)
                    return storages[key]

            return Restricted(io.BytesIO(archive.read(records["data.pkl"]))).load()
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - one line, file named
        raise CheckpointError(f"{path}: truncated or not a readable {what} ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None


def inert_to_data(obj):
    """Containers with :class:`Inert` stand-ins turned into plain data for reading settings: a stand-in becomes
    ``{"__inert__": name, "args": [...], "state": ...}``; tensors stay tensors."""
    if isinstance(obj, Inert):
        return {"__inert__": obj.name, "args": inert_to_data(list(obj.args)), "state": inert_to_data(obj.state)}
    if isinstance(obj, dict):
        return {k: inert_to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(inert_to_data(v) for v in obj)
    return obj
