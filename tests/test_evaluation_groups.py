"""Class groups: the TIME paper's SSv2 lists matched by template, user JSON files."""
from __future__ import annotations

import json

import pytest

from timematters.evaluation.groups import (SSV2_STATIC, SSV2_TEMPORAL, SSV2_TEMPORAL_SUBSET, load_groups_json,
                                         match_templates, resolve_groups, ssv2_groups)


def test_paper_lists_have_the_stated_sizes():
    assert len(SSV2_TEMPORAL) == 18 and len(set(SSV2_TEMPORAL)) == 18
    assert len(SSV2_TEMPORAL_SUBSET) == 6 and set(SSV2_TEMPORAL_SUBSET) <= set(SSV2_TEMPORAL)
    # Appendix A prints 17 static templates (it says 16); none is also temporal
    assert len(set(SSV2_STATIC)) == 17 and not set(SSV2_STATIC) & set(SSV2_TEMPORAL)


def test_templates_match_with_brackets_and_case():
    classes = ["Lifting [something] up completely, then letting it drop down", "Folding [Something]",
               "Putting something on a surface", "moving something and something closer to each other"]
    found, missing = match_templates(SSV2_TEMPORAL_SUBSET, classes)
    assert found == [classes[0], classes[3]] and len(missing) == 4
    groups = ssv2_groups(classes)
    assert groups == {"temporal": [classes[3], classes[0]], "static": [classes[1]]}   # in the paper's order
    assert resolve_groups("ssv2-subsets", classes)["temporal_subset"] == [classes[0], classes[3]]
    assert resolve_groups("auto", classes)["static"] == [classes[1]]
    assert resolve_groups("auto", ["a", "b"]) == {} and resolve_groups("none", classes) == {}


def test_user_json_groups(tmp_path):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({"mine": ["Folding something"], "other": ["b"]}))
    assert load_groups_json(path, ["Folding [something]", "b"]) == {"mine": ["Folding [something]"], "other": ["b"]}
    with pytest.raises(ValueError, match="not in the dataset"):
        load_groups_json(path, ["b"])
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected"):
        resolve_groups(str(path), ["b"])
    with pytest.raises(ValueError, match="unknown class-group"):
        resolve_groups("bogus", ["b"])


def test_resolve_classes_takes_names_and_groups_in_dataset_order():
    from timematters.evaluation.groups import resolve_classes

    classes = ["Folding [something]", "Lifting [something] up completely, then letting it drop down",
               "Putting something on a surface", "Moving something and something closer to each other",
               "Squeezing something"]
    assert resolve_classes("temporal_subset", classes) == [classes[1], classes[3]]
    assert resolve_classes(["static", "Putting something on a surface"], classes) == [classes[0], classes[2],
                                                                                        classes[4]]
    assert resolve_classes(["squeezing [something]", "folding something"], classes) == [classes[0], classes[4]]
    with pytest.raises(ValueError, match="neither a class of the dataset nor a group"):
        resolve_classes(["Folding something", "Juggling"], classes)
    with pytest.raises(ValueError, match="two or more"):
        resolve_classes(["Folding something"], classes)
