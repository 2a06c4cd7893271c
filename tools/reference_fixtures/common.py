"""Shared helpers of the MindEye fixture generators (ours; no reference code lives here).

* :func:`extract_reference` copies the reference's ``src/`` folder out of a checkout or a bare git directory
  into a temporary folder, so its modules can be imported and its notebooks read, and says which commit it was.
* :func:`notebook_code_cells` / :func:`select_statements` read an ``.ipynb`` (JSON) and pick top-level
  statements of one cell by what they define, to be executed in a namespace the generator prepares.
* :class:`RandomLog` records, in order, every tensor that ``torch.randn`` / ``torch.randn_like`` return while
  it is active, so that mindvis can replay a sampling loop draw for draw.
* :func:`shrink_*` rebuild sub-modules whose widths the reference hard-codes (not constructor arguments) at
  small widths, with the same classes, after the reference built them; every rebuild is listed in the
  fixture's JSON under ``"overrides"``.
* :class:`Reference` reads single files and notebook cells of a checkout or bare git directory without extracting
  it; :func:`definitions` picks named top-level functions/classes from a module's source; :func:`write_fixture`
  writes a fixture's ``.npz`` and ``.json`` (commit, versions, shapes).
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def extract_reference(path: str, subdir: str = "src") -> tuple[Path, str]:
    """(folder holding the reference's ``subdir``, commit) for a checkout or a bare git directory."""
    path = Path(path).resolve()
    out = Path(tempfile.mkdtemp(prefix="mindeye-ref-"))
    is_bare = (path / "HEAD").is_file() and (path / "objects").is_dir()
    git_dir = path if is_bare else (path / ".git" if (path / ".git").exists() else None)
    commit = "unknown"
    if git_dir is not None:
        commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], check=True,
                                capture_output=True, text=True).stdout.strip()
    if is_bare:
        names = subprocess.run(["git", f"--git-dir={path}", "ls-tree", "-r", "--name-only", "HEAD", subdir],
                               check=True, capture_output=True, text=True).stdout.split("\n")
        for name in filter(None, names):
            if not name.endswith((".py", ".ipynb", ".yaml", ".json", ".txt", ".sh")):
                continue  # images and weights are not needed (and large blobs may be absent from the mirror)
            blob = subprocess.run(["git", f"--git-dir={path}", "show", f"HEAD:{name}"], capture_output=True)
            if blob.returncode != 0:
                continue
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(blob.stdout)
    else:
        shutil.copytree(path / subdir, out / subdir)
    return out / subdir, commit


def notebook_code_cells(path: Path) -> list[str]:
    """The source of every code cell of a notebook, in order (markdown cells dropped)."""
    nb = json.loads(Path(path).read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def find_cell(cells: list[str], must_contain: list[str]) -> str:
    hits = [c for c in cells if all(s in c for s in must_contain)]
    if len(hits) != 1:
        raise SystemExit(f"expected one notebook cell containing {must_contain}, found {len(hits)}")
    return hits[0]


def select_statements(source: str, assigns=(), functions=(), classes=(), ifs_testing=()) -> str:
    """The top-level statements of ``source`` that assign one of ``assigns``, define one of ``functions`` /
    ``classes``, or are ``if`` statements whose test names one of ``ifs_testing``; in source order."""
    tree = ast.parse(source)
    picked = []
    for node in tree.body:
        keep = False
        if isinstance(node, ast.Assign):
            names = {t.id for t in node.targets if isinstance(t, ast.Name)}
            keep = bool(names & set(assigns))
        elif isinstance(node, ast.FunctionDef):
            keep = node.name in functions
        elif isinstance(node, ast.ClassDef):
            keep = node.name in classes
        elif isinstance(node, ast.If):
            tested = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
            keep = bool(tested & set(ifs_testing))
        if keep:
            picked.append(ast.get_source_segment(source, node))
    wanted = len(set(assigns)) + len(set(functions)) + len(set(classes))
    if len(picked) < wanted:
        raise SystemExit(f"only {len(picked)} of the wanted statements were found in the reference cell")
    return "\n".join(picked)


def stub_module(name: str, **attrs) -> types.ModuleType:
    """Register an empty module (for imports the generator never uses, e.g. a LAION retrieval client)."""
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
        if i > 1:
            setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[sub])
    for k, v in attrs.items():
        setattr(sys.modules[name], k, v)
    return sys.modules[name]


class RandomLog:
    """Records every tensor that ``torch.randn`` and ``torch.randn_like`` return while active."""

    def __init__(self):
        self.draws: list[torch.Tensor] = []

    def __enter__(self):
        self._randn, self._randn_like = torch.randn, torch.randn_like
        log = self.draws

        def randn(*args, **kwargs):
            t = self._randn(*args, **kwargs)
            log.append(t.detach().clone())
            return t

        def randn_like(*args, **kwargs):
            t = self._randn_like(*args, **kwargs)
            log.append(t.detach().clone())
            return t

        torch.randn, torch.randn_like = randn, randn_like
        return self

    def __exit__(self, *exc):
        torch.randn, torch.randn_like = self._randn, self._randn_like
        return False

    def stacked(self) -> np.ndarray:
        shapes = {tuple(t.shape) for t in self.draws}
        if len(shapes) != 1:
            raise RuntimeError(f"draws of several shapes: {sorted(shapes)}")
        return torch.stack(self.draws).numpy()


class MaskLog:
    """Wraps a reference module's ``prob_mask_like`` so the classifier-free-guidance keep masks it draws during
    a training forward are recorded in order."""

    def __init__(self, module):
        self.module, self.masks = module, []

    def __enter__(self):
        self._orig = self.module.prob_mask_like
        masks, orig = self.masks, self._orig

        def prob_mask_like(shape, prob, device):
            m = orig(shape, prob, device)
            masks.append(m.detach().clone())
            return m

        self.module.prob_mask_like = prob_mask_like
        return self

    def __exit__(self, *exc):
        self.module.prob_mask_like = self._orig
        return False


class DenoiserLog:
    """Records, per call of ``net.forward_with_cond_scale`` (the prior's denoiser inside a sampling loop), the noisy
    input, the step and the predicted clean tokens: the reference's sampling trajectory, step by step."""

    def __init__(self, net):
        self.net, self.x, self.t, self.x0 = net, [], [], []

    def __enter__(self):
        orig = self.net.forward_with_cond_scale

        def wrapped(x, t, *args, **kwargs):
            out = orig(x, t, *args, **kwargs)
            self.x.append(x.detach().clone())
            self.t.append(int(t[0]))
            self.x0.append(out.detach().clone())
            return out

        self.net.forward_with_cond_scale = wrapped
        return self

    def __exit__(self, *exc):
        del self.net.forward_with_cond_scale  # back to the class's method
        return False

    def arrays(self) -> dict:
        return {"x": torch.stack(self.x).numpy(), "t": np.array(self.t), "x0": torch.stack(self.x0).numpy()}


def shrink_sequential(seq: nn.Sequential, widths: dict[int, int], keep_in: int | None = None,
                      keep_out: int | None = None) -> nn.Sequential:
    """The same layer sequence as ``seq`` (same classes, order, bias flags and hyper-parameters) with every inner
    width ``w`` in ``widths`` replaced by ``widths[w]``. The first linear/conv layer keeps its input width and the
    last one its output width (or takes ``keep_in`` / ``keep_out``); norms take the width of what they normalise."""
    layers = list(seq)
    weighted = [i for i, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
    first, last = weighted[0], weighted[-1]

    def w(x):
        return widths.get(x, x)

    out = []
    for i, m in enumerate(layers):
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            fin, fout = ((m.in_features, m.out_features) if isinstance(m, nn.Linear)
                         else (m.in_channels, m.out_channels))
            fin = (fin if keep_in is None else keep_in) if i == first else w(fin)
            fout = (fout if keep_out is None else keep_out) if i == last else w(fout)
            if isinstance(m, nn.Linear):
                out.append(nn.Linear(fin, fout, bias=m.bias is not None))
            else:
                out.append(nn.Conv2d(fin, fout, m.kernel_size, m.stride, m.padding, bias=m.bias is not None))
        elif isinstance(m, nn.LayerNorm):
            (n,) = m.normalized_shape
            n = (n if keep_in is None else keep_in) if i < first else w(n)
            out.append(nn.LayerNorm(n, eps=m.eps, elementwise_affine=m.elementwise_affine))
        elif isinstance(m, nn.GroupNorm):
            n = (m.num_channels if keep_in is None else keep_in) if i < first else w(m.num_channels)
            out.append(nn.GroupNorm(m.num_groups, n, eps=m.eps, affine=m.affine))
        else:
            out.append(m)  # activations, dropout: no width
    return nn.Sequential(*out)


def state_shapes(module: nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")


def versions() -> dict:
    import importlib.metadata as md
    out = {"python": sys.version.split()[0]}
    for name in ("torch", "diffusers", "dalle2-pytorch", "rotary-embedding-torch", "einops", "accelerate",
                 "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def npz_save(path: Path, arrays: dict) -> None:
    clean = {}
    for k, v in arrays.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        clean[k] = np.asarray(v)
    np.savez_compressed(path, **clean)


def file_size(path) -> int:
    return os.path.getsize(path)


class Reference:
    """Read files of a reference checkout (``root/src/...``) or a bare git dir (``HEAD:src/...``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.bare = not (self.path / "src").is_dir()
        if self.bare and not (self.path / "HEAD").is_file():
            raise SystemExit(f"{path}: neither a checkout (src/ folder) nor a bare git dir")

    def commit(self) -> str:
        if self.bare:
            return subprocess.check_output(["git", f"--git-dir={self.path}", "rev-parse", "HEAD"], text=True).strip()
        try:
            return subprocess.check_output(["git", "-C", str(self.path), "rev-parse", "HEAD"], text=True).strip()
        except Exception:
            return "unknown"

    def read(self, rel: str) -> str:
        if self.bare:
            return subprocess.check_output(["git", f"--git-dir={self.path}", "show", f"HEAD:{rel}"], text=True)
        return (self.path / rel).read_text()

    def list(self, prefix: str) -> list[str]:
        if self.bare:
            out = subprocess.check_output(["git", f"--git-dir={self.path}", "ls-tree", "-r", "--name-only", "HEAD",
                                           prefix], text=True)
            return out.split()
        return [str(p.relative_to(self.path)) for p in (self.path / prefix).rglob("*") if p.is_file()]

    def extract(self, prefix: str, dest: Path, suffixes=(".py", ".yaml", ".json")) -> Path:
        """Write the files under ``prefix`` with the given suffixes to ``dest`` (same relative paths)."""
        for rel in self.list(prefix):
            if rel.endswith(suffixes):
                out = dest / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(self.read(rel))
        return dest

    def notebook_cells(self, rel: str) -> list[str]:
        """Source of each code cell of a notebook."""
        nb = json.loads(self.read(rel))
        return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def definitions(source: str, names: list[str]) -> str:
    """The source of the top-level functions/classes ``names`` of a module (in file order)."""
    tree = ast.parse(source)
    found = {n.name: ast.get_source_segment(source, n) for n in tree.body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in names}
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"the reference no longer defines {missing}")
    return "\n\n".join(found[n] for n in names)


def write_fixture(out_dir: Path, name: str, arrays: dict, meta: dict, ref: Reference) -> None:
    """``out_dir/name.npz`` (compressed arrays) and ``out_dir/name.json`` (meta, the reference's commit, versions and
    every array's shape)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    meta = dict(meta, reference_commit=ref.commit(), torch=torch.__version__, numpy=np.__version__,
                keys={k: list(v.shape) for k, v in arrays.items()})
    (out_dir / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out_dir / name}.npz ({len(arrays)} arrays) and .json")


class CpuAccelerator:
    """What the reference's cells use of ``accelerate.Accelerator``, on CPU."""

    def __init__(self):
        from accelerate import Accelerator
        self.acc = Accelerator(cpu=True)
        self.num_processes = 1
        self.is_main_process = True

    def prepare(self, *objs):
        return self.acc.prepare(*objs)

    def unwrap_model(self, m):
        return self.acc.unwrap_model(m)

    def backward(self, loss):
        self.acc.backward(loss)

    def print(self, *a, **k):
        pass
