"""MOT scoring: devkit reproduction on the TUD data inside the motmetrics wheel, preprocessing, combining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kdtrack.config import EvalConfig
from kdtrack.formats import mot as mot_format
from kdtrack.metrics._motmetrics_compat import _asfarray, import_motmetrics
from kdtrack.metrics.mot import (
    distractor_tracker_mask,
    evaluate_sequence,
    format_table,
    summarize_sequences,
)
from kdtrack.metrics.mot_files import evaluate_mot_files

MOTMETRICS_DATA = Path(import_motmetrics().__file__).parent / "data"
TUD_LENGTHS = {"TUD-Campus": 71, "TUD-Stadtmitte": 179}  # last frame of gt.txt == last frame of test.txt


def gt_row(frame, tid, box_xywh, consider=1, cls=1, vis=1.0):
    return [frame, tid, *box_xywh, consider, cls, vis]


def trk_row(frame, tid, box_xywh):
    return [frame, tid, *box_xywh, 1.0, -1, -1, -1]


def score(gt, trk, seq_length, benchmark="MOT17", name="S"):
    ev = evaluate_sequence(name, np.asarray(gt, float), np.asarray(trk, float), seq_length, benchmark=benchmark)
    return ev, summarize_sequences([ev])["sequences"][name]


# --------------------------------------------------------------------------- NumPy 2 shim


def test_numpy2_has_no_asfarray_and_shim_fixes_motmetrics_iou_only_locally():
    assert not hasattr(np, "asfarray")  # NumPy 2: the reason for the shim
    mm = import_motmetrics()
    # boxes (x, y, w, h): [0,0,10,10] vs [0,0,10,5]: inter 50, union 100 -> IoU 0.5, distance 0.5
    d = mm.distances.iou_matrix([[0, 0, 10, 10]], [[0, 0, 10, 5], [20, 20, 5, 5]], max_iou=0.5)
    np.testing.assert_allclose(d[0, 0], 0.5)
    assert np.isnan(d[0, 1])  # no overlap: do-not-pair
    assert not hasattr(np, "asfarray")  # the global numpy module is untouched
    assert import_motmetrics() is mm  # idempotent
    assert _asfarray([1, 2]).dtype == np.float64
    assert _asfarray([1, 2], dtype=np.int32).dtype == np.float64  # NumPy 1.x: int dtypes become float64
    assert _asfarray([1, 2], dtype=np.float32).dtype == np.float32


# --------------------------------------------------------------------------- devkit reproduction


def test_motmetrics_wheel_ships_tud_data():
    for name in TUD_LENGTHS:
        assert (MOTMETRICS_DATA / name / "gt.txt").is_file()
        assert (MOTMETRICS_DATA / name / "test.txt").is_file()


@pytest.fixture(scope="module")
def tud_metrics():
    evaluations = []
    for name, length in TUD_LENGTHS.items():
        gt = mot_format.read_results(MOTMETRICS_DATA / name / "gt.txt")  # MOT15 gt: 10-column layout
        trk = mot_format.read_results(MOTMETRICS_DATA / name / "test.txt")
        evaluations.append(evaluate_sequence(name, gt, trk, length, benchmark="MOT15"))
    return summarize_sequences(evaluations)


# EVALUATION.md: official MOTChallenge devkit numbers (percent, 1 decimal). HOTA: TrackEval's own
# file pipeline (MotChallenge2DBox, BENCHMARK=MOT15) prints 39.140 and 39.785 (unrounded
# 39.78490...); EVALUATION.md's "39.79" is that 39.785 rounded half-up, so HOTA is checked at
# TrackEval's printed 3 decimals.
DEVKIT = {
    "TUD-Campus": dict(MOTA=52.6, IDF1=55.8, Rcll=58.2, Prcn=94.1, MOTP=72.3, FP=13, FN=150, IDs=7, FM=7,
                       MT=1, PT=6, ML=1, HOTA=39.140),
    "TUD-Stadtmitte": dict(MOTA=56.4, IDF1=64.5, Rcll=60.9, Prcn=94.0, MOTP=65.4, FP=45, FN=452, IDs=7, FM=6,
                           MT=5, PT=4, ML=1, HOTA=39.785),
}


@pytest.mark.parametrize("name", list(DEVKIT))
def test_tud_reproduces_devkit_and_trackeval(tud_metrics, name):
    got = tud_metrics["sequences"][name]
    want = DEVKIT[name]
    for key in ("MOTA", "IDF1", "Rcll", "Prcn", "MOTP"):
        assert round(100 * got[key], 1) == pytest.approx(want[key]), key
    for key in ("FP", "FN", "IDs", "FM", "MT", "PT", "ML"):
        assert got[key] == want[key] and isinstance(got[key], int), key
    assert round(100 * got["HOTA"], 3) == pytest.approx(want["HOTA"])
    assert got["num_frames"] == TUD_LENGTHS[name]


def test_tud_combined_sums_counts(tud_metrics):
    c = tud_metrics["combined"]
    assert c["FP"] == 13 + 45 and c["FN"] == 150 + 452 and c["IDs"] == 14 and c["num_frames"] == 250
    # num_gt = 359 + 1156 = 1515; MOTA = 1 - (602 + 58 + 14) / 1515 = 0.55512
    assert c["num_gt"] == 1515
    assert c["MOTA"] == pytest.approx(1 - (602 + 58 + 14) / 1515)
    # TrackEval's file pipeline on both sequences prints COMBINED HOTA 39.996, IDF1 62.430
    assert round(100 * c["HOTA"], 3) == pytest.approx(39.996)
    assert round(100 * c["IDF1"], 3) == pytest.approx(62.430)


def test_format_table_prints_percent_one_decimal(tud_metrics):
    text = format_table(tud_metrics)
    campus = next(line for line in text.splitlines() if line.startswith("TUD-Campus"))
    assert "52.6" in campus and "55.8" in campus and "39.1" in campus
    assert text.splitlines()[-1].startswith("COMBINED")


# --------------------------------------------------------------------------- MOT17 preprocessing

A = (0, 0, 10, 20)
B = (100, 0, 10, 20)
C = (200, 0, 10, 20)


def test_tracker_box_on_static_person_is_removed_not_fp():
    gt = [gt_row(1, 1, A), gt_row(1, 2, B, cls=7)]
    trk = [trk_row(1, 10, A), trk_row(1, 11, B)]
    ev, m = score(gt, trk, 1)
    # box on the class-7 person is dropped before scoring: 1 TP, no FP; the class-7 gt is not a miss
    assert (m["TP"], m["FP"], m["FN"], m["num_predictions"], m["num_gt"]) == (1, 0, 0, 1, 1)
    assert m["MOTA"] == 1.0 and ev.num_tracker_removed == 1 and ev.num_gt_ignored == 1
    # MOT15 (no preprocessing): the class column means nothing, both gt rows count and both match
    _, m15 = score(gt, trk, 1, benchmark="MOT15")
    assert (m15["TP"], m15["FP"], m15["FN"]) == (2, 0, 0)


def test_distractor_removal_needs_iou_half_and_is_one_to_one():
    cfg = EvalConfig()
    gt = np.asarray([gt_row(1, 2, (0, 0, 10, 10), cls=8)], float)
    # [0,0,10,4]: inter 40, union 100 -> IoU 0.4 < 0.5: kept; [0,0,10,6]: IoU 0.6: matched
    trk = np.asarray([trk_row(1, 1, (0, 0, 10, 4)), trk_row(1, 2, (0, 0, 10, 6)), trk_row(1, 3, (0, 0, 10, 9))], float)
    # Hungarian: one gt box takes one tracker box, the best IoU (0.9, id 3); the IoU-0.6 box stays
    assert distractor_tracker_mask(gt, trk, cfg).tolist() == [False, False, True]
    _, m = score(gt.tolist(), trk.tolist(), 1)
    assert (m["FP"], m["num_predictions"], m["num_gt"]) == (2, 2, 0)


def test_consider_zero_rows_are_ignored():
    gt = [gt_row(1, 1, A, consider=0), gt_row(1, 2, B)]
    trk = [trk_row(1, 20, B)]
    _, m = score(gt, trk, 1)
    # the consider=0 person is neither gt nor a miss: 1 gt, 1 TP
    assert (m["num_gt"], m["TP"], m["FN"], m["FP"]) == (1, 1, 0, 0)
    # TrackEval / devkit: only distractor CLASSES protect tracker boxes; a box on a consider=0
    # pedestrian is scored as a false positive
    _, m2 = score(gt, trk + [trk_row(1, 21, A)], 1)
    assert (m2["TP"], m2["FP"]) == (1, 1)


# --------------------------------------------------------------------------- every frame counted


def test_frames_without_tracker_output_count_as_misses():
    gt = [gt_row(f, 1, A) for f in (1, 2, 3)]
    trk = [trk_row(1, 5, A)]  # the tracker wrote nothing for frames 2 and 3
    _, m = score(gt, trk, 3)
    # FN = 2, MOTA = 1 - 2/3; an evaluator that loops over tracker frames only (FairMOT) reports 1.0
    assert (m["FN"], m["TP"], m["num_frames"]) == (2, 1, 3)
    assert m["MOTA"] == pytest.approx(1 / 3)
    assert (m["MT"], m["PT"], m["ML"]) == (0, 1, 0)  # tracked 1 of 3 frames = 33 %: partially tracked

def test_tracker_boxes_after_last_gt_frame_are_false_positives():
    gt = [gt_row(1, 1, A)]
    trk = [trk_row(1, 5, A), trk_row(4, 5, A)]  # frame 4 < seq_length 4 holds no gt
    _, m = score(gt, trk, 4)
    assert (m["TP"], m["FP"], m["num_frames"]) == (1, 1, 4)


def test_bad_rows_raise_naming_the_sequence():
    gt = [gt_row(1, 1, A)]
    with pytest.raises(ValueError, match="S results: row 1 has frame 5 outside 1..3"):
        score(gt, [trk_row(5, 1, A)], 3)
    with pytest.raises(ValueError, match="S results: frame 1 has id 7 more than once"):
        score(gt, [trk_row(1, 7, A), trk_row(1, 7, B)], 1)
    with pytest.raises(ValueError, match="unknown benchmark"):
        score(gt, [], 1, benchmark="MOT99")


# --------------------------------------------------------------------------- combined = summed counts


def test_combined_sums_counts_instead_of_averaging_ratios():
    # seq X: 1 gt box in 1 frame, tracked exactly -> MOTA 1, IDF1 1, HOTA 1
    x = evaluate_sequence("X", np.asarray([gt_row(1, 1, A)], float), np.asarray([trk_row(1, 1, A)], float), 1,
                          benchmark="MOT17")
    # seq Y: 1 person over 9 frames, no output -> 9 FN, MOTA 0, IDF1 0, HOTA 0
    y = evaluate_sequence("Y", np.asarray([gt_row(f, 1, A) for f in range(1, 10)], float), np.zeros((0, 10)), 9,
                          benchmark="MOT17")
    m = summarize_sequences([x, y])
    assert m["sequences"]["X"]["MOTA"] == 1.0 and m["sequences"]["Y"]["MOTA"] == 0.0
    c = m["combined"]
    # MOTA = 1 - (FN 9 + FP 0 + IDs 0) / 10 gt = 0.1 (mean of ratios would be 0.5)
    assert c["MOTA"] == pytest.approx(0.1)
    # IDF1 = 2 IDTP / (gt + predictions) = 2 * 1 / (10 + 1) = 0.1818
    assert c["IDF1"] == pytest.approx(2 / 11)
    # TrackEval: at every alpha TP 1, FN 9 -> DetA 0.1; AssA 1 -> HOTA = sqrt(0.1) = 0.3162
    assert c["DetA"] == pytest.approx(0.1) and c["HOTA"] == pytest.approx(np.sqrt(0.1))
    assert (c["FN"], c["num_gt"], c["num_frames"]) == (9, 10, 10)


def test_empty_sequence_gives_none_not_nan():
    ev = evaluate_sequence("E", np.zeros((0, 9)), np.zeros((0, 10)), 2, benchmark="MOT17")
    m = summarize_sequences([ev])["sequences"]["E"]
    assert m["MOTA"] is None and m["FP"] == 0 and m["num_frames"] == 2


# --------------------------------------------------------------------------- files, half split


def _write_seq(root: Path, name: str, gt: list, seq_length: int) -> None:
    seq = root / "gt" / name
    (seq / "gt").mkdir(parents=True)
    mot_format.write_seqinfo(seq, mot_format.SeqInfo(name, 10.0, seq_length, 64, 48))
    mot_format.write_gt(seq / "gt" / "gt.txt", np.asarray(gt, float))


def test_half_val_scores_renumbered_val_frames_only(tmp_path):
    # N = 6 frames: val half = frames 6//2+2 = 5 .. 6, renumbered 1..2
    _write_seq(tmp_path, "S", [gt_row(f, 1, A) for f in range(1, 7)], 6)
    (tmp_path / "res").mkdir()
    mot_format.write_results(tmp_path / "res" / "S.txt", np.asarray([trk_row(1, 3, A), trk_row(2, 3, A)]))
    m = evaluate_mot_files(tmp_path / "gt", tmp_path / "res", benchmark="MOT17", half="val")
    s = m["sequences"]["S"]
    assert (s["TP"], s["FN"], s["FP"], s["num_frames"], s["MOTA"]) == (2, 0, 0, 2, 1.0)
    full = evaluate_mot_files(tmp_path / "gt", tmp_path / "res", benchmark="MOT17")["sequences"]["S"]
    assert (full["TP"], full["FN"], full["num_frames"]) == (2, 4, 6)
    # results still in original numbering (frames 5, 6) are refused for --half val
    mot_format.write_results(tmp_path / "res" / "S.txt", np.asarray([trk_row(5, 3, A), trk_row(6, 3, A)]))
    with pytest.raises(ValueError, match="renumbered"):
        evaluate_mot_files(tmp_path / "gt", tmp_path / "res", benchmark="MOT17", half="val")


def test_missing_tracker_file_is_an_error(tmp_path):
    _write_seq(tmp_path, "S", [gt_row(1, 1, A)], 1)
    (tmp_path / "res").mkdir()
    with pytest.raises(FileNotFoundError, match="S.txt"):
        evaluate_mot_files(tmp_path / "gt", tmp_path / "res", benchmark="MOT17")


# --------------------------------------------------------------------------- cross-check with TrackEval's own pipeline


def _synthetic_mot17(rng: np.random.Generator, seq_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Walkers (class 1), a static person (class 7), a consider=0 pedestrian, and a noisy tracker
    that also boxes the distractors, drops some frames, swaps ids once and adds false positives."""
    gt, trk = [], []
    for tid in range(1, 6):
        x0, y0, vx = rng.uniform(0, 400), rng.uniform(0, 200), rng.uniform(-3, 3)
        for f in range(1, seq_length + 1):
            box = (x0 + vx * f, y0, 30.0, 80.0)
            gt.append(gt_row(f, tid, box))
            if rng.random() < 0.85:  # tracker misses 15 %
                jitter = rng.normal(0, 3, 4) * [1, 1, 0.3, 0.3]
                out_id = tid + 100 if (tid == 2 and f > seq_length // 2) else tid + 10  # one id switch
                trk.append(trk_row(f, out_id, tuple(np.asarray(box) + jitter)))
    for f in range(1, seq_length + 1):
        gt.append(gt_row(f, 50, (600, 300, 30, 80), consider=0, cls=7))  # static person
        gt.append(gt_row(f, 51, (700, 300, 30, 80), consider=0, cls=1))  # ignored pedestrian
        trk.append(trk_row(f, 90, (601, 301, 30, 80)))  # on the static person: removed
        trk.append(trk_row(f, 91, (701, 299, 30, 80)))  # on the ignored pedestrian: a false positive
        if rng.random() < 0.3:
            trk.append(trk_row(f, 200 + f, tuple(rng.uniform(0, 500, 2)) + (30.0, 80.0)))
    frames_with_output = rng.random(seq_length) > 0.1  # some frames have no tracker output at all
    trk = [r for r in trk if frames_with_output[int(r[0]) - 1]]
    return np.asarray(gt, float), np.asarray(trk, float)


def test_matches_trackeval_file_pipeline_on_mot17_with_distractors(tmp_path):
    import trackeval

    rng = np.random.default_rng(0)
    seq_length = 30
    gt, trk = _synthetic_mot17(rng, seq_length)
    seq = tmp_path / "gt" / "SYN-01"
    (seq / "gt").mkdir(parents=True)
    mot_format.write_seqinfo(seq, mot_format.SeqInfo("SYN-01", 10.0, seq_length, 1920, 1080))
    mot_format.write_gt(seq / "gt" / "gt.txt", gt)
    (tmp_path / "trk" / "t" / "data").mkdir(parents=True)
    mot_format.write_results(tmp_path / "trk" / "t" / "data" / "SYN-01.txt", trk)
    (tmp_path / "seqmap.txt").write_text("name\nSYN-01\n")
    evaluator = trackeval.Evaluator({"USE_PARALLEL": False, "PRINT_RESULTS": False, "PRINT_CONFIG": False,
                                     "OUTPUT_SUMMARY": False, "OUTPUT_DETAILED": False, "PLOT_CURVES": False,
                                     "TIME_PROGRESS": False, "DISPLAY_LESS_PROGRESS": True})
    dataset = trackeval.datasets.MotChallenge2DBox({
        "GT_FOLDER": str(tmp_path / "gt"), "TRACKERS_FOLDER": str(tmp_path / "trk"), "BENCHMARK": "MOT17",
        "SEQMAP_FILE": str(tmp_path / "seqmap.txt"), "SKIP_SPLIT_FOL": True, "TRACKERS_TO_EVAL": ["t"],
        "PRINT_CONFIG": False})
    metrics_list = [trackeval.metrics.HOTA(), trackeval.metrics.CLEAR({"PRINT_CONFIG": False}),
                    trackeval.metrics.Identity({"PRINT_CONFIG": False})]
    res, _ = evaluator.evaluate([dataset], metrics_list)
    ref = res["MotChallenge2DBox"]["t"]["SYN-01"]["pedestrian"]

    ev = evaluate_sequence("SYN-01", mot_format.read_gt(seq / "gt" / "gt.txt"),
                           mot_format.read_results(tmp_path / "trk" / "t" / "data" / "SYN-01.txt"),
                           seq_length, benchmark="MOT17")
    ours = summarize_sequences([ev])["sequences"]["SYN-01"]
    assert ev.num_tracker_removed == int(np.sum(trk[:, 1] == 90))  # every box on the static person
    assert ours["FP"] == ref["CLEAR"]["CLR_FP"] and ours["FN"] == ref["CLEAR"]["CLR_FN"]
    assert ours["IDs"] == ref["CLEAR"]["IDSW"] and ours["TP"] == ref["CLEAR"]["CLR_TP"]
    assert ours["MOTA"] == pytest.approx(ref["CLEAR"]["MOTA"])
    assert ours["IDF1"] == pytest.approx(ref["Identity"]["IDF1"])
    assert ours["HOTA"] == pytest.approx(float(np.mean(ref["HOTA"]["HOTA"])))
    assert ours["num_frames"] == seq_length
