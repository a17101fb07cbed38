"""Class groups for per-group accuracy: SSv2 temporal/static classes, the synthetic benchmark, a JSON file.

The SSv2 lists are the TIME paper's Appendix A (which follows Sevilla-Lara et al., 2021, "Only time can
tell"). Names are matched by template text, ignoring case, ``[something]`` brackets and punctuation, so
both SSv2 ``labels.json`` keys and ``template`` strings match.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from timematters.models.hf import normalize_name

#: the 18 temporal classes (TIME, Appendix A)
SSV2_TEMPORAL: tuple[str, ...] = (
    "Turning something upside down",
    "Approaching something with your camera",
    "Moving something away from the camera",
    "Moving away from something with your camera",
    "Moving something towards the camera",
    "Lifting something with something on it",
    "Moving something away from something",
    "Moving something closer to something",
    "Uncovering something",
    "Pretending to turn something upside down",
    "Covering something with something",
    "Lifting up one end of something, then letting it drop down",
    "Lifting something up completely without letting it drop down",
    "Moving something and something closer to each other",
    "Moving something and something away from each other",
    "Lifting something up completely, then letting it drop down",
    "Stuffing something into something",
    "Moving something and something so they collide with each other",
)

#: the static classes (TIME, Appendix A). The paper says 16, but its list names 17 templates: the printed
#: entry "Holding something next to something, Pouring something into something" holds two SSv2 classes.
#: We keep every template the paper prints, so nothing it names is dropped.
SSV2_STATIC: tuple[str, ...] = (
    "Folding something",
    "Turning the camera upwards while filming something",
    "Holding something next to something",
    "Pouring something into something",
    "Pretending to throw something",
    "Squeezing something",
    "Holding something in front of something",
    "Touching (without moving) part of something",
    "Lifting up one end of something without letting it drop down",
    "Showing something next to something",
    "Poking something so that it falls over",
    "Wiping something off of something",
    "Scooping something up with something",
    "Letting something roll down a slanted surface",
    "Sprinkling something onto something",
    "Pushing something so it spins",
    "Twisting (wringing) something wet until water comes out",
)

#: the paper's 6-class "Temporal" subset (Appendix A)
SSV2_TEMPORAL_SUBSET: tuple[str, ...] = (
    "Lifting something up completely without letting it drop down",
    "Lifting something up completely, then letting it drop down",
    "Lifting up one end of something, then letting it drop down",
    "Moving something and something closer to each other",
    "Moving something and something away from each other",
    "Moving something and something so they collide with each other",
)

#: the paper's "Static" subset: all the static classes above
SSV2_STATIC_SUBSET: tuple[str, ...] = SSV2_STATIC

SYNTH_META = "timematters-meta.json"


def match_templates(templates: Sequence[str], class_names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(dataset class names matching ``templates``, templates with no match)."""
    by_norm = {normalize_name(n): n for n in class_names}
    found, missing = [], []
    for t in templates:
        name = by_norm.get(normalize_name(t))
        (found if name is not None else missing).append(name if name is not None else t)
    return found, missing


def ssv2_groups(class_names: Sequence[str], *, subsets: bool = False) -> dict[str, list[str]]:
    """``temporal`` / ``static`` (Appendix A) or the paper's ``temporal_subset`` / ``static_subset``.

    Groups with no matching class are left out.
    """
    lists = ({"temporal_subset": SSV2_TEMPORAL_SUBSET, "static_subset": SSV2_STATIC_SUBSET} if subsets
             else {"temporal": SSV2_TEMPORAL, "static": SSV2_STATIC})
    out = {}
    for group, templates in lists.items():
        found, _ = match_templates(templates, class_names)
        if found:
            out[group] = found
    return out


def synth_groups(root: str | Path, class_names: Sequence[str]) -> dict[str, list[str]]:
    """Groups of the synthetic benchmark from ``ROOT/timematters-meta.json`` (each class has a ``group``)."""
    from timematters.data.synth import load_meta

    path = Path(root) / SYNTH_META
    try:
        meta = load_meta(root)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    classes = meta.get("classes")
    if not isinstance(classes, list):
        raise ValueError(f"{path}: expected a 'classes' list with a 'group' per class")
    out: dict[str, list[str]] = {}
    known = set(class_names)
    for entry in classes:
        if not isinstance(entry, Mapping) or "name" not in entry or "group" not in entry:
            raise ValueError(f"{path}: class entry {entry!r} lacks 'name' or 'group'")
        if entry["name"] in known:
            out.setdefault(str(entry["group"]), []).append(entry["name"])
    return out


def load_groups_json(path: str | Path, class_names: Sequence[str]) -> dict[str, list[str]]:
    """A user's ``{group: [class names]}`` file; names are matched like SSv2 templates."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as e:
        raise FileNotFoundError(f"{path}: cannot read the class-group file ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, Mapping) or not all(isinstance(v, list) for v in raw.values()):
        raise ValueError(f"{path}: expected {{group: [class names]}}")
    out = {}
    for group, names in raw.items():
        found, missing = match_templates([str(n) for n in names], class_names)
        if missing:
            raise ValueError(f"{path}: group '{group}' names classes not in the dataset: {missing[:5]}")
        out[str(group)] = found
    return out


def resolve_groups(spec: str | None, class_names: Sequence[str], data_root: str | Path | None = None
                   ) -> dict[str, list[str]]:
    """``spec``: ``auto`` | ``ssv2`` | ``ssv2-subsets`` | ``synth`` | ``none`` | a JSON file path.

    ``auto`` uses the synthetic benchmark's metadata when ``data_root`` has it, else the SSv2 lists when
    at least one SSv2 temporal and one static class is present, else no groups.
    """
    if spec in (None, "", "none"):
        return {}
    if spec == "ssv2":
        return ssv2_groups(class_names)
    if spec == "ssv2-subsets":
        return ssv2_groups(class_names, subsets=True)
    if spec == "synth":
        if data_root is None:
            raise ValueError("class groups 'synth' need the dataset directory")
        return synth_groups(data_root, class_names)
    if spec == "auto":
        if data_root is not None and (Path(data_root) / SYNTH_META).is_file():
            return synth_groups(data_root, class_names)
        groups = ssv2_groups(class_names)
        if len(groups) == 2:
            groups.update(ssv2_groups(class_names, subsets=True))
            return groups
        return {}
    if Path(spec).suffix == ".json" or Path(spec).is_file():
        return load_groups_json(spec, class_names)
    raise ValueError(f"unknown class-group choice {spec!r}: use auto, ssv2, ssv2-subsets, synth, none or a .json file")


def resolve_classes(spec: str | Sequence[str], class_names: Sequence[str], data_root: str | Path | None = None
                    ) -> list[str]:
    """``data.classes``: class names and/or group names -> the chosen classes, in the dataset's order.

    Groups are the paper's SSv2 lists (``temporal``, ``static``, ``temporal_subset``, ``static_subset``) and,
    for the synthetic benchmark, the groups of its meta file. Class names match like SSv2 templates.
    """
    if not isinstance(spec, (str, list, tuple)):
        raise ValueError(f"data.classes: expected a class or group name or a list of them, got {spec!r}")
    items = [spec] if isinstance(spec, str) else [str(x) for x in spec]
    groups = {**ssv2_groups(class_names), **ssv2_groups(class_names, subsets=True)}
    if data_root is not None and (Path(data_root) / SYNTH_META).is_file():
        groups.update(synth_groups(data_root, class_names))
    chosen: set[str] = set()
    for item in items:
        if item in groups:
            chosen.update(groups[item])
            continue
        found, missing = match_templates([item], class_names)
        if missing:
            raise ValueError(f"data.classes: {item!r} is neither a class of the dataset nor a group "
                             f"({', '.join(sorted(groups)) or 'this dataset has none'})")
        chosen.update(found)
    out = [c for c in class_names if c in chosen]
    if len(out) < 2:
        raise ValueError(f"data.classes: {list(items)} selects {len(out)} class(es); a classifier needs two or more")
    return out
