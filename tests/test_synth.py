"""The synthetic SSv2-layout benchmark: layout, decoding, determinism, the reversed-pair property,
the background-bias knob and the ground-truth motion."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from timematters.cli import main as cli_main
from timematters.data import synth
from timematters.data.synth import CLASSES, cue_palette, generate, load_meta, motion_field, sample_clip

K = len(CLASSES)
FRAMES, SIZE = 8, 32


def _decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "bench"
    return generate(out, videos=56, frames=FRAMES, size=SIZE, seed=3, bias=0.9, workers=2)


def test_classes_are_reversed_pairs_and_static():
    names = [c.name for c in CLASSES]
    assert len(set(names)) == K
    temporal = [c for c in CLASSES if c.group == "temporal"]
    static = [c for c in CLASSES if c.group == "static"]
    assert len(temporal) >= 8 and len(static) >= 4
    for c in temporal:
        partner = CLASSES[names.index(c.partner)]
        assert partner.partner == c.name and partner.motion == c.motion and partner.reverse != c.reverse
    assert all(c.partner is None for c in static)


def test_layout_and_json_schema(bench: Path):
    labels = json.loads((bench / "something-something-v2-labels.json").read_text())
    assert labels == {c.name: str(k) for k, c in enumerate(CLASSES)}
    seen_ids = set()
    for split in ("train", "validation"):
        entries = json.loads((bench / f"something-something-v2-{split}.json").read_text())
        assert entries, split
        for e in entries:
            assert set(e) == {"id", "label", "template", "placeholders"}
            assert e["id"].isdigit() and e["id"] not in seen_ids
            seen_ids.add(e["id"])
            # readers get the class as the template without brackets (the official tools' rule)
            assert e["template"].replace("[", "").replace("]", "") in labels
            assert e["template"].count("[something]") == len(e["placeholders"])
            filled = e["template"]
            for p in e["placeholders"]:
                filled = filled.replace("[something]", p, 1)
            assert e["label"] == filled
            assert (bench / "20bn-something-something-v2" / f"{e['id']}.webm").is_file()
        classes = {labels[e["template"].replace("[", "").replace("]", "")] for e in entries}
        assert len(classes) == K, f"{split} misses classes"
    assert len(seen_ids) == 56
    assert len(list((bench / "20bn-something-something-v2").glob("*.webm"))) == 56

    meta = load_meta(bench)
    assert meta["params"]["videos"] == 56 and meta["params"]["bias"] == 0.9
    assert [c["name"] for c in meta["classes"]] == list(labels)
    for c in meta["classes"]:
        assert c["group"] in ("temporal", "static")
        assert (c["partner"] is None) == (c["group"] == "static")
    ceil = meta["order_blind_ceiling"]
    assert ceil["temporal"] == 0.5
    n_t = sum(c.group == "temporal" for c in CLASSES)
    assert ceil["all"]["validation"] == pytest.approx((0.5 * n_t + (K - n_t)) / K, abs=0.05)
    assert set(meta["videos"]) == seen_ids
    v = next(iter(meta["videos"].values()))
    assert {"split", "class", "class_index", "background", "cue_agrees", "objects"} <= set(v)
    o = v["objects"][0]
    assert len(o["center"]) == len(o["box"]) == len(o["scale"]) == len(o["angle"]) == FRAMES
    assert len(o["motion"]) == FRAMES - 1


def test_videos_decode_with_pyav(bench: Path):
    for path in sorted((bench / "20bn-something-something-v2").glob("*.webm")):
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            assert stream.codec_context.name == "vp9"
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(stream)]
        assert len(frames) == FRAMES and frames[0].shape == (SIZE, SIZE, 3), path


def test_deterministic_for_a_seed_regardless_of_workers(bench: Path, tmp_path: Path):
    again = generate(tmp_path / "again", videos=56, frames=FRAMES, size=SIZE, seed=3, bias=0.9, workers=1)
    for name in ("something-something-v2-labels.json", "something-something-v2-train.json",
                 "something-something-v2-validation.json"):
        assert (again / name).read_bytes() == (bench / name).read_bytes(), name
    m1, m2 = load_meta(bench), load_meta(again)
    assert m1["videos"] == m2["videos"]
    for vid in m1["videos"]:
        a = (bench / "20bn-something-something-v2" / f"{vid}.webm").read_bytes()
        assert a == (again / "20bn-something-something-v2" / f"{vid}.webm").read_bytes(), vid
    other = generate(tmp_path / "other", videos=56, frames=FRAMES, size=SIZE, seed=4, workers=1)
    assert load_meta(other)["videos"] != m1["videos"]


def test_reversed_partner_is_the_same_clip_played_backwards():
    for k, c in enumerate(CLASSES):
        if c.group != "temporal" or c.reverse:
            continue
        j = [x.name for x in CLASSES].index(c.partner)
        for index in range(3):
            fwd, _, _ = sample_clip(k, 11, index, frames=FRAMES, size=SIZE)
            bwd, _, _ = sample_clip(j, 11, index, frames=FRAMES, size=SIZE)
            np.testing.assert_array_equal(bwd, fwd[::-1])
            assert not np.array_equal(fwd[0], fwd[-1]), f"{c.name}: the clip does not change"


def _frame_features(video: np.ndarray) -> np.ndarray:
    """(T, S, S, 3) -> (T, F): an 8x8 grey thumbnail and translation-invariant spectrum per frame."""
    grey = video.astype(np.float32).mean(-1) / 255.0                         # (T, S, S)
    T, S, _ = grey.shape
    thumb = grey.reshape(T, 8, S // 8, 8, S // 8).mean((2, 4)).reshape(T, -1)
    spec = np.abs(np.fft.rfft2(grey - grey.mean((1, 2), keepdims=True)))[:, :12, :12].reshape(T, -1)
    colour = video.reshape(T, -1, 3).astype(np.float32).std(1) / 255.0      # (T, 3)
    return np.concatenate([thumb, np.log1p(spec), colour], axis=1)


def test_pair_property_order_blind_classifier_at_chance_within_pairs():
    """Averaging per-frame features over time cannot tell a pair apart; the same features kept in
    order (first half vs second half) can, and the averaged ones still separate the static classes."""
    n = 36
    feats, labels = {}, {}
    for k in range(K):
        clips = [sample_clip(k, 5, 1000 * k + i, frames=FRAMES, size=SIZE)[0] for i in range(n)]
        f = np.stack([_frame_features(v) for v in clips])                    # (n, T, F)
        feats[k], labels[k] = f, np.full(n, k)

    def cv_acc(ks: list[int], order: bool) -> float:
        X = np.concatenate([feats[k] for k in ks])
        if order:
            h = FRAMES // 2
            X = np.concatenate([X[:, :h].mean(1), X[:, h:].mean(1)], axis=1)
        else:
            X = X.mean(1)
        y = np.concatenate([labels[k] for k in ks])
        clf = LogisticRegression(C=1.0, max_iter=2000)
        return float(cross_val_score(clf, (X - X.mean(0)) / (X.std(0) + 1e-6), y, cv=4).mean())

    pairs = [(k, [c.name for c in CLASSES].index(c.partner)) for k, c in enumerate(CLASSES)
             if c.group == "temporal" and not c.reverse]
    blind = [cv_acc(list(p), order=False) for p in pairs]
    aware = [cv_acc(list(p), order=True) for p in pairs]
    # pooled over 5 pairs x 72 clips a chance-level classifier lands at 0.5 +- ~0.03
    assert np.mean(blind) < 0.6, blind
    assert np.mean(aware) > 0.8, aware
    static = [k for k, c in enumerate(CLASSES) if c.group == "static"]
    assert cv_acc(static, order=False) > 0.8


def test_bias_knob_train_agrees_at_p_validation_at_chance(bench: Path):
    videos = 6000
    classes, is_val = synth.split_and_classes(videos, 0, 0.2, len(synth.CLASSES))
    for p in (0.0, 0.5, 0.9, 1.0):
        bg = synth._backgrounds(classes, is_val, 0, p)
        agree = bg == classes
        # the cue with probability p, else any of the K colours: agreement p + (1 - p) / K
        assert agree[~is_val].mean() == pytest.approx(p + (1 - p) / K, abs=0.02)
        assert agree[is_val].mean() == pytest.approx(1 / K, abs=0.02)
        assert np.bincount(bg[is_val], minlength=K).min() > 0.5 * is_val.sum() / K  # all colours used

    # the generated benchmark: the recorded background is the colour in the pixels
    meta = load_meta(bench)
    palette = cue_palette(K)
    agree = {"train": [], "validation": []}
    for vid, v in meta["videos"].items():
        frame = _decode(bench / "20bn-something-something-v2" / f"{vid}.webm")[0].astype(np.float32)
        corners = np.stack([frame[1, 1], frame[1, -2], frame[-2, 1], frame[-2, -2]])
        # the most common corner colour is the background (an object may sit in one corner)
        dist = np.abs(corners[:, None] - palette[None]).sum(-1)               # (4, K)
        assert np.bincount(dist.argmin(1), minlength=K).argmax() == v["background"], vid
        assert v["cue_agrees"] == (v["background"] == v["class_index"])
        agree[v["split"]].append(v["cue_agrees"])
    assert np.mean(agree["train"]) > 0.75
    assert np.mean(agree["validation"]) < 0.35
    assert meta["cue_agreement"]["train"] == pytest.approx(np.mean(agree["train"]), abs=1e-3)
    assert meta["cue_agreement"]["train_expected"] == pytest.approx(0.9 + 0.1 / K, abs=1e-3)


def test_metadata_reproduces_the_rendered_video(bench: Path):
    """Re-rendering the objects recorded in the metadata gives the clip that was encoded, and the
    decoded video is that clip up to codec noise."""
    meta = load_meta(bench)
    palette = cue_palette(K)
    errors = []
    for vid, v in meta["videos"].items():
        original, _, _ = sample_clip(v["class_index"], 3, int(vid) - 1, frames=FRAMES, size=SIZE,
                                     background=v["background"])
        background = np.broadcast_to(palette[v["background"]], (SIZE, SIZE, 3)).astype(np.float32)
        objects = synth._objects_from_meta(v["objects"])
        video, _ = synth.render(objects, background, FRAMES)
        assert np.abs(video.astype(int) - original).max() <= 2, vid  # metadata is rounded to 1e-3
        decoded = _decode(bench / "20bn-something-something-v2" / f"{vid}.webm").astype(np.float32)
        err = np.abs(decoded - original).mean()  # VP9 crf 10 with 4:2:0 chroma: a few grey levels
        for o in objects:
            o.cx = o.cx + 2.0
        shifted, _ = synth.render(objects, background, FRAMES)
        errors.append(err)
        assert err < 0.8 * np.abs(decoded - shifted).mean(), f"video {vid}: 2 px off fits as well"
        for o in v["objects"]:
            c = np.asarray(o["center"])
            np.testing.assert_allclose(np.asarray(o["motion"]), np.diff(c, axis=0), atol=2e-3)
    assert np.mean(errors) < 4.0


def test_metadata_centres_match_decoded_object_positions(bench: Path):
    meta = load_meta(bench)
    palette = cue_palette(K)
    checked = 0
    for vid, v in meta["videos"].items():
        if v["class"] not in ("Moving something from left to right", "Moving something from right to left"):
            continue
        decoded = _decode(bench / "20bn-something-something-v2" / f"{vid}.webm").astype(np.float32)
        (obj,) = v["objects"]
        for t in range(FRAMES):
            x0, y0, x1, y1 = obj["box"][t]
            if x0 == 0 or y0 == 0 or x1 == SIZE or y1 == SIZE:
                continue  # cut by the frame edge: the centroid is not the centre
            mask = np.abs(decoded[t] - palette[v["background"]]).sum(-1) > 60
            ys, xs = np.nonzero(mask)
            # every solid shape is centred on its centroid (pixel centres at +0.5)
            assert xs.mean() + 0.5 == pytest.approx(obj["center"][t][0], abs=0.6), (vid, t)
            assert ys.mean() + 0.5 == pytest.approx(obj["center"][t][1], abs=0.6), (vid, t)
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("class_name", ["Moving something from left to right", "Turning something clockwise",
                                        "Approaching something with your camera", "Uncovering something"])
def test_motion_field_warps_frame_t_onto_t_plus_1(class_name: str):
    """Following the true motion from frame t lands on the same colour in frame t+1 (objects given a
    checkerboard); following the opposite motion, or none, does not."""
    k = [c.name for c in CLASSES].index(class_name)
    size = 64
    _, objects, _ = sample_clip(k, 2, 7, frames=FRAMES, size=size, background=0)
    for o in objects:  # a checkerboard on every object, so each pixel's own motion is visible
        o.texture, o.color2 = "checker", o.color * 0.3
    background = np.broadcast_to(cue_palette(K)[0], (size, size, 3)).astype(np.float32)
    video, _ = synth.render(objects, background, FRAMES)
    vmeta = {"objects": [synth._object_meta(o, np.zeros((FRAMES, size, size), np.int16), i, size)
                         for i, o in enumerate(objects)]}
    err = {1: [], -1: [], 0: []}  # true motion, the opposite one, none
    for t in range(FRAMES - 1):
        flow, top = motion_field(vmeta, t, size)
        assert (flow[top < 0] == 0).all()
        ys, xs = np.nonzero((top >= 0) & (np.hypot(flow[..., 0], flow[..., 1]) > 0.5))
        for sign in (1, -1, 0):
            tx = np.rint(xs + sign * flow[ys, xs, 0]).astype(int)
            ty = np.rint(ys + sign * flow[ys, xs, 1]).astype(int)
            inside = (tx >= 0) & (tx < size) & (ty >= 0) & (ty < size)
            diff = np.abs(video[t, ys[inside], xs[inside]].astype(int)
                          - video[t + 1, ty[inside], tx[inside]].astype(int)).sum(-1)
            err[sign].append(diff)
    true, wrong, still = (np.concatenate(err[s]) for s in (1, -1, 0))
    assert len(true) > 100, "nothing moves"
    # sub-pixel motion rounded to whole pixels on a fine pattern leaves some error on the true path
    assert np.median(true) < 40
    assert true.mean() < 0.5 * min(wrong.mean(), still.mean()), (true.mean(), wrong.mean(), still.mean())


def test_cli_writes_refuses_to_overwrite_and_checks_knobs(tmp_path: Path, capsys):
    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--videos", "28", "--frames", "4", "--size", "32", "--workers", "1",
            "--difficulty", "hard"]
    assert cli_main(argv) == 0
    assert load_meta(out)["params"]["clutter"] == synth.DIFFICULTY["hard"]["clutter"]
    assert cli_main(argv) == 2
    assert "--force" in capsys.readouterr().err
    assert cli_main(argv + ["--force", "--videos", "30"]) == 0
    assert len(list((out / "20bn-something-something-v2").glob("*.webm"))) == 30
    assert cli_main(["synth", "--out", str(tmp_path / "x"), "--bias", "1.5"]) == 2
    assert "bias=1.5" in capsys.readouterr().err
    assert cli_main(["synth", "--out", str(tmp_path / "y"), "--size", "33"]) == 2
    assert "size=33" in capsys.readouterr().err


def test_size_224(tmp_path: Path):
    out = generate(tmp_path / "big", videos=28, frames=4, size=224, seed=0, workers=1)
    frames = _decode(out / "20bn-something-something-v2" / "5.webm")
    assert frames.shape == (4, 224, 224, 3)
    box = load_meta(out)["videos"]["5"]["objects"][-1]["box"][0]
    assert box is not None and box[2] - box[0] > 20  # objects scale with the frame


def test_real_video_backdrop_is_still_and_deterministic(tmp_path):
    from videos import write_scene

    footage = tmp_path / "footage"  # a folder of real (encoded, textured) videos as the backdrop
    for seed, suffix in enumerate((".mp4", ".webm")):
        write_scene(footage / f"scene{seed}{suffix}", 8, width=160, height=120, seed=seed)
    plain, _, _ = sample_clip(10, 1, 0, frames=4, size=SIZE, background=2)
    a, _, _ = sample_clip(10, 1, 0, frames=4, size=SIZE, background=2, texture=0.6, backdrop=str(footage))
    b, _, _ = sample_clip(10, 1, 0, frames=4, size=SIZE, background=2, texture=0.6, backdrop=str(footage))
    np.testing.assert_array_equal(a, b)
    corner = (slice(0, 6), slice(0, 6))  # the ring stays near the middle
    spread = lambda v: v[:, corner[0], corner[1]].reshape(-1, 3).std(0).max()  # noqa: E731
    assert spread(plain) < 1.0 < spread(a)
    # the clutter does not move: only the object changes between frames
    still = (np.abs(a[0].astype(int) - a[-1]).sum(-1) == 0) & (np.abs(plain[0].astype(int) - plain[-1]).sum(-1) == 0)
    assert still.mean() > 0.5
    with pytest.raises(ValueError, match="no video files"):
        sample_clip(10, 1, 0, frames=4, size=SIZE, texture=0.6, backdrop=str(Path(__file__).parent))
