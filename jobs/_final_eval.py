"""A sweep's final evaluation (``tune.final_eval``): each recipe's best trial, picked on the validation objective,
scored once on the test reports by ``jobs.evaluate`` and logged into that trial's own MLflow run.

Picking on the validation split and reporting on the test split is the protocol the sweep exists for: no test
number takes part in the choice. The checkpoint is the trial's last one (for a trial ASHA stopped, the one at
its stop: the iteration is recorded beside the numbers). ``reid``: oracle-box re-ID on the person-search test
split and the MOT17 val halves, with the random-init and colour baselines on the same boxes (``jobs.evaluate
reid``; person search alone when the MOT17 val halves were the objective); ``mot``: tracking on the MOT17 val
halves, MOTA / IDF1 / HOTA (``jobs.evaluate mot --half val``).
``jobs.compare`` reads what they log into its final columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from kdtrack.config import Config, ConfigError

FINAL_DIR = "final"  # <sweep out>/final/<recipe>/{reid,mot}.json
MOT_TRAIN = Path("MOT17") / "train"
REID_SPLIT = "test"


def check_final_inputs(cfg: Config, evaluations: Sequence[str], source: str) -> None:
    """Before any trial: the data root holds what the final evaluations read (a ConfigError naming it), so a
    long sweep does not end on a missing test split."""
    from kdtrack.metrics.reid_probe import load_reid_box_sets

    root = Path(cfg.data.root)
    try:
        if "reid" in evaluations:
            load_reid_box_sets(root, cfg.eval, split=REID_SPLIT)
        if "mot" in evaluations:
            from jobs._mot_eval import mot_sequence_dirs

            mot_sequence_dirs(root / MOT_TRAIN)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{source}: tune.final_eval {list(evaluations)} reads the test reports under "
                          f"data.root: {exc}") from None


def last_checkpoint(storage: Any, run_name: str) -> tuple[str, int] | None:
    """``(file, iteration)`` of the newest checkpoint of Ray Train run ``run_name`` under the sweep's storage (a
    local path or an object-store URI, which ``jobs.evaluate`` fetches), or None."""
    from jobs._resume import latest_checkpoint_config
    from kdtrack.checkpoint import CHECKPOINT_NAME

    found = latest_checkpoint_config(storage, run_name)
    return (f"{found[0]}/{CHECKPOINT_NAME}", int(found[1].get("iteration", -1))) if found else None


def evaluate_best_trials(best: dict[str, dict[str, Any]], checkpoints: dict[str, tuple[str, int] | None], cfg: Config,
                         evaluations: Sequence[str], out: Path, mlflow_uri: str, experiment: str,
                         protocols: Sequence[str] = ("person_search", "mot")) -> dict[str, Any]:
    """Run ``evaluations`` on each recipe's best trial's checkpoint (``checkpoints``: trial id -> its newest
    checkpoint, :func:`last_checkpoint`), logging into the trial's MLflow run; ``reid`` scores ``protocols``
    (not the MOT17 val halves when they were the sweep's objective, ``tune.spec.held_out_protocols``).
    One recipe's failure (no checkpoint kept, a broken file) is recorded under its name and the others go on:
    the sweep's own results are already written."""
    from jobs import evaluate

    root = Path(cfg.data.root)
    record: dict[str, Any] = {}
    for recipe, trial in sorted(best.items()):
        found = checkpoints.get(trial["trial_id"])
        entry: dict[str, Any] = {"trial_id": trial["trial_id"], "mlflow_run_id": trial.get("mlflow_run_id", "")}
        record[recipe] = entry
        if found is None:
            entry["error"] = "the trial kept no checkpoint"
            print(f"final evaluation of {recipe} (trial {trial['trial_id']}): {entry['error']}", flush=True)
            continue
        checkpoint, entry["iteration"] = found
        entry["checkpoint"] = checkpoint
        folder = out / FINAL_DIR / recipe
        folder.mkdir(parents=True, exist_ok=True)
        logging = ["--mlflow-uri", mlflow_uri, "--experiment", experiment] if mlflow_uri else []
        if entry["mlflow_run_id"]:
            logging += ["--run-id", entry["mlflow_run_id"]]
        print(f"final evaluation of {recipe}: trial {trial['trial_id']}, its checkpoint at iteration "
              f"{entry['iteration']}", flush=True)
        try:
            if "reid" in evaluations:
                reid = evaluate.main(["reid", "--checkpoint", checkpoint, "--world", str(root), "--split", REID_SPLIT,
                                      "--protocols", ",".join(protocols), "--out", str(folder / "reid.json"),
                                      *logging])
                entry["reid"] = {protocol: {name: row.get("mAP") for name, row in reid[protocol].items()}
                                 for protocol in ("person_search", "mot") if protocol in reid}
            if "mot" in evaluations:
                mot = evaluate.main(["mot", "--checkpoint", checkpoint, "--data-root", str(root / MOT_TRAIN),
                                     "--half", "val", "--no-progress", "--out", str(folder / "mot.json"), *logging])
                combined = mot.get("combined", {})
                entry["mot"] = {k: combined[k] for k in ("MOTA", "IDF1", "HOTA") if k in combined}
        except (Exception, SystemExit) as exc:  # recorded, not raised: the sweep's results stand without it
            # (jobs.evaluate reid stops with SystemExit naming a bad input file)
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            print(f"final evaluation of {recipe} failed: {entry['error']}", flush=True)
    return record
