"""The README's demo: the main job end to end on the embedded synthetic world.

Stages (each prints what it did):
  1. generate the tiny synthetic crowd world in the real dataset formats;
  2. read every format back through kdtrack's readers and print a summary;
  3. train on Ray Train, logging to MLflow (``<out>/mlflow.db``): with the default
     ``demo`` preset (KD) first the Re-ID teacher on the world's Market-1501-style
     crops (``--teacher-config``), then the tiny student distilled from it on images
     without identity labels; ``--config demo_idf`` trains the id-free recipe
     (IDF stage 1) instead, with no teacher;
  4. evaluate the checkpoint: oracle-box re-identification against a random-init
     student, two colour histograms (the whole box, its centre) and the teacher,
     person search on the synthetic CUHK-SYSU-style set, then MOT17-style tracking
     on the val halves (one Ray task per sequence), logged into the training run;
     the MOT table is the last thing printed.

    python -m jobs.demo --out runs/demo [--config demo | demo_idf] [--seed 0] [--set section.field=value]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from jobs import evaluate, generate_synth, inspect_world, train
from kdtrack.config import load_config
from kdtrack.formats.person_search import read_manifest
from kdtrack.recipes import recipe_of


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output folder (world, runs, metrics)")
    parser.add_argument("--world-preset", default="tiny", help="synthetic world preset")
    parser.add_argument("--config", default="demo", help="training preset (demo: KD; demo_idf: IDF stage 1)")
    parser.add_argument("--teacher-config", default="demo_teacher",
                        help="the Re-ID teacher's preset, trained first when the training preset distils (KD) "
                             "and no --set teacher.checkpoint=... names one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="training config overrides")
    parser.add_argument("--skip-train", action="store_true", help="stop after reading the world back")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    world = out / "world"
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")

    t0 = time.perf_counter()
    print(f"[1/4] generating the '{args.world_preset}' synthetic world into {world}", flush=True)
    generate_synth.main(generate_synth.get_args_parser().parse_args(
        ["--preset", args.world_preset, "--out", str(world), "--seed", str(args.seed)]))

    print("[2/4] reading it back through the real-format readers", flush=True)
    summary = inspect_world.main(["--root", str(world), "--json", str(out / "world_summary.json")])
    if args.skip_train:
        return {"world": str(world), "summary": summary}

    mlflow_uri = f"sqlite:///{out / 'mlflow.db'}"
    overrides = list(args.overrides)
    cfg = load_config(args.config, overrides)
    teacher = cfg.teacher.checkpoint or None
    if recipe_of(cfg).distils and not (teacher or cfg.teacher.embeddings):
        print(f"[3/4] training the Re-ID teacher ({args.teacher_config} preset) on Ray Train", flush=True)
        taught = train.main(train.get_args_parser().parse_args(
            ["--config", args.teacher_config, "--data-root", str(world), "--out", str(out / "teacher"),
             "--mlflow-uri", mlflow_uri, "--set", f"train.seed={args.seed}"]))
        teacher = taught["checkpoint"]
        overrides.append(f"teacher.checkpoint={teacher}")
    print(f"[3/4] training the student ({args.config} preset) on Ray Train", flush=True)
    train_args = ["--config", args.config, "--data-root", str(world), "--out", str(out / "train"),
                  "--mlflow-uri", mlflow_uri, "--set", f"train.seed={args.seed}"]
    for item in overrides:
        train_args += ["--set", item]
    trained = train.main(train.get_args_parser().parse_args(train_args))
    checkpoint, run_id = trained["checkpoint"], trained["mlflow_run_id"]
    mlflow_args = ["--mlflow-uri", trained["mlflow_uri"]] + (["--run-id", run_id] if run_id else [])

    print("[4/4] evaluating the checkpoint", flush=True)
    print("  oracle-box re-identification (identity embedding at ground-truth boxes; random-init student, "
          "colour histograms of the whole box and of its centre" + (", the teacher" if teacher else "")
          + " scored on the same boxes):", flush=True)
    reid = evaluate.main(["reid", "--checkpoint", checkpoint, "--world", str(world),
                          "--out", str(out / "eval" / "reid.json"), *mlflow_args,
                          *(["--teacher-checkpoint", teacher] if teacher else [])])
    manifest = world / "person_search" / "manifest.json"
    gallery_size = max(int(size) for q in read_manifest(manifest, check_images=False).queries for size in q.galleries)
    print(f"  person search (synthetic CUHK-SYSU-style set, gallery size {gallery_size}, student embeddings):",
          flush=True)
    ps = evaluate.main(["person-search", "--checkpoint", checkpoint, "--manifest", str(manifest),
                        "--gallery-size", str(gallery_size),
                        "--out", str(out / "eval" / "person_search.json"), *mlflow_args])
    print("  MOT17-style tracking, val halves:", flush=True)
    mot = evaluate.main(["mot", "--checkpoint", checkpoint, "--data-root", str(world / "MOT17" / "train"),
                         "--half", "val", "--out", str(out / "eval" / "mot17_val.json"), *mlflow_args])
    print(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs under {out} "
          f"(MLflow: mlflow ui --backend-store-uri {trained['mlflow_uri']})", flush=True)
    return {"world": str(world), "summary": summary, "checkpoint": checkpoint, "teacher": teacher,
            "reid": reid, "person_search": ps, "mot": mot}


if __name__ == "__main__":
    main()
