"""A checkpoint write killed at any filesystem call leaves a loadable checkpoint: the old one or the new one.

The kill is simulated: the k-th call of ``os.replace``, ``os.rename``, ``shutil.rmtree`` or ``os.fsync`` made by the
write raises a ``BaseException`` (nothing in the write catches it, as nothing runs after a SIGKILL), for every k
until a write completes; each time the folder is then opened as a resume and an evaluation would open it."""

import os
import shutil

import pytest
from aef_hpc.engine import checkpoint as ckpt
from aef_hpc.engine import find_resumable, open_checkpoint


class Killed(BaseException):
    pass


def _write(marker: str):
    def write(folder):
        (folder / "model.pt").write_text(marker)
        (folder / "train_state.pt").write_text(marker * 3)

    return write


def _killing(monkeypatch, at: int):
    calls = []

    def wrap(module, name):
        real = getattr(module, name)

        def fake(*args, **kwargs):
            calls.append(name)
            if len(calls) == at:
                raise Killed(f"killed at {name} (call {at})")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, fake)

    for module, name in ((os, "replace"), (os, "rename"), (shutil, "rmtree"), (os, "fsync")):
        wrap(module, name)
    return calls


def _loaded_marker(run):
    found = find_resumable(run)
    assert found.step == 4 and found.path.name == "step-000004"
    best = open_checkpoint(run)
    assert best.path == found.path
    return (found.path / "model.pt").read_text()


@pytest.mark.parametrize("best", [True, False], ids=["as-best", "not-best"])
def test_a_kill_at_any_filesystem_call_of_a_rewrite_leaves_the_old_or_the_new_checkpoint(tmp_path, monkeypatch, best):
    template = tmp_path / "template"
    ckpt.save_checkpoint(template, 2, _write("two"), {}, keep_last=3)
    ckpt.save_checkpoint(template, 4, _write("old"), {}, keep_last=3, best=True)
    seen, outcomes = set(), []
    for at in range(1, 100):
        run = tmp_path / f"run-{at}"
        shutil.copytree(template, run)
        with monkeypatch.context() as patch:
            calls = _killing(patch, at)
            try:
                ckpt.save_checkpoint(run, 4, _write("new"), {}, keep_last=3, best=best)
                finished = True
            except Killed:
                finished = False
        seen.update(calls)
        marker = _loaded_marker(run)
        assert marker in ("old", "new"), f"killed at call {at} ({calls[-1]}): {marker!r}"
        outcomes.append(marker)
        if finished:
            break
    else:
        pytest.fail("the write never finished")
    assert seen >= {"replace", "rmtree", "fsync"}, seen
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes
    assert not list(run.glob("checkpoints/.*")), "nothing left aside once a write completes"


def test_a_folder_left_aside_is_put_back_when_its_replacement_never_came(tmp_path):
    ckpt.save_checkpoint(tmp_path, 4, _write("old"), {}, keep_last=3, best=True)
    root = tmp_path / "checkpoints"
    os.replace(root / "step-000004", root / ".step-000004.replaced")
    assert _loaded_marker(tmp_path) == "old"
    assert (root / "step-000004" / "meta.json").is_file() and not (root / ".step-000004.replaced").exists()
