"""Annotation readers: every dataset layout becomes ``(list[VideoRecord], class_names)``.

One entry point, ``read_annotations(root, format, split)``. Formats:

- ``ssv2``: Something-Something-v2. Videos ``<root>/20bn-something-something-v2/<id>.webm``; the files
  ``something-something-v2-{labels,train,validation,test}.json`` at ``<root>`` or ``<root>/labels``.
  The class of an entry is its ``template`` with the brackets removed (as the official tools do) looked up
  in ``labels.json`` (name -> index string). Entries without a template (the test split) get label -1.
- ``kinetics``: CSV files ``<split>.csv`` (at ``<root>`` or ``<root>/annotations``) with the columns
  ``label,youtube_id,time_start,time_end,split``. File rule: the video of a row is the first file found
  under ``<root>`` named ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` (what the common
  downloader writes into ``<split>/<label>/``) or else ``<youtube_id>.<ext>``; any sub-folder layout works.
  When no file exists the record points at ``<root>/<split>/<label>/<youtube_id>_<start>_<end>.mp4`` and
  the dataset reports it as missing. Classes: the sorted labels of all CSVs in that folder.
- ``list``: PySlowFast's ``path label`` lines (space or comma separated), file ``<root>/<split>.csv`` or
  ``.txt`` (or ``root`` itself when it is a file); relative paths are relative to the list's folder.
  Classes: the lines of ``classes.txt`` beside the lists (line i names label i) or else ``0..K-1`` with K
  from the training list (``train.csv`` / ``train.txt``); a negative label or one >= K is an error.
- ``ucf101``: ``classInd.txt`` + ``trainlist0N.txt`` / ``testlist0N.txt``; split ``train``/``test``
  (fold 1) or ``train2``, ``test3``...; ``validation``/``val`` mean the test list.
- ``hmdb51``: ``<class>_test_split<N>.txt`` files with ``<video> <0|1|2>`` (1 = train, 2 = test, 0 = unused).
- ``folder``: ``<root>/<split>/<class>/<video>`` (or ``<root>/<class>/<video>`` with split ``all``).
  Classes: the lines of ``<root>/classes.txt``, or else the class folders of ``<root>/train/``, so every
  split gets the same labels; a class folder of another split that is not among them is an error.

One class list per dataset. Every file is read as UTF-8 (a non-UTF-8 file is an error naming the file
and line). Every video path must resolve inside the dataset root (symbolic links followed): an entry
outside it is an error unless ``allow_outside_root=True`` (``data.allow_outside_root``).

Malformed annotation files raise ``AnnotationError`` at once, naming the file, the entry (line number or
JSON index) and what was expected.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("ssv2", "kinetics", "list", "ucf101", "hmdb51", "folder")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ogv", ".3gp")
SSV2_VIDEO_DIR = "20bn-something-something-v2"


class AnnotationError(ValueError):
    """A malformed or missing annotation file; the message names the file and the entry."""


@dataclass
class VideoRecord:
    path: Path
    label: int                      # -1 when the split has no labels
    video_id: str
    extra: dict = field(default_factory=dict)
    where: str = ""                 # the annotation entry it came from ("file: line N"), for error messages


CLASSES_FILE = "classes.txt"     # optional class list (one name per line) of the folder and list formats


def read_annotations(root: str | Path, format: str, split: str, *,
                     allow_outside_root: bool = False) -> tuple[list[VideoRecord], list[str]]:
    """Read the ``split`` of the dataset at ``root`` in ``format`` (see the module docstring)."""
    readers = {"ssv2": read_ssv2, "kinetics": read_kinetics, "list": read_list,
               "ucf101": read_ucf101, "hmdb51": read_hmdb51, "folder": read_folder}
    if format not in readers:
        raise ValueError(f"unknown annotation format {format!r}; expected one of {FORMATS}")
    root = Path(root)
    if not root.exists():
        raise AnnotationError(f"{root}: dataset root does not exist")
    records, class_names = readers[format](root, split)
    if not allow_outside_root:
        refuse_outside_root(records, root.parent if root.is_file() else root)
    return records, class_names


def refuse_outside_root(records: list[VideoRecord], root: Path) -> None:
    """AnnotationError for the first record whose path (symbolic links followed) is not under ``root``."""
    real_root = Path(os.path.realpath(root))
    folders: dict[str, tuple[bool, set[str]]] = {}  # parent -> (its real path is inside, its symlinks' names)
    for r in records:
        parent, _, name = os.path.abspath(r.path).rpartition(os.sep)
        if parent not in folders:      # videos share a few folders: one realpath + one listing per folder
            try:
                with os.scandir(parent) as it:
                    links = {e.name for e in it if e.is_symlink()}
            except OSError:                # a missing folder: its videos are reported missing later
                links = set()
            folders[parent] = (Path(os.path.realpath(parent)).is_relative_to(real_root), links)
        inside, links = folders[parent]
        if inside and name not in links:
            continue
        real = Path(os.path.realpath(r.path))
        if not real.is_relative_to(real_root):
            via = f" (it resolves to {real})" if real != r.path else ""
            raise AnnotationError(f"{r.where or r.path}: video {r.path} is outside the dataset root {real_root}"
                                  f"{via}; set data.allow_outside_root=true (data check: --allow-outside-root) "
                                  "if this layout is intended")


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a leading BOM dropped); AnnotationError naming the file and line otherwise."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise AnnotationError(f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
                              f"{e.start}); re-save the file as UTF-8") from None


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped line) of a text file, empty lines and ``#`` comments left out."""
    return [(i, line.strip()) for i, line in enumerate(read_text(path).splitlines(), 1)
            if line.strip() and not line.strip().startswith("#")]


def read_class_file(path: Path) -> list[str]:
    """``classes.txt``: one class name per line (line order = label index), each name once."""
    names = [line for _, line in _lines(path)]
    if not names:
        raise AnnotationError(f"{path}: no class names")
    seen: set[str] = set()
    for line_no, name in _lines(path):
        if name in seen:
            raise AnnotationError(f"{path}: line {line_no}: class {name!r} is listed twice")
        seen.add(name)
    return names


def available_splits(root: str | Path, format: str) -> list[str]:
    """The splits present at ``root`` (used by ``timematters data check --split all``)."""
    root = Path(root)
    if format == "ssv2":
        return [s for s in ("train", "validation", "test") if _ssv2_file(root, s, required=False)]
    if format == "kinetics":
        folder = _first_dir_with(root, ("", "annotations"), "*.csv")
        return sorted(p.stem for p in folder.glob("*.csv")) if folder else []
    if format == "list":
        if root.is_file():
            return [root.stem]
        return sorted({p.stem for p in root.glob("*.csv")} | {p.stem for p in root.glob("*.txt")})
    if format == "ucf101":
        folder = _first_dir_with(root, ("", "ucfTrainTestlist", "splits", "annotations"), "classInd.txt")
        if folder is None:
            return []
        return sorted(f"{m.group(1)}{int(m.group(2))}" for p in folder.glob("*list0*.txt")
                      if (m := re.fullmatch(r"(train|test)list0*(\d+)\.txt", p.name)))
    if format == "hmdb51":
        folder = _first_dir_with(root, _HMDB_SPLIT_DIRS, "*_test_split*.txt")
        if folder is None:
            return []
        folds = sorted({int(m.group(1)) for p in folder.glob("*_test_split*.txt")
                        if (m := re.search(r"_test_split(\d+)\.txt$", p.name))})
        return [f"{s}{k}" for k in folds for s in ("train", "test")]
    if format == "folder":
        subdirs = [d.name for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []
        splits = [d for d in subdirs if d in ("train", "val", "validation", "test")]
        return splits or ["all"]
    raise ValueError(f"unknown annotation format {format!r}; expected one of {FORMATS}")


def detect_format(root: str | Path) -> tuple[str, str]:
    """Guess the layout of ``root``: (format, the evidence, e.g. the file that gave it away).

    Tried in order: SSv2 JSON files, Kinetics CSVs (a ``youtube_id`` column), UCF101 ``classInd.txt``,
    HMDB51 ``*_test_split*.txt``, ``path label`` lists (``train.csv``/``.txt``, ...), folder per class."""
    root = Path(root)
    if not root.exists():
        raise AnnotationError(f"{root}: dataset root does not exist")
    if root.is_file():
        return "list", f"{root} is a file"
    for name in ("labels", "train", "validation"):
        found = _ssv2_file(root, name, required=False)
        if found:
            return "ssv2", str(found)
    folder = _first_dir_with(root, ("", "annotations"), "*.csv")
    for csv_path in sorted(folder.glob("*.csv")) if folder else []:
        header = read_text(csv_path).split("\n", 1)[0]
        if "youtube_id" in header:
            return "kinetics", f"{csv_path} (a youtube_id column)"
    folder = _first_dir_with(root, ("", "ucfTrainTestlist", "splits", "annotations"), "classInd.txt")
    if folder:
        return "ucf101", str(folder / "classInd.txt")
    folder = _first_dir_with(root, _HMDB_SPLIT_DIRS, "*_test_split*.txt")
    if folder:
        return "hmdb51", f"{next(folder.glob('*_test_split*.txt'))} (and the other split files)"
    lists = [p for s in ("train", "val", "validation", "test") if (p := _list_file(root, s))]
    if lists:
        return "list", f"{lists[0]} ('path label' lines)"
    for base in [root / s for s in ("train", "val", "validation", "test") if (root / s).is_dir()] or [root]:
        for d in sorted(base.iterdir()):
            if d.is_dir() and any(p.suffix.lower() in VIDEO_EXTENSIONS for p in d.rglob("*")):
                return "folder", f"class folders with videos, e.g. {d}"
    raise AnnotationError(f"{root}: cannot tell the dataset layout (no SSv2 JSON, Kinetics CSV, UCF101 classInd.txt, "
                          "HMDB51 split files, train.csv/.txt list, or class folders with videos); pass --format")


# --------------------------------------------------------------------------------------------------
# Something-Something-v2
def _ssv2_file(root: Path, name: str, required: bool = True) -> Path | None:
    fname = f"something-something-v2-{name}.json"
    for cand in (root / fname, root / "labels" / fname):
        if cand.is_file():
            return cand
    if required:
        raise AnnotationError(f"{root}: neither {fname} nor labels/{fname} exists")
    return None


def _load_json(path: Path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def ssv2_label_name(template: str) -> str:
    """'Putting [something] on [something]' -> 'Putting something on something' (official convention)."""
    return template.replace("[", "").replace("]", "")


def read_ssv2(root: Path, split: str) -> tuple[list[VideoRecord], list[str]]:
    split = {"val": "validation"}.get(split, split)
    if split not in ("train", "validation", "test"):
        raise AnnotationError(f"{root}: SSv2 split must be train, validation or test, got {split!r}")
    labels_path = _ssv2_file(root, "labels")
    mapping = _load_json(labels_path)
    if not isinstance(mapping, dict) or not mapping:
        raise AnnotationError(f"{labels_path}: expected a JSON object mapping class name -> index string")
    class_to_idx: dict[str, int] = {}
    for name, value in mapping.items():
        try:
            class_to_idx[name] = int(value)
        except (TypeError, ValueError):
            raise AnnotationError(f"{labels_path}: entry {name!r}: expected an integer index string, "
                                  f"got {value!r}") from None
    num = len(class_to_idx)
    if sorted(class_to_idx.values()) != list(range(num)):
        raise AnnotationError(f"{labels_path}: class indices must be 0..{num - 1}, each once")
    class_names = [""] * num
    for name, i in class_to_idx.items():
        class_names[i] = name

    split_path = _ssv2_file(root, split)
    entries = _load_json(split_path)
    if not isinstance(entries, list):
        raise AnnotationError(f"{split_path}: expected a JSON list of entries")
    video_dir = root / SSV2_VIDEO_DIR
    records = []
    for i, entry in enumerate(entries):
        where = f"{split_path}: entry {i}"
        if not isinstance(entry, dict) or "id" not in entry:
            raise AnnotationError(f"{where}: expected an object with an 'id' key, got {str(entry)[:80]}")
        vid = str(entry["id"])
        if not vid or "/" in vid:
            raise AnnotationError(f"{where}: invalid id {vid!r}")
        if "template" in entry:
            if not isinstance(entry["template"], str):
                raise AnnotationError(f"{where} (id {vid}): 'template' must be a string")
            name = ssv2_label_name(entry["template"])
            if name not in class_to_idx:
                raise AnnotationError(f"{where} (id {vid}): template {entry['template']!r} -> class {name!r} "
                                      f"is not in {labels_path.name}")
            label = class_to_idx[name]
        elif split == "test":
            label = -1
        else:
            raise AnnotationError(f"{where} (id {vid}): expected a 'template' key in a labelled split")
        extra = {k: entry[k] for k in ("label", "template", "placeholders") if k in entry}
        records.append(VideoRecord(video_dir / f"{vid}.webm", label, vid, extra, where))
    return records, class_names


# --------------------------------------------------------------------------------------------------
# Kinetics
def _first_dir_with(root: Path, subdirs, pattern: str) -> Path | None:
    for sub in subdirs:
        d = root / sub if sub else root
        if d.is_dir() and any(d.glob(pattern)):
            return d
    return None


def _index_videos(root: Path) -> dict[str, Path]:
    """file name -> path for every video file under root (one directory walk)."""
    found: dict[str, Path] = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.lower().endswith(VIDEO_EXTENSIONS):
                found.setdefault(name, Path(dirpath) / name)
    return found


def _kinetics_rows(path: Path) -> list[tuple[int, dict]]:
    with io.StringIO(read_text(path), newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in ("youtube_id", "time_start", "time_end") if c not in columns]
        if missing:
            raise AnnotationError(f"{path}: line 1: header must have label,youtube_id,time_start,time_end,split; "
                                  f"missing {missing} (got {columns})")
        return [(reader.line_num, row) for row in reader]


def read_kinetics(root: Path, split: str) -> tuple[list[VideoRecord], list[str]]:
    folder = _first_dir_with(root, ("", "annotations"), "*.csv")
    if folder is None:
        raise AnnotationError(f"{root}: no Kinetics CSV files (<split>.csv) at the root or in annotations/")
    names = {split, {"validation": "validate", "val": "validate"}.get(split, split),
             {"validate": "val"}.get(split, split)}
    csv_path = next((folder / f"{n}.csv" for n in sorted(names) if (folder / f"{n}.csv").is_file()), None)
    if csv_path is None:
        raise AnnotationError(f"{folder}: no {split}.csv (found {sorted(p.name for p in folder.glob('*.csv'))})")
    # Classes from every CSV of the folder so that indices agree between splits.
    all_labels: set[str] = set()
    for other in sorted(folder.glob("*.csv")):
        for _, row in _kinetics_rows(other):
            if row.get("label"):
                all_labels.add(row["label"])
    class_names = sorted(all_labels)
    class_to_idx = {c: i for i, c in enumerate(class_names)}
    files = _index_videos(root)
    records = []
    for line, row in _kinetics_rows(csv_path):
        where = f"{csv_path}: line {line}"
        yid = (row.get("youtube_id") or "").strip()
        if not yid:
            raise AnnotationError(f"{where}: empty youtube_id")
        try:
            start, end = int(float(row["time_start"])), int(float(row["time_end"]))
        except (TypeError, ValueError):
            raise AnnotationError(f"{where}: time_start/time_end must be numbers, got "
                                  f"{row.get('time_start')!r}, {row.get('time_end')!r}") from None
        name = row.get("label") or ""
        label = class_to_idx[name] if name else -1
        stem = f"{yid}_{start:06d}_{end:06d}"
        path = next((files[f"{s}{ext}"] for s in (stem, yid) for ext in VIDEO_EXTENSIONS if f"{s}{ext}" in files),
                    root / split / name / f"{stem}.mp4")
        records.append(VideoRecord(path, label, stem, {"youtube_id": yid, "time_start": start, "time_end": end,
                                                        "label_name": name}, where))
    return records, class_names


# --------------------------------------------------------------------------------------------------
# PySlowFast "path label" lists
_LIST_LINE = re.compile(r"(.+?)[\s,]+(-?\d+)")


def _list_file(folder: Path, split: str) -> Path | None:
    return next((folder / f"{split}{ext}" for ext in (".csv", ".txt") if (folder / f"{split}{ext}").is_file()), None)


def _parse_list(list_path: Path) -> list[VideoRecord]:
    """The ``path label`` lines of one list file (labels not yet checked against the classes)."""
    base = list_path.parent
    records = []
    for line_no, line in _lines(list_path):
        m = _LIST_LINE.fullmatch(line)
        if m is None:
            raise AnnotationError(f"{list_path}: line {line_no}: expected 'path label' (space or comma "
                                  f"separated, integer label), got {line[:80]!r}")
        path = Path(m.group(1).strip())
        records.append(VideoRecord(path if path.is_absolute() else base / path, int(m.group(2)), path.stem, {},
                                   f"{list_path}: line {line_no}"))
    if not records:
        raise AnnotationError(f"{list_path}: no entries")
    return records


def read_list(root: Path, split: str) -> tuple[list[VideoRecord], list[str]]:
    if root.is_file():
        list_path = root
    else:
        list_path = _list_file(root, split)
        if list_path is None:
            raise AnnotationError(f"{root}: no {split}.csv or {split}.txt list file")
    records = _parse_list(list_path)
    folder = list_path.parent
    if (folder / CLASSES_FILE).is_file():
        class_names = read_class_file(folder / CLASSES_FILE)
        source = f"{folder / CLASSES_FILE}"
    else:  # the training list fixes the class count, so every split has the same classes
        train_path = _list_file(folder, "train") or list_path
        train = records if train_path == list_path else _parse_list(train_path)
        class_names = [str(i) for i in range(max(max(r.label for r in train) + 1, 1))]
        source = f"the training list {train_path.name}"
    for r in records:
        if not 0 <= r.label < len(class_names):
            raise AnnotationError(f"{r.where}: label {r.label} is outside 0..{len(class_names) - 1} "
                                  f"({len(class_names)} classes from {source})")
    return records, class_names


# --------------------------------------------------------------------------------------------------
# UCF101 / HMDB51 official splits
def _parse_split(split: str) -> tuple[str, int]:
    m = re.fullmatch(r"(train|test|val|validation)(\d*)", split)
    if m is None:
        raise AnnotationError(f"split must be train/test with an optional fold number (e.g. test2), got {split!r}")
    kind = "train" if m.group(1) == "train" else "test"
    return kind, int(m.group(2) or 1)


def _video_base(root: Path, candidates, class_name: str) -> Path:
    for sub in candidates:
        d = root / sub if sub else root
        if (d / class_name).is_dir():
            return d
    return root / candidates[0] if candidates[0] else root


def read_ucf101(root: Path, split: str) -> tuple[list[VideoRecord], list[str]]:
    kind, fold = _parse_split(split)
    folder = _first_dir_with(root, ("", "ucfTrainTestlist", "splits", "annotations"), "classInd.txt")
    if folder is None:
        raise AnnotationError(f"{root}: no classInd.txt at the root or in ucfTrainTestlist/")
    class_ind = folder / "classInd.txt"
    indexed: dict[int, str] = {}
    for line_no, line in _lines(class_ind):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise AnnotationError(f"{class_ind}: line {line_no}: expected '<index> <ClassName>', got {line.strip()!r}")
        indexed[int(parts[0])] = parts[1]
    if sorted(indexed) != list(range(1, len(indexed) + 1)):
        raise AnnotationError(f"{class_ind}: class indices must be 1..{len(indexed)}, each once")
    class_names = [indexed[i] for i in range(1, len(indexed) + 1)]
    class_to_idx = {c: i for i, c in enumerate(class_names)}
    list_path = folder / f"{kind}list{fold:02d}.txt"
    if not list_path.is_file():
        raise AnnotationError(f"{folder}: no {list_path.name} for split {split!r}")
    base = _video_base(root, ("UCF-101", "UCF101", "videos", ""), class_names[0])
    records = []
    for line_no, line in _lines(list_path):
        parts = line.split()
        where = f"{list_path}: line {line_no}"
        rel = parts[0]
        cls = rel.split("/")[0]
        if "/" not in rel or cls not in class_to_idx:
            raise AnnotationError(f"{where}: expected '<ClassName>/<video>' with a class from classInd.txt, "
                                  f"got {rel!r}")
        label = class_to_idx[cls]
        if len(parts) > 1:
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) - 1 != label:
                raise AnnotationError(f"{where}: expected the 1-based index of {cls} "
                                      f"({label + 1}) after the path, got {' '.join(parts[1:])!r}")
        records.append(VideoRecord(base / rel, label, Path(rel).stem, {}, where))
    return records, class_names


_HMDB_SPLIT_DIRS = ("", "testTrainMulti_7030_splits", "splits", "annotations")


def read_hmdb51(root: Path, split: str) -> tuple[list[VideoRecord], list[str]]:
    kind, fold = _parse_split(split)
    folder = _first_dir_with(root, _HMDB_SPLIT_DIRS, f"*_test_split{fold}.txt")
    if folder is None:
        raise AnnotationError(f"{root}: no <class>_test_split{fold}.txt files at the root or in "
                              f"testTrainMulti_7030_splits/")
    split_files = sorted(folder.glob(f"*_test_split{fold}.txt"))
    class_names = [p.name[: -len(f"_test_split{fold}.txt")] for p in split_files]
    base = _video_base(root, ("hmdb51_org", "hmdb51", "videos", ""), class_names[0])
    marker = "1" if kind == "train" else "2"
    records = []
    for label, (cls, path) in enumerate(zip(class_names, split_files)):
        for line_no, line in _lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise AnnotationError(f"{path}: line {line_no}: expected '<video> <0|1|2>', got {line.strip()!r}")
            if parts[1] == marker:
                records.append(VideoRecord(base / cls / parts[0], label, Path(parts[0]).stem, {},
                                           f"{path}: line {line_no}"))
    return records, class_names


# --------------------------------------------------------------------------------------------------
# folder per class
def folder_classes(root: Path, base: Path) -> tuple[list[str], str]:
    """The class list of a folder-per-class dataset and where it comes from: ``<root>/classes.txt``, else the
    class folders of ``<root>/train/``, else those of ``base`` (the split being read)."""
    if (root / CLASSES_FILE).is_file():
        return read_class_file(root / CLASSES_FILE), str(root / CLASSES_FILE)
    source = root / "train" if (root / "train").is_dir() else base
    names = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise AnnotationError(f"{source}: expected one sub-folder per class, found none")
    return names, f"the class folders of {source}"


def read_folder(root: Path, split: str) -> tuple[list[VideoRecord], list[str]]:
    if split in ("", "all") and not (root / split).is_dir():
        base = root
    else:
        base = root / split
        if not base.is_dir():
            raise AnnotationError(f"{root}: no folder {split}/ (use split 'all' for <root>/<class>/<video>)")
    class_names, source = folder_classes(root, base)
    class_to_idx = {c: i for i, c in enumerate(class_names)}
    found = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [c for c in found if c not in class_to_idx]
    if unknown:
        raise AnnotationError(f"{base / unknown[0]}: class folder {unknown[0]!r} is not among the "
                              f"{len(class_names)} classes of {source}" +
                              (f" (also {unknown[1:]})" if len(unknown) > 1 else ""))
    records = []
    for cls in found:
        for p in sorted((base / cls).rglob("*")):
            if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file():
                records.append(VideoRecord(p, class_to_idx[cls], p.stem, {}, str(base / cls)))
    if not records:
        raise AnnotationError(f"{base}: no video files ({', '.join(VIDEO_EXTENSIONS)}) in the class folders")
    return records, class_names
