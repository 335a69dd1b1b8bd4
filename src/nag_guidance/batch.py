"""Large batches across processes and machines on accelerate, resumable.

``nag generate --prompts prompts.txt`` runs every prompt once, split between the processes of an
``accelerate launch`` / ``torchrun`` run (``PartialState().split_between_processes``); the same command works
in a single process. Each process appends one JSON line per finished item to its own manifest
(``manifest-rank{r}.jsonl``) right after writing the item's images, so a crashed run resumes where it stopped:
finished items (same key: index, prompt and settings) are skipped, and the remaining ones are split again. At
the end the main process merges the manifests into ``manifest.jsonl``, ordered by item. A line that is not a record
(cut by a crash, or valid JSON of another shape) never blocks a resume: it is skipped, with a ``ManifestWarning``
naming the file and line when it is not a cut one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nag_guidance.files import write_text_atomically

MANIFEST = "manifest.jsonl"


class ManifestWarning(UserWarning):
    """A manifest line of valid JSON that is not a record (hand-edited, or written by another tool): skipped."""


@dataclass(frozen=True)
class Item:
    """One unit of work: its position in the job, and what to do."""

    index: int
    payload: dict[str, Any]

    @property
    def key(self) -> str:
        """Identity of the work, so that a resumed run with other settings does not skip it by mistake."""
        text = json.dumps({"index": self.index, **self.payload}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_prompts(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (a byte-order mark is allowed); lines starting with '#' are
    comments."""
    if not path.is_file():
        raise ValueError(f"prompts file {path} does not exist" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM must not turn a leading '# comment' into a prompt
    except UnicodeDecodeError as error:
        line = error.object[: error.start].count(b"\n") + 1
        byte = error.object[error.start]
        raise ValueError(f"prompts file {path} is not UTF-8 text: byte {byte:#04x} on line {line}") from None
    except OSError as error:
        raise ValueError(f"prompts file {path} cannot be read: {error.strerror or error}") from None
    lines = [line.strip() for line in text.splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {path} has no prompts")
    return prompts


def read_records(path: Path, warn: bool = True) -> Iterator[dict[str, Any]]:
    """The records of one manifest file: JSON objects with a text ``key`` and a whole ``index``. A line cut by a
    crash is skipped quietly (its item is simply redone); any other line that is not a record is skipped with a
    ``ManifestWarning`` (``warn=False``: quietly), so that one bad edit never makes every resume fail."""
    text = path.read_text(encoding="utf-8", errors="replace")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        except RecursionError:  # absurdly deep nesting
            record = None
        if _is_record(record):
            yield record
        elif warn:
            warnings.warn(
                f"{path}, line {number}: not a record (a JSON object with a text 'key' and a whole 'index'); "
                "skipped, its item is redone if it is part of this run",
                ManifestWarning,
                stacklevel=2,  # where the records are read
            )


def _is_record(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("key"), str) and type(value.get("index")) is int


def read_manifest(out: Path, keys: set[str] | None = None) -> list[dict[str, Any]]:
    """The merged manifest's records, only those of ``keys`` when given: a reused output folder may also hold
    records of other runs."""
    return [r for r in read_records(out / MANIFEST) if keys is None or r["key"] in keys]


def finished_keys(out: Path, warn: bool = True) -> set[str]:
    """Keys of the items some process already finished (every rank's manifest, and the merged one)."""
    return {record["key"] for path in sorted(out.glob("manifest*.jsonl")) for record in read_records(path, warn)}


def _ends_mid_line(path: Path) -> bool:
    """Whether a crash cut the file's last line (a record appended to it would be glued to it, and lost)."""
    with path.open("rb") as file:
        if file.seek(0, os.SEEK_END) == 0:
            return False
        file.seek(-1, os.SEEK_END)
        return file.read(1) != b"\n"


def process_state(device: str = "cpu"):
    """accelerate's view of this process; on CPU it must be told (``cpu=True``), or a ``torchrun`` /
    ``accelerate launch`` of several CPU processes would give independent single processes."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def run_items(
    items: Sequence[Item],
    out: Path,
    work: Callable[[Item], dict[str, Any]],
    progress: Callable[[int, int], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Run ``work`` on this process's share of the unfinished items; returns a summary of the whole job.

    ``work(item)`` writes the item's files and returns what the manifest should record (e.g. file names).
    """
    state = process_state(device)
    out.mkdir(parents=True, exist_ok=True)
    done = finished_keys(out, warn=state.is_main_process)  # one warning per bad line, not one per process
    todo = [item for item in items if item.key not in done]
    state.wait_for_everyone()  # every process has read the manifests before any writes to them
    started = time.perf_counter()
    manifest = out / f"manifest-rank{state.process_index}.jsonl"
    ran = 0
    with state.split_between_processes(todo) as mine, manifest.open("a", encoding="utf-8") as log:
        if _ends_mid_line(manifest):
            log.write("\n")
        for count, item in enumerate(mine, start=1):
            record = {"index": item.index, "key": item.key, "rank": state.process_index, **work(item)}
            log.write(json.dumps(record, default=str) + "\n")
            log.flush()
            os.fsync(log.fileno())
            ran += 1
            if progress is not None:
                progress(count, len(mine))
    state.wait_for_everyone()
    if state.is_main_process:
        merge_manifests(out, warn=False)  # finished_keys warned already
    state.wait_for_everyone()
    return {
        "items": len(items),
        "already_done": len(items) - len(todo),
        "ran_here": ran,
        "processes": state.num_processes,
        "rank": state.process_index,
        "seconds": round(time.perf_counter() - started, 2),
    }


def merge_manifests(out: Path, warn: bool = True) -> Path:
    """Merge every rank's manifest into ``manifest.jsonl`` (one line per item, ordered by index)."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob("manifest*.jsonl")):
        for record in read_records(path, warn):
            records.setdefault(record["key"], record)
    merged = out / MANIFEST
    ordered = sorted(records.values(), key=lambda r: r["index"])
    write_text_atomically(merged, "".join(json.dumps(r, default=str) + "\n" for r in ordered))  # never half of it
    return merged


def generation_items(prompts: Iterable[str], settings: dict[str, Any], method: str) -> list[Item]:
    return [Item(i, {"prompt": p, "method": method, **settings}) for i, p in enumerate(prompts)]


def run_batch(
    prompts_file: Path,
    out: Path,
    model: str | None,
    method: str | None,
    settings: dict[str, Any],
    device: str = "cpu",
    dtype: str = "float32",
    preset: str | None = None,
) -> dict[str, Any]:
    """``nag generate --prompts``: every prompt with the same settings, images named
    ``{index}-{key}-{method}-{seed}.png``: the item's key (a hash of the whole work) in the name means that a reused
    ``out`` never overwrites a result of other work that a manifest record points to, while a resumed identical
    run rewrites only its own unfinished item."""
    from nag_guidance import generation

    prompts = read_prompts(prompts_file)
    method = method or ("nag" if settings.get("negative") else "stock")
    if method not in generation.METHODS:
        raise ValueError(f"method {method!r} is unknown; allowed: {', '.join(generation.METHODS)}")
    generation.Request(prompt="", **settings)  # validate every setting before loading anything
    generation.check_device(device)
    generation.check_output_folder(out)
    state = process_state(device)
    if device != "cpu" and state.device.type != "cpu":
        device = str(state.device)  # one accelerator per process
    loaded = generation.load(model, device=device, dtype=dtype, preset=preset)

    def work(item: Item) -> dict[str, Any]:
        request = generation.Request(prompt=item.payload["prompt"], **settings)
        result = generation.run(loaded, request, method)
        paths = generation.save(result, out, prefix=f"{item.index:05d}-{item.key}-")
        return {"prompt": request.prompt, "files": [p.name for p in paths]}

    identity = {**settings, "model": loaded.name, "preset": loaded.preset_name, "dtype": dtype}
    return run_items(generation_items(prompts, identity, method), out, work, device=device)
