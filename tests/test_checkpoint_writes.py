"""A checkpoint write killed at any filesystem call leaves a loadable checkpoint: the old one or the new one; a
reader (``aef-hpc eval`` beside the job) at any of those points sees one of the two and never disturbs the write.

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


def _killing(monkeypatch, at: int, instead=None):
    """Make the ``at``-th filesystem call raise ``Killed`` (or, with ``instead``, call ``instead()`` first)."""
    calls = []

    def wrap(module, name):
        real = getattr(module, name)

        def fake(*args, **kwargs):
            calls.append(name)
            if len(calls) == at:
                if instead is None:
                    raise Killed(f"killed at {name} (call {at})")
                with monkeypatch.context() as unpatched:  # the reader's own calls are not the writer's
                    for module_, name_, real_ in originals:
                        unpatched.setattr(module_, name_, real_)
                    instead()
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, fake)

    targets = ((os, "replace"), (os, "rename"), (shutil, "rmtree"), (os, "fsync"))
    originals = [(module, name, getattr(module, name)) for module, name in targets]
    for module, name in targets:
        wrap(module, name)
    return calls


def _loaded_marker(run):
    found = find_resumable(run)
    assert found.step == 4 and found.name == "step-000004"
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


def test_a_folder_left_aside_is_read_in_place_and_put_back_by_the_next_writer(tmp_path):
    ckpt.save_checkpoint(tmp_path, 4, _write("old"), {}, keep_last=3, best=True)
    root = tmp_path / "checkpoints"
    os.replace(root / "step-000004", root / ".step-000004.replaced")
    assert _loaded_marker(tmp_path) == "old"
    assert (root / ".step-000004.replaced").exists(), "readers change nothing"
    ckpt.save_checkpoint(tmp_path, 6, _write("six"), {}, keep_last=3)
    assert (root / "step-000004" / "meta.json").is_file() and not (root / ".step-000004.replaced").exists()


def test_a_reader_at_any_point_of_a_rewrite_sees_a_checkpoint_and_leaves_the_write_alone(tmp_path, monkeypatch):
    template = tmp_path / "template"
    ckpt.save_checkpoint(template, 4, _write("old"), {}, keep_last=3, best=True)
    for at in range(1, 100):
        run = tmp_path / f"run-{at}"
        shutil.copytree(template, run)
        seen = []
        with monkeypatch.context() as patch:
            calls = _killing(patch, at, instead=lambda run=run, seen=seen: seen.append(_loaded_marker(run)))
            ckpt.save_checkpoint(run, 4, _write("new"), {}, keep_last=3, best=True)
        assert _loaded_marker(run) == "new"
        if not seen:  # past the last filesystem call
            break
        assert seen[0] in ("old", "new"), f"a reader at call {at} ({calls[at - 1]}) saw {seen[0]!r}"
    else:
        pytest.fail("the write never finished")


def test_the_commit_lists_what_the_ranks_reported_and_waits_for_late_files(tmp_path, monkeypatch):
    """Rank 0 commits from the ranks' own inventories (names, sizes, sha256 sent through the collective), not from a
    listing of a shared file system: a file another node wrote that shows up late is waited for, one that never
    shows up is one clear error, a stray file nobody reported is not listed, and two ranks writing one name is
    refused. (One process stands in for the ranks: their reports are built here as the collective delivers them.)"""
    import threading

    def report(path):
        return {"bytes": path.stat().st_size, "sha256": ckpt._sha256(path)}

    monkeypatch.setattr(ckpt, "VISIBLE_WITHIN", 3.0)
    root = tmp_path / "checkpoints"
    tmp = root / ".step-000002.tmp"
    tmp.mkdir(parents=True)
    (tmp / "model.pt").write_text("rank 0")
    (tmp / "stray.txt").write_text("not reported")
    other = tmp_path / "elsewhere.pt"
    other.write_text("rank 1's shard")
    reported = [{"model.pt": report(tmp / "model.pt")}, {"zero/shard-1.pt": report(other)}]
    (tmp / "zero").mkdir()
    late = threading.Timer(0.5, lambda: other.rename(tmp / "zero" / "shard-1.pt"))
    late.start()
    done = ckpt._commit(root, "step-000002", tmp, 2, {}, keep_last=3, best=True, reported=reported)
    late.join()
    assert sorted(done.meta["files"]) == ["model.pt", "zero/shard-1.pt"], "the reports, not the listing"
    open_checkpoint(done.path)

    tmp = root / ".step-000004.tmp"
    tmp.mkdir()
    (tmp / "model.pt").write_text("rank 0")
    monkeypatch.setattr(ckpt, "VISIBLE_WITHIN", 0.3)
    with pytest.raises(ckpt.CheckpointError, match=r"shard-1.pt \(written by rank 1, 14 bytes\) is not visible"):
        ckpt._commit(root, "step-000004", tmp, 4, {}, 3, False, reported=reported)
    with pytest.raises(ckpt.CheckpointError, match="ranks 0 and 1 both wrote model.pt"):
        ckpt._commit(root, "step-000004", tmp, 4, {}, 3, False, reported=[reported[0], reported[0]])
    assert find_resumable(tmp_path).step == 2, "nothing half-committed"
