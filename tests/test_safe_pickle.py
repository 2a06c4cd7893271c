"""The restricted unpickler for foreign checkpoints: weights load, training state becomes inert, code is refused."""
import os

import pytest
import torch

from mindvis.compat.safe_pickle import CheckpointError, Inert, inert_to_data, load_torch_checkpoint


def _training_checkpoint():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=10)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    sched.step()
    # the scheduler object itself and a bound method of it, as older torch pickled OneCycleLR's anneal_func
    return model, {"model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(),
                   "lr_scheduler": sched, "anneal_func": sched._anneal_func, "epoch": 3, "losses": [0.5, 0.25]}


@pytest.mark.parametrize("zipfile", [True, False])
def test_weights_load_and_training_state_is_inert(tmp_path, zipfile):
    model, ckpt = _training_checkpoint()
    path = tmp_path / "last.pth"
    torch.save(ckpt, path, _use_new_zipfile_serialization=zipfile)
    out = load_torch_checkpoint(path, what="MindEye checkpoint")
    for k, v in model.state_dict().items():
        assert torch.equal(out["model_state_dict"][k], v)
    assert out["epoch"] == 3 and out["losses"] == [0.5, 0.25]
    assert out["optimizer_state_dict"]["param_groups"][0]["lr"] == ckpt["optimizer_state_dict"]["param_groups"][0]["lr"]
    sched = out["lr_scheduler"]
    assert isinstance(sched, Inert) and sched.name == "torch.optim.lr_scheduler.OneCycleLR"
    assert sched.state["total_steps"] == 10  # its attributes are kept as data
    assert isinstance(sched.state["optimizer"], Inert)  # the optimizer object, never rebuilt
    assert isinstance(out["anneal_func"], Inert) and out["anneal_func"].args[1] == "_anneal_func"
    assert inert_to_data(sched)["__inert__"] == "torch.optim.lr_scheduler.OneCycleLR"


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("zipfile", [True, False])
def test_a_pickle_that_would_run_code_is_refused_in_one_line(tmp_path, zipfile):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"model_state_dict": {}, "payload": _RunsCode(marker)}, path, _use_new_zipfile_serialization=zipfile)
    with pytest.raises(CheckpointError) as err:
        load_torch_checkpoint(path, what="MindEye checkpoint")
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg and "refused" in msg and "system" in msg
    assert "weights_only=False" not in msg
    assert not marker.exists()


def test_a_function_outside_the_admitted_namespaces_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"f": print}, path)  # builtins.print: not training state
    with pytest.raises(CheckpointError, match="refused: it holds a pickled builtins.print"):
        load_torch_checkpoint(path)
    assert load_torch_checkpoint(path, admit=("builtins.print",))["f"].name == "builtins.print"


def test_truncated_and_missing_files(tmp_path):
    _, ckpt = _training_checkpoint()
    path = tmp_path / "last.pth"
    torch.save(ckpt, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a readable checkpoint") as err:
        load_torch_checkpoint(path)
    assert "\n" not in str(err.value)
    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="text.pth: truncated or not a readable"):
        load_torch_checkpoint(tmp_path / "text.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_torch_checkpoint(tmp_path / "nope.pth")


def test_a_self_referencing_scheduler_needs_the_pop_opcode_and_still_loads(tmp_path):
    # torch 2.0 kept OneCycleLR's anneal_func as a bound method in the scheduler's own __dict__ (MindEye1's files):
    # pickling that recursion writes a POP opcode, which torch's restricted unpickler does not implement
    model, ckpt = _training_checkpoint()
    sched = ckpt["lr_scheduler"]
    sched.anneal_func = sched._anneal_func
    path = tmp_path / "last.pth"
    torch.save({"model_state_dict": model.state_dict(), "lr_scheduler": {"anneal_func": sched.anneal_func}}, path)
    import pickletools
    import zipfile

    with zipfile.ZipFile(path) as z:
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert any(op.name == "POP" for op, _, _ in pickletools.genops(pkl))
    out = load_torch_checkpoint(path)
    for k, v in model.state_dict().items():
        assert torch.equal(out["model_state_dict"][k], v)
    assert isinstance(out["lr_scheduler"]["anneal_func"], Inert)
    evil = tmp_path / "evil.pth"  # the same path refuses code
    torch.save({"s": {"anneal_func": sched.anneal_func}, "payload": _RunsCode(tmp_path / "ran")}, evil)
    with pytest.raises(CheckpointError, match="refused: it holds a pickled"):
        load_torch_checkpoint(evil)
    assert not (tmp_path / "ran").exists()
