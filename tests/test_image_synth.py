"""`timematters synth-images`: the Backgrounds Challenge layout and the meaning of each variant."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from timematters.data import synth_images as si
from timematters.utils import rng_for

SPEC = si.SynthImageSpec(num_classes=3, img_size=32, train_per_class=3, test_per_class=4, seed=5)


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "bg"
    si.write_benchmark(out, SPEC)
    return out


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_layout_and_metadata(bench):
    names = si.class_names(3)
    assert sorted(p.name for p in (bench / "original" / "train").iterdir()) == names
    assert all(len(list((bench / "original" / "train" / c).glob("*.png"))) == 3 for c in names)
    for variant in si.VARIANTS + ("fg_mask",):
        assert sorted(p.name for p in (bench / variant / "val").iterdir()) == names
        assert all(len(list((bench / variant / "val" / c).glob("*.png"))) == 4 for c in names)
    info = json.loads((bench / "benchmark.json").read_text())
    assert info["classes"] == names and info["variants"] == list(si.VARIANTS) and info["seed"] == 5
    assert load(bench / "original" / "train" / names[0] / "00000.png").shape == (32, 32, 3)


def test_variants_share_foregrounds_and_swap_backgrounds_as_defined(bench):
    K, n, size, seed = SPEC.num_classes, SPEC.test_per_class, SPEC.img_size, SPEC.seed
    names = si.class_names(K)
    pools = [[np.round(si.draw_background(k, K, size, rng_for(seed, si._TEST, si._BG, k, i)) * 255).astype(np.uint8)
              for i in range(n)] for k in range(K)]

    def matches(img, bg_mask, k):
        """Indices of the class-k test backgrounds that ``img`` shows wherever there is no object."""
        return [j for j in range(n) if np.array_equal(img[bg_mask], pools[k][j][bg_mask])]

    for k in range(K):
        for i in range(n):
            f = f"{i:05d}.png"
            alpha = load(bench / "fg_mask" / "val" / names[k] / f)
            fg, bg = alpha == 255, alpha == 0
            assert fg.sum() > 0.1 * size * size and bg.sum() > 0.1 * size * size    # object and scene both visible
            imgs = {v: load(bench / v / "val" / names[k] / f) for v in si.VARIANTS}
            for v in si.VARIANTS:                                   # the same foreground everywhere
                assert np.array_equal(imgs[v][fg], imgs["original"][fg]), v
            assert not imgs["only_fg"][bg].any()                    # black background
            assert matches(imgs["original"], bg, k) == [i]           # its own background
            same = matches(imgs["mixed_same"], bg, k)
            assert len(same) == 1 and same != [i]                    # another image of the same class
            assert len(matches(imgs["mixed_next"], bg, (k + 1) % K)) == 1   # the next class
            assert sum(len(matches(imgs["mixed_rand"], bg, c)) for c in range(K)) == 1


def test_train_backgrounds_follow_the_class_with_the_given_correlation(tmp_path):
    spec = si.SynthImageSpec(num_classes=2, img_size=32, train_per_class=40, test_per_class=2,
                             bg_correlation=1.0, object_scale=(0.15, 0.2), seed=1)
    si.write_benchmark(tmp_path / "b", spec)
    # median colour of the border pixels (mostly background with small objects): class 0 red-ish, class 1 cyan-ish
    for k, name in enumerate(si.class_names(2)):
        for p in (tmp_path / "b" / "original" / "train" / name).glob("*.png"):
            img = load(p).astype(float)
            border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])       # (4 * 32, 3)
            corner = np.median(border, axis=0)
            assert (corner[0] > corner[2]) == (k == 0), p


def test_deterministic_per_seed_and_refuses_to_overwrite(bench, tmp_path):
    si.write_benchmark(tmp_path / "again", SPEC)
    for rel in ("original/train/01_square/00002.png", "mixed_rand/val/02_triangle/00003.png"):
        assert (tmp_path / "again" / rel).read_bytes() == (bench / rel).read_bytes()
    other = si.SynthImageSpec(**{**SPEC.__dict__, "seed": 6})
    si.write_benchmark(tmp_path / "other", other)
    rel = "original/val/00_disk/00000.png"
    assert (tmp_path / "other" / rel).read_bytes() != (bench / rel).read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        si.write_benchmark(tmp_path / "again", SPEC)
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli(tmp_path, capsys):
    p = argparse.ArgumentParser()
    si.add_arguments(p)
    args = p.parse_args(["--out", str(tmp_path / "cli"), "--classes", "2", "--train-per-class", "2",
                         "--test-per-class", "2", "--img-size", "24"])
    assert si.main(args) == 0
    assert "4 train images" in capsys.readouterr().out
    assert load(tmp_path / "cli" / "mixed_next" / "val" / "01_square" / "00001.png").shape == (24, 24, 3)
    with pytest.raises(ValueError, match="num_classes"):
        si.write_benchmark(tmp_path / "bad", si.SynthImageSpec(num_classes=1))


def test_object_colour_follows_the_class_band(tmp_path):
    import colorsys

    K = 3
    si.write_benchmark(tmp_path / "c", si.SynthImageSpec(num_classes=K, img_size=32, train_per_class=1,
                                                         test_per_class=4, fg_colour_correlation=1.0, seed=3))
    for k, name in enumerate(si.class_names(K)):
        for i in range(4):
            alpha = load(tmp_path / "c" / "fg_mask" / "val" / name / f"{i:05d}.png")
            rgb = load(tmp_path / "c" / "only_fg" / "val" / name / f"{i:05d}.png")[alpha == 255].mean(0) / 255
            hue = colorsys.rgb_to_hsv(*rgb)[0]
            centre = (k + 0.5) / K
            assert abs((hue - centre + 0.5) % 1.0 - 0.5) <= 0.25 / K + 0.02, (name, i, hue)
