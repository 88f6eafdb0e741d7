"""`jobs.inspect_world` reads the generated world back through the readers; `jobs.demo` smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from jobs.inspect_world import format_summary, images_per_identity, summarize_world


def test_readers_see_exactly_what_the_generator_wrote(tiny_world: Path):
    counts = json.loads((tiny_world / "world.json").read_text())["counts"]
    summary = summarize_world(tiny_world)
    for split in ("train", "val"):
        ch = summary[f"crowdhuman/{split}"]
        assert ch["images"] == counts[f"crowdhuman/{split}/images"]
        assert ch["boxes"] == counts[f"crowdhuman/{split}/persons"]
        assert ch["skipped_records"] == ch["boxes_dropped"] == ch["missing_images"] == 0
        # COCO: person-free images are dropped by the reader, every person box is kept
        assert summary[f"coco/{split}2017"]["boxes"] == counts[f"coco/{split}/persons"]
        assert summary[f"coco/{split}2017"]["images"] <= counts[f"coco/{split}/images"]
    assert summary["kinetics/train"]["clips"] == counts["kinetics/train/clips"]
    assert summary["kinetics/train"]["frames"] > 0
    seqs = summary["mot17/train"]
    assert len(seqs) == counts["mot17/sequences"]
    assert sum(s["frames"] for s in seqs.values()) == counts["mot17/frames"]
    ps = summary["person_search"]
    assert (ps["images"], ps["queries"]) == (counts["person_search/images"], counts["person_search/queries"])
    for split in ("train", "val", "test"):
        assert summary[f"person_search/{split}"]["images"] == counts[f"person_search/{split}/images"]
    assert summary["person_search/val"]["queries"] == counts["person_search/val/queries"] > 0
    assert summary["person_search/test"]["queries"] == ps["queries"] and summary["person_search/train"]["queries"] == 0
    assert sum(summary[f"person_search/{s}"]["identities"] for s in ("train", "val", "test")) == ps["identities"]
    assert summary["market1501/bounding_box_train"]["crops"] == counts["market1501/bounding_box_train"]
    assert "crowdhuman/train" in format_summary(summary) and "person_search/val" in format_summary(summary)


def test_images_per_identity_counts_each_image_once_and_skips_unlabelled_boxes():
    """Id-free stage 1's assumption, read from the data: identity 1 in 3 images (twice in the last), 2 and 3 in
    one each, the unlabelled box (-1) nobody's: mean 5 / 3."""
    images = [SimpleNamespace(pids=[1, 2]), SimpleNamespace(pids=[1]), SimpleNamespace(pids=[1, 1, 3, -1])]
    assert images_per_identity(images) == {"images_per_identity": 1.7, "images_per_identity_range": [1, 3]}
    assert images_per_identity([SimpleNamespace(pids=[-1])])["images_per_identity"] is None


def test_inspect_world_on_an_empty_root_reports_nothing(tmp_path: Path):
    assert summarize_world(tmp_path) == {}


def test_demo_job_smoke(tmp_path: Path):
    """`python -m jobs.demo --skip-train`: generate + read back, from the shell."""
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "jobs.demo", "--out", str(out), "--skip-train",
                           "--world-preset", "tiny"],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[2/4] reading it back" in proc.stdout and "mot17/MOT17-SYN01-SDP" in proc.stdout
    summary = json.loads((out / "world_summary.json").read_text())
    assert summary["crowdhuman/train"]["images"] > 0


class _Query:
    galleries = {"10": [], "20": []}


def _demo_calls(monkeypatch, tmp_path: Path, argv: list[str]) -> tuple[list[list[str]], list[list[str]], dict]:
    """``jobs.demo.main(argv)`` with world generation, training and evaluation recorded instead of run."""
    from jobs import demo

    trained: list[list[str]] = []
    evaluated: list[list[str]] = []

    def fake_train(args):
        config = args.config
        trained.append([config, *args.overrides])
        return {"checkpoint": str(tmp_path / config / "checkpoint.pt"), "mlflow_run_id": "r", "mlflow_uri": "u"}

    monkeypatch.setattr(demo.generate_synth, "main", lambda args: None)
    monkeypatch.setattr(demo.inspect_world, "main", lambda argv: {})
    monkeypatch.setattr(demo.train, "main", fake_train)
    monkeypatch.setattr(demo.evaluate, "main", lambda argv: evaluated.append(list(argv)) or {})
    monkeypatch.setattr(demo, "read_manifest", lambda *a, **k: type("M", (), {"queries": [_Query()]})())
    return trained, evaluated, demo.main(["--out", str(tmp_path / "out"), *argv])


def test_demo_trains_the_teacher_first_and_distils_it_into_the_student(monkeypatch, tmp_path: Path):
    trained, evaluated, result = _demo_calls(monkeypatch, tmp_path, [])
    teacher = str(tmp_path / "demo_teacher" / "checkpoint.pt")
    assert [t[0] for t in trained] == ["demo_teacher", "demo"]
    assert f"teacher.checkpoint={teacher}" in trained[1] and result["teacher"] == teacher
    reid = next(argv for argv in evaluated if argv[0] == "reid")
    assert reid[reid.index("--teacher-checkpoint") + 1] == teacher  # the teacher's row beside the student's
    assert [argv[0] for argv in evaluated] == ["reid", "person-search", "mot"]


def test_demo_idf_and_a_given_teacher_train_no_teacher(monkeypatch, tmp_path: Path):
    trained, evaluated, result = _demo_calls(monkeypatch, tmp_path, ["--config", "demo_idf"])
    assert [t[0] for t in trained] == ["demo_idf"] and result["teacher"] is None
    assert "--teacher-checkpoint" not in evaluated[0]
    given = tmp_path / "t.pt"
    trained, evaluated, result = _demo_calls(monkeypatch, tmp_path, ["--set", f"teacher.checkpoint={given}"])
    assert [t[0] for t in trained] == ["demo"] and result["teacher"] == str(given)
