"""Oracle-box re-ID on the tiny world: protocols, baselines, the ``jobs.evaluate reid`` CLI."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from kdtrack.config import EvalConfig, load_config
from kdtrack.data.dataset import read_image_rgb
from kdtrack.formats.common import FormatError
from kdtrack.metrics.reid_probe import (
    CHANCE,
    central_boxes,
    centre_colour_histogram_features,
    colour_histogram_features,
    embed_box_set,
    evaluate_reid_box_sets,
    flatten_reid_metrics,
    format_reid_table,
    isolate_boxes,
    load_reid_box_sets,
    person_search_box_set,
    random_student_embedder,
    teacher_cosine,
)


@pytest.fixture(scope="module")
def box_sets(tiny_world: Path):
    return load_reid_box_sets(tiny_world, EvalConfig())


def _key(image: np.ndarray, box: np.ndarray) -> tuple:
    return hashlib.sha1(image.tobytes()).hexdigest(), tuple(np.round(box, 2))


def oracle_embedder(box_sets) -> callable:
    """One-hot of the true id, looked up by (image content, box): the perfect embedding."""
    table = {}
    for box_set in box_sets.values():
        start = 0
        for path, boxes in zip(box_set.image_paths, box_set.boxes_xyxy):
            image = read_image_rgb(path)
            for box, pid in zip(boxes, box_set.ids[start:start + len(boxes)]):
                table[_key(image, box)] = int(pid)
            start += len(boxes)
    dim = max(table.values()) + 1

    def embed(image, boxes):
        return np.eye(dim, dtype=np.float32)[[table[_key(image, b)] for b in boxes]]

    return embed


def random_features(image, boxes):
    """Features that know nothing: drawn from a seed fixed by the image and boxes."""
    seed = int(hashlib.sha1(image.tobytes() + np.asarray(boxes).tobytes()).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=(len(boxes), 32))


def test_box_sets_of_the_tiny_world(box_sets):
    ps, mot = box_sets["person_search"], box_sets["mot"]
    assert len(ps.image_paths) == 40 and len(ps) > 100 and (ps.ids > 0).all()  # 40 test images, labelled boxes
    assert set(np.unique(ps.groups)) == {1, 2, 3} and ps.junk_rule == "cross_camera"
    assert mot.junk_rule == "min_time_gap" and mot.min_gap == 10 and set(np.unique(mot.groups)) == {0, 1}
    assert mot.times.min() >= 22 and mot.times.max() <= 40  # val half of 40-frame sequences: frames 22..40
    assert sum(len(b) for b in ps.boxes_xyxy) == len(ps) and sum(len(b) for b in mot.boxes_xyxy) == len(mot)


def test_oracle_perfect_colour_above_chance_random_at_chance(box_sets):
    embedders = {"oracle": oracle_embedder(box_sets), "colour": colour_histogram_features,
                 "noise": random_features}
    results = evaluate_reid_box_sets(embedders, box_sets, EvalConfig())
    for protocol in ("person_search", "mot"):
        rows = results[protocol]
        assert rows["oracle"]["mAP"] == 1.0 and rows["oracle"]["rank1"] == 1.0, protocol
        assert rows["oracle"]["queries"] == rows[CHANCE]["queries"] > 20
        # features that know nothing score the random-ranking expectation (std over seeds: 0.007 PS, 0.02 MOT)
        assert rows["noise"]["mAP"] == pytest.approx(rows[CHANCE]["mAP"], abs=0.03 if protocol == "person_search"
                                                     else 0.08)
    # the colour of the right pixels identifies people across cameras far better than chance: boxes are cut
    # at the right place (measured: PS mAP 0.18 vs chance 0.07; MOT 0.80 vs 0.20)
    ps = results["person_search"]
    assert ps["colour"]["mAP"] > 2 * ps[CHANCE]["mAP"] and ps["colour"]["mAP"] > ps["noise"]["mAP"] + 0.05
    assert results["mot"]["colour"]["mAP"] > results["mot"][CHANCE]["mAP"] + 0.2
    flat = flatten_reid_metrics(results)
    assert flat["reid/person_search/oracle/mAP"] == 1.0 and flat["reid/mot/chance/queries"] > 20


def test_person_search_split_by_the_side_each_person_shows(box_sets, tiny_world: Path, tmp_path: Path):
    """The world's hidden view truth splits person search into positives seen from the query's side and from
    another side; an embedding that knows identity *and* side finds the first perfectly, not the second."""
    import shutil

    from kdtrack.synth.world import PERSON_SEARCH_TRUTH

    ps = box_sets["person_search"]
    assert box_sets["mot"].views is None and len(ps.views) == len(ps)
    assert set(ps.views) == {"front", "back", "side"}
    truth = json.loads((tiny_world / PERSON_SEARCH_TRUTH).read_text())["views"]
    manifest = json.loads((tiny_world / "person_search" / "manifest.json").read_text())
    first = next(i for i in manifest["images"] if Path(i["file_name"]).name == Path(ps.image_paths[0]).name)
    sides = [{"left": "side", "right": "side"}.get(v, v) for v, pid in zip(truth[first["file_name"]], first["pids"])
             if pid > 0]
    assert list(ps.views[:len(ps.boxes_xyxy[0])]) == sides

    lookup, start = {}, 0
    for path, boxes in zip(ps.image_paths, ps.boxes_xyxy):
        image = read_image_rgb(path)
        for k, box in enumerate(boxes):
            lookup[_key(image, box)] = (int(ps.ids[start + k]), ("front", "back", "side").index(ps.views[start + k]))
        start += len(boxes)
    dim = int(ps.ids.max()) + 1

    def id_and_side(image, boxes):
        out = np.zeros((len(boxes), dim + 3), np.float32)
        for row, box in enumerate(boxes):
            pid, side = lookup[_key(image, box)]
            out[row, pid], out[row, dim + side] = 1.0, 2.0  # the side weighs more than the identity
        return out

    results = evaluate_reid_box_sets({"id_and_side": id_and_side}, {"person_search": ps}, EvalConfig())
    row, chance = results["person_search"]["id_and_side"], results["person_search"][CHANCE]
    assert row["mAP_same_view"] == 1.0 and row["rank1_same_view"] == 1.0
    # across sides every stranger showing the query's side ranks above the person: far from perfect
    assert row["mAP_other_view"] < 0.5 and row["mAP_same_view"] > row["mAP"] > row["mAP_other_view"]
    assert row["queries_same_view"] == chance["queries_same_view"] > 10
    assert row["queries_other_view"] == chance["queries_other_view"] > 10
    assert chance["queries_same_view"] + chance["queries_other_view"] >= chance["queries"]
    assert 0 < chance["mAP_other_view"] < 0.5
    assert "by the side the positive shows" in format_reid_table(results)

    world = tmp_path / "world"  # a truth file without one of the images is refused, naming it
    shutil.copytree(tiny_world / "person_search", world / "person_search")
    (world / PERSON_SEARCH_TRUTH).parent.mkdir(parents=True)
    del truth[first["file_name"]]
    (world / PERSON_SEARCH_TRUTH).write_text(json.dumps({"views": truth}))
    with pytest.raises(FormatError, match="views.json: no view for every box of " + first["file_name"]):
        person_search_box_set(world / "person_search" / "manifest.json", "test")
    (world / PERSON_SEARCH_TRUTH).write_text(json.dumps({"views": {first["file_name"]: ["sideways"]}}))
    with pytest.raises(FormatError, match=r"views.json: unknown view\(s\) \['sideways'\]"):
        person_search_box_set(world / "person_search" / "manifest.json", "test")
    (world / PERSON_SEARCH_TRUTH).write_text("[1, 2]")
    with pytest.raises(FormatError, match="views.json: not a views file"):
        person_search_box_set(world / "person_search" / "manifest.json", "test")


def test_isolate_boxes_keeps_the_grown_box_only():
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    boxes = np.array([[4.0, 2.0, 8.0, 6.0], [-3.0, 5.5, 2.0, 12.0]], np.float32)
    a, b = isolate_boxes(image, boxes, pad=0.25, fill=127)
    # box 0 grows by 1 px per side: x 3..9, y 1..7 kept
    keep = np.zeros((10, 20), bool)
    keep[1:7, 3:9] = True
    assert (a[keep] == image[keep]).all() and (a[~keep] == 127).all()
    # box 1 grows by 1.25 x 1.625 and is clipped to the image: x 0..4 (ceil 3.25), y 3..10 (floor 3.875)
    keep = np.zeros((10, 20), bool)
    keep[3:10, 0:4] = True
    assert (b[keep] == image[keep]).all() and (b[~keep] == 127).all()
    assert isolate_boxes(image, np.zeros((0, 4)), 0.1) == []


def test_alone_context_embeds_each_box_without_its_scene(box_sets):
    ps = box_sets["person_search"]

    def scene_mean(image, boxes):  # a pure scene feature: the same for every box of an image
        return np.tile(image.reshape(-1, 3).mean(0, dtype=np.float64), (len(boxes), 1)).astype(np.float32)

    calls = []

    class Many:  # an embed_many embedder: gets every isolated copy of a batch in one call
        def __call__(self, image, boxes):
            return self.embed_many([image], [boxes])[0]

        def embed_many(self, images, boxes_list):
            calls.append(len(images))
            return [scene_mean(im, b) for im, b in zip(images, boxes_list)]

    embedders = {"colour": colour_histogram_features, "scene": scene_mean, "many": Many()}
    scene = embed_box_set(ps, embedders, batch_images=4)
    assert calls == [len(ps.image_paths[i:i + 4]) for i in range(0, len(ps.image_paths), 4)]  # images per call
    calls.clear()
    alone = embed_box_set(ps, embedders, batch_images=4, context="alone", context_pad=0.0)
    # the box's own pixels are kept: a feature of the box alone does not change
    np.testing.assert_array_equal(scene["colour"], alone["colour"])
    # the scene feature does: in the scene every box of an image shares it, alone each box has its own,
    # and it is the mean of the box kept on grey, computed here by hand for the first image
    n0 = len(ps.boxes_xyxy[0])
    assert n0 > 1 and np.ptp(scene["scene"][:n0], axis=0).max() == 0 and np.ptp(alone["scene"][:n0], axis=0).max() > 0
    image = read_image_rgb(ps.image_paths[0])
    x1, y1, x2, y2 = ps.boxes_xyxy[0][0]
    by_hand = np.full_like(image, 127)
    ya, yb, xa, xb = int(np.floor(y1)), int(np.ceil(y2)), int(np.floor(x1)), int(np.ceil(x2))
    by_hand[ya:yb, xa:xb] = image[ya:yb, xa:xb]
    np.testing.assert_allclose(alone["scene"][0], by_hand.reshape(-1, 3).mean(0), rtol=1e-6)
    np.testing.assert_array_equal(alone["many"], alone["scene"])
    # alone, embed_many gets the isolated copies (one per box) of each batch of 4 images in chunks of 4 copies
    per_batch = [sum(len(b) for b in ps.boxes_xyxy[i:i + 4]) for i in range(0, len(ps.image_paths), 4)]
    assert calls == [min(4, n - k) for n in per_batch for k in range(0, n, 4)]
    assert sum(calls) == len(ps)
    # an image without boxes keeps the embedding width (its rows join the others' by concatenation)
    boxes = [np.zeros((0, 4), np.float32), *ps.boxes_xyxy[1:]]
    emptied = embed_box_set(dataclasses.replace(ps, boxes_xyxy=boxes), {"many": Many()}, batch_images=4,
                            context="alone", context_pad=0.0)
    np.testing.assert_array_equal(emptied["many"], alone["many"][n0:])
    with pytest.raises(ValueError, match="unknown re-ID context 'crop'"):
        embed_box_set(ps, embedders, context="crop")
    with pytest.raises(ValueError, match="reid_context_pad must be >= 0"):
        embed_box_set(ps, embedders, context="alone", context_pad=-0.1)


def test_teacher_cosine_hand_computed_and_per_embedder(box_sets):
    # rows (1, 0) and (0, 1) against the teacher's (1, 0) and (0.6, 0.8): cosines 1 and 0.8, mean 0.9
    assert teacher_cosine(np.array([[1, 0], [0, 1]], np.float32),
                          np.array([[1, 0], [0.6, 0.8]], np.float32)) == pytest.approx(0.9)
    oracle = oracle_embedder(box_sets)

    def flipped(image, boxes):  # the oracle's one-hot, negated: the teacher's opposite
        return -oracle(image, boxes)

    results = evaluate_reid_box_sets({"teacher": oracle, "copy": oracle, "flipped": flipped,
                                      "colour": colour_histogram_features}, box_sets, EvalConfig())
    for rows in results.values():
        assert rows["copy"]["teacher_cosine"] == pytest.approx(1.0)
        assert rows["flipped"]["teacher_cosine"] == pytest.approx(-1.0)
        assert "teacher_cosine" not in rows["colour"]  # 256-d histogram vs the teacher's size: not comparable
        assert "teacher_cosine" not in rows["teacher"]
    assert flatten_reid_metrics(results)["reid/mot/copy/teacher_cosine"] == pytest.approx(1.0)
    assert "MOT cosT" in format_reid_table(results)


def test_student_embedder_reads_the_box_centre_like_inference(box_sets):
    from kdtrack.inference import student_embedding_at_boxes

    cfg = load_config("tiny")
    embed = random_student_embedder(cfg, seed=3)
    box_set = box_sets["person_search"]
    images = [read_image_rgb(p) for p in box_set.image_paths[:2]]
    state = torch.random.get_rng_state()
    batched = embed.embed_many(images, box_set.boxes_xyxy[:2])
    assert torch.equal(state, torch.random.get_rng_state())  # the baseline's seed leaves the global RNG alone
    for image, boxes, got in zip(images, box_set.boxes_xyxy[:2], batched):
        np.testing.assert_allclose(got, student_embedding_at_boxes(embed.detector, image, boxes), atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_colour_histogram_halves():
    image = np.zeros((20, 10, 3), np.uint8)
    image[:10] = (255, 0, 0)  # red top
    image[10:] = (0, 0, 255)  # blue bottom
    feats = colour_histogram_features(image, np.array([[0, 0, 10, 20], [0, 0, 10, 10], [5, 5, 5, 9]]))
    assert feats.shape == (3, 256)
    top, bottom = feats[0, :128], feats[0, 128:]
    assert np.count_nonzero(top) == 1 and np.count_nonzero(bottom) == 1 and np.argmax(top) != np.argmax(bottom)
    assert np.linalg.norm(feats[0]) == pytest.approx(1.0)
    assert np.argmax(feats[1, 128:]) == np.argmax(top)  # a box on the red half only: red in both halves
    assert not feats[2].any()  # an empty box: zero row


def test_centre_colour_reads_the_middle_of_the_box_only():
    np.testing.assert_allclose(central_boxes(np.array([[0, 0, 10, 20], [10, 10, 30, 20]])),
                               [[3, 2, 7, 18], [16, 11, 24, 19]])  # 40 % of the width, 80 % of the height
    # one person (red top, blue bottom, 4 px wide) in the middle of two boxes whose sides are other colours
    image = np.zeros((20, 30, 3), np.uint8)
    image[:, 3:7] = np.where(np.arange(20)[:, None, None] < 10, (255, 0, 0), (0, 0, 255))
    image[:, 0:3] = image[:, 7:10] = (0, 255, 0)  # green scene around the first box
    image[:, 23:27] = image[:, 3:7]
    image[:, 20:23] = image[:, 27:30] = (255, 255, 0)  # yellow scene around the second
    boxes = np.array([[0, 0, 10, 20], [20, 0, 30, 20]])
    centre = centre_colour_histogram_features(image, boxes)
    whole = colour_histogram_features(image, boxes)
    assert centre[0] @ centre[1] == pytest.approx(1.0)  # the same person, whatever the scene
    assert whole[0] @ whole[1] < 0.8  # the whole box is mostly scene
    np.testing.assert_array_equal(centre, colour_histogram_features(image, central_boxes(boxes)))


def test_split_and_paths_errors(tiny_world: Path, tmp_path: Path):
    manifest = tiny_world / "person_search" / "manifest.json"
    with pytest.raises(FormatError, match=r"manifest.json: no images of split 'nope' \(splits present: .*test"):
        person_search_box_set(manifest, "nope")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "person_search" / "manifest.json")):
        load_reid_box_sets(tmp_path, protocols=["person_search"])
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "MOT17" / "train")):
        load_reid_box_sets(tmp_path, protocols=["mot"])


def test_cli_writes_json_and_logs_to_mlflow(tiny_world: Path, tmp_path: Path, capsys, monkeypatch):
    import jobs.evaluate
    from jobs._mlflow_eval import scalar_metrics
    from kdtrack.checkpoint import save_checkpoint
    from kdtrack.models import build_student

    logged = {}

    def log_spy(metrics, *, dataset, tracking_uri, run_id=None, **kwargs):
        """What log_evaluation_to_mlflow would log (its store round trip is tested in test_evaluate_job.py)."""
        logged.update(scalar_metrics(metrics, dataset), run_id=run_id, uri=tracking_uri)
        return "RUN"

    monkeypatch.setattr(jobs.evaluate, "log_evaluation_to_mlflow", log_spy)
    from kdtrack.models import build_teacher

    # a fast student of a KD student's shape: the (random) teacher's 128-d feature
    cfg = load_config("tiny", ["model.width=8", "model.head_conv=16", "model.embedding_dim=128"])
    torch.manual_seed(cfg.train.seed)  # as jobs.train does before building the student
    ckpt = save_checkpoint(tmp_path / "ckpt", model=build_student(cfg.model), config=cfg)
    teacher = tmp_path / "teacher.pt"
    torch.save(build_teacher(cfg.teacher).state_dict(), teacher)
    out = tmp_path / "eval" / "reid.json"
    # the val split (20 images) and every 4th MOT frame keep the two student passes short
    jobs.evaluate.main(["reid", "--checkpoint", str(ckpt), "--world", str(tiny_world), "--split", "val",
                        "--out", str(out), "--config", "tiny", "--set", "eval.reid_mot_frame_stride=4", "--teacher-checkpoint",
                        str(teacher), "--mlflow-uri", "sqlite:////x/m.db", "--run-id", "TRAIN"])
    printed = capsys.readouterr().out
    assert "PS mAP" in printed and "colour" in printed and "logged to MLflow run RUN" in printed
    assert "PS cosT" in printed
    record = json.loads(out.read_text())
    for protocol in ("person_search", "mot"):
        assert set(record[protocol]) == {"student", "random", "colour", "colour_centre", "teacher", "teacher_input",
                                         CHANCE}
        assert record[protocol]["student"]["queries"] > 0
        assert -1 <= record[protocol]["student"]["teacher_cosine"] < 0.99  # a random student is not its teacher
        assert record[protocol]["teacher_input"]["teacher_cosine"] > 0.5  # the same teacher at 2/3 of the size
    assert record["settings"]["mot_frame_stride"] == 4 and record["settings"]["split"] == "val"
    # untrained: the random-init baseline (seed = the checkpoint's train.seed) is this very network
    assert record["person_search"]["random"] == record["person_search"]["student"]
    # metric keys "{dataset}/{protocol}/{embedder}/{metric}", dataset "reid-val" for the val split ("reid" for test)
    assert logged["reid-val/person_search/colour/mAP"] == pytest.approx(record["person_search"]["colour"]["mAP"])
    assert "reid-val/mot/student/rank1" in logged and "reid-val/mot/chance/mAP" in logged
    assert logged["run_id"] == "TRAIN"


def test_cli_negative_context_pad_is_refused_before_any_work(tmp_path: Path, capsys):
    from jobs.evaluate import cli

    # the checkpoint and world do not exist: the config is judged first, in one line, exit 2
    assert cli(["reid", "--checkpoint", str(tmp_path / "c.pt"), "--world", str(tmp_path),
                "--set", "eval.reid_context_pad=-0.1"]) == 2
    err = capsys.readouterr().err
    assert "eval.reid_context_pad must be >= 0, got -0.1" in err and "Traceback" not in err


def test_cli_missing_inputs_give_one_line_naming_the_file(tiny_world: Path, tmp_path: Path):
    from jobs.evaluate import main

    with pytest.raises(SystemExit) as exc:
        main(["reid", "--checkpoint", str(tmp_path / "c.pt"), "--world", str(tmp_path)])
    message = str(exc.value)
    assert str(tmp_path / "person_search" / "manifest.json") in message and "\n" not in message
    with pytest.raises(SystemExit, match="checkpoint not found"):
        main(["reid", "--checkpoint", str(tmp_path / "c.pt"), "--world", str(tiny_world)])
    with pytest.raises(SystemExit, match="no images of split 'nope'"):
        main(["reid", "--checkpoint", str(tmp_path / "c.pt"), "--world", str(tiny_world), "--split", "nope"])
