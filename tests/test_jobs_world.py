"""`jobs.inspect_world` reads the generated world back through the readers; `jobs.demo` smoke run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jobs.inspect_world import format_summary, summarize_world


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
