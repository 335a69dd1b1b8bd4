"""Resumable batches: every item exactly once, resume after a crash, manifests merged; and the real thing —
`nag generate --prompts` in 2 gloo processes under torchrun, identical to one process."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nag_guidance import batch
from nag_guidance.generation import read_metadata


def fake_items(count: int) -> list[batch.Item]:
    return batch.generation_items([f"prompt {i}" for i in range(count)], {"seed": 0}, "nag")


def writer(out: Path, fail_at: int | None = None):
    calls = []

    def work(item: batch.Item) -> dict:
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("crash")
        calls.append(item.index)
        (out / f"{item.index}.txt").write_text(item.payload["prompt"])
        return {"files": [f"{item.index}.txt"]}

    return work, calls


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / batch.MANIFEST).read_text().splitlines()]


def test_every_item_once_and_merged_in_order(tmp_path):
    work, calls = writer(tmp_path)
    summary = batch.run_items(fake_items(5), tmp_path, work)
    assert calls == [0, 1, 2, 3, 4]
    assert [r["index"] for r in manifest(tmp_path)] == [0, 1, 2, 3, 4]
    assert summary["items"] == 5 and summary["ran_here"] == 5 and summary["already_done"] == 0


def test_resume_after_a_crash_redoes_only_the_unfinished(tmp_path):
    work, calls = writer(tmp_path, fail_at=3)
    with pytest.raises(RuntimeError, match="crash"):
        batch.run_items(fake_items(6), tmp_path, work)
    assert calls == [0, 1, 2]
    work, calls = writer(tmp_path)
    summary = batch.run_items(fake_items(6), tmp_path, work)
    assert calls == [3, 4, 5]
    assert summary["already_done"] == 3
    assert [r["index"] for r in manifest(tmp_path)] == list(range(6))


def test_changed_settings_are_not_mistaken_for_finished_work(tmp_path):
    work, _ = writer(tmp_path)
    batch.run_items(fake_items(2), tmp_path, work)
    other = batch.generation_items(["prompt 0", "prompt 1"], {"seed": 1}, "nag")
    work, calls = writer(tmp_path)
    batch.run_items(other, tmp_path, work)
    assert calls == [0, 1]


def test_another_model_or_preset_into_the_same_folder_is_new_work(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a circle\n")
    settings = {"negative": "red", "steps": 1, "num_images": 1}
    first = batch.run_batch(prompts, tmp_path / "out", None, "nag", settings)
    again = batch.run_batch(prompts, tmp_path / "out", None, "nag", settings)
    other = batch.run_batch(prompts, tmp_path / "out", None, "nag", settings, preset="sd15")
    assert (first["ran_here"], again["already_done"], other["ran_here"]) == (1, 1, 1)


def test_a_truncated_manifest_line_is_redone(tmp_path):
    work, _ = writer(tmp_path)
    batch.run_items(fake_items(2), tmp_path, work)
    rank = tmp_path / "manifest-rank0.jsonl"
    lines = rank.read_text().splitlines()
    rank.write_text(lines[0] + "\n" + lines[1][:10])  # the crash cut the second line
    (tmp_path / batch.MANIFEST).unlink()
    work, calls = writer(tmp_path)
    batch.run_items(fake_items(2), tmp_path, work)
    assert calls == [1]


WRONG_SHAPES = [
    pytest.param('{"index": 99}', id="no key"),
    pytest.param("[1, 2, 3]", id="a list"),
    pytest.param("42", id="a number"),
    pytest.param('"a string"', id="a string"),
    pytest.param("null", id="null"),
    pytest.param('{"index": "1", "key": "0123456789abcdef"}', id="a string index"),
    pytest.param('{"index": true, "key": "0123456789abcdef"}', id="a bool index"),
    pytest.param('{"index": 1, "key": ["0123456789abcdef"]}', id="a list key"),
]


@pytest.mark.parametrize("name", ["manifest-rank0.jsonl", batch.MANIFEST])
@pytest.mark.parametrize("line", WRONG_SHAPES)
def test_a_wrong_shaped_manifest_line_is_skipped_with_a_warning(tmp_path, line, name):
    work, _ = writer(tmp_path)
    batch.run_items(fake_items(3), tmp_path, work)
    path = tmp_path / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], line, *lines[1:]]) + "\n")  # valid JSON, but not a record: line 2
    work, calls = writer(tmp_path)
    with pytest.warns(batch.ManifestWarning, match=rf"{name}, line 2: not a record"):
        summary = batch.run_items(fake_items(4), tmp_path, work)
    assert calls == [3] and summary["already_done"] == 3  # the rest resumes
    assert [r["index"] for r in manifest(tmp_path)] == [0, 1, 2, 3]
    assert [r["index"] for r in batch.read_manifest(tmp_path)] == [0, 1, 2, 3]


def test_a_line_appended_after_a_cut_one_is_kept(tmp_path):
    work, _ = writer(tmp_path)
    batch.run_items(fake_items(2), tmp_path, work)
    rank = tmp_path / "manifest-rank0.jsonl"
    rank.write_text(rank.read_text().splitlines()[0] + "\n" + '{"index": 1, "ke')  # cut, no newline
    (tmp_path / batch.MANIFEST).unlink()
    batch.run_items(fake_items(2), tmp_path, writer(tmp_path)[0])
    work, calls = writer(tmp_path)
    batch.run_items(fake_items(2), tmp_path, work)
    assert calls == [] and [r["index"] for r in manifest(tmp_path)] == [0, 1]  # before: item 1 glued to the cut


class FullDisk:
    """A file that takes half of each write, then reports a full disk."""

    def __init__(self, file) -> None:
        self.file = file

    def write(self, data):
        self.file.write(data[: len(data) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def test_a_full_disk_while_merging_keeps_the_merged_manifest_whole(tmp_path, monkeypatch):
    work, _ = writer(tmp_path)
    batch.run_items(fake_items(3), tmp_path, work)
    before = (tmp_path / batch.MANIFEST).read_text()
    real_open = Path.open

    def open_on_a_full_disk(self, mode="r", *args, **kwargs):
        file = real_open(self, mode, *args, **kwargs)
        return FullDisk(file) if set(mode) & set("wxa") else file

    monkeypatch.setattr(Path, "open", open_on_a_full_disk)
    with pytest.raises(OSError, match="No space left"):
        batch.merge_manifests(tmp_path)
    monkeypatch.undo()
    assert (tmp_path / batch.MANIFEST).read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _records_point_at_their_own_pngs(out: Path) -> list[dict]:
    records = manifest(out)
    files = [name for record in records for name in record["files"]]
    assert len(files) == len(set(files)), "two records point at one file"
    assert sorted(files) == sorted(p.name for p in out.glob("*.png"))
    for record in records:
        for name in record["files"]:
            assert read_metadata(out / name)["prompt"] == record["prompt"]
    return records


def test_reusing_out_with_another_negative_keeps_every_result(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a circle\na square\n")
    out = tmp_path / "out"
    settings = {"steps": 1, "num_images": 1}
    batch.run_batch(prompts, out, None, "nag", {**settings, "negative": "red"})
    batch.run_batch(prompts, out, None, "nag", {**settings, "negative": "blue"})
    records = _records_point_at_their_own_pngs(out)
    assert len(records) == 4
    negatives = sorted(read_metadata(out / r["files"][0])["negative"] for r in records)
    assert negatives == ["blue", "blue", "red", "red"]  # before: every "red" record's PNG said blue


def test_a_prompts_file_with_an_inserted_line_overwrites_nothing(tmp_path):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "out"
    settings = {"negative": "red", "steps": 1, "num_images": 1}
    prompts.write_text("a circle\na square\n")
    batch.run_batch(prompts, out, None, "nag", settings)
    prompts.write_text("a circle\na triangle\na square\n")  # "a square" moves from index 1 to 2
    summary = batch.run_batch(prompts, out, None, "nag", settings)
    assert summary["already_done"] == 1
    assert len(_records_point_at_their_own_pngs(out)) == 4


def test_an_interrupted_batch_resumes_into_the_same_files(tmp_path):
    prompts, out = tmp_path / "prompts.txt", tmp_path / "out"
    prompts.write_text("a circle\na square\n")
    settings = {"negative": "red", "steps": 1, "num_images": 2}
    batch.run_batch(prompts, out, None, "nag", settings)
    for name in ("manifest-rank0.jsonl", batch.MANIFEST):  # the crash came after item 1's PNGs, before its line
        path = out / name
        path.write_text(path.read_text().splitlines()[0] + "\n")
    summary = batch.run_batch(prompts, out, None, "nag", settings)
    assert (summary["already_done"], summary["ran_here"]) == (1, 1)
    assert len(_records_point_at_their_own_pngs(out)) == 2  # item 1 rewrote its own files, no extra copies


def test_prompts_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# a comment first\na circle\n", encoding="utf-8-sig")  # Windows Notepad's UTF-8
    assert batch.read_prompts(path) == ["a circle"]


def test_prompts_file_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        batch.read_prompts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        batch.read_prompts(empty)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("a circle\nun caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8 text: byte 0xe9 on line 2"):
        batch.read_prompts(latin1)
    with pytest.raises(ValueError, match="it is a folder"):
        batch.read_prompts(tmp_path)


PROMPTS = ["a circle", "a square", "a triangle", "a red shape", "a circle on a white background"]


def _generate(out: Path, prompts: Path, processes: int) -> subprocess.CompletedProcess:
    arguments = ["generate", "--prompts", str(prompts), "--out", str(out), "--negative", "red", "--steps", "1"]
    if processes == 1:
        command = [sys.executable, "-m", "nag_guidance", *arguments]
    else:
        torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
        command = [torchrun, "--nproc_per_node", str(processes), "--master_port", "29613", "-m", "nag_guidance"]
        command += arguments
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    one, two = tmp_path / "one", tmp_path / "two"
    result = _generate(one, prompts, 1)
    assert result.returncode == 0, result.stderr[-2000:]
    result = _generate(two, prompts, 2)
    assert result.returncode == 0, result.stderr[-2000:]
    records = manifest(two)
    assert [r["index"] for r in records] == list(range(len(PROMPTS)))  # every prompt exactly once, merged
    assert {r["rank"] for r in records} == {0, 1}  # both processes took a share
    assert sorted(p.name for p in two.glob("*.png")) == sorted(p.name for p in one.glob("*.png"))
    for image in one.glob("*.png"):
        assert image.read_bytes() == (two / image.name).read_bytes()
