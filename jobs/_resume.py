"""Resume policy: a rerun over the same storage and run name resumes from the newest Ray Train checkpoint;
changed training fields are refused (``train.resume_policy=strict``, naming them) or noted (``force``).
The driver reads the checkpoint's ``config.json`` (no weights, any pyarrow filesystem) before any worker
starts; the worker checks the loaded state again for checkpoints without one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdtrack.config import Config, ConfigError

if TYPE_CHECKING:
    from jobs._mlflow_train import MlflowSink
    from jobs._storage import Storage


def resume_change_lines(changes: list[tuple[str, Any, Any]]) -> str:
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)


def resume_verdict(saved_config: Config | dict, cfg: Config, refused: str) -> str:
    """The training fields changed since a checkpoint, as text ("" = none). Under
    ``train.resume_policy=strict`` a change is a ConfigError (``refused`` says which checkpoint);
    under ``force`` it is printed and returned, for MLflow."""
    from kdtrack.checkpoint import resume_changes

    text = resume_change_lines(resume_changes(saved_config, cfg))
    if not text:
        return ""
    if cfg.train.resume_policy == "strict":
        raise ConfigError(f"{refused} but these training fields changed: {text}; start a new run (another --out "
                          f"or --set train.run_name=...), or pass --resume-policy force to continue the "
                          f"checkpoint's optimiser and schedule state under the new values")
    print(f"warning: resuming with changed fields (train.resume_policy=force): {text}", flush=True)
    return text


def note_resume_changes(state: dict[str, Any] | None, cfg: Config, sink: MlflowSink | None) -> None:
    """In the worker, on a resume: :func:`resume_verdict` (the driver checked first, from the checkpoint's
    config.json; this is the backstop for checkpoints without one), the changes tagged in MLflow."""
    if state is None:
        return
    text = resume_verdict(state["config"], cfg, f"run '{cfg.train.run_name}' resumes from iteration "
                                                 f"{state.get('iteration', '?')}")
    if text and sink is not None:
        sink.tag("kdtrack.resume_changed", text[:5000])


def check_resume(cfg: Config, storage: Storage) -> bool:
    """On the driver, before any worker starts: the newest checkpoint of ``train.run_name`` under ``storage``
    (``jobs._storage.resolve_storage``: a local folder or an object store) is the one Ray Train will resume from; :func:`resume_verdict` on its config.
    Returns whether the run resumes."""
    from kdtrack.checkpoint import CONFIG_SIDECAR

    found = latest_checkpoint_config(storage, cfg.train.run_name)
    if found is not None:
        where, saved = found
        resume_verdict(saved["config"], cfg, f"{where}/{CONFIG_SIDECAR}: run '{cfg.train.run_name}' resumes from "
                                             f"iteration {saved.get('iteration', '?')}")
    return found is not None


def latest_checkpoint_config(storage: Storage, run_name: str) -> tuple[str, dict[str, Any]] | None:
    """``(checkpoint folder, its config.json)`` of the newest Ray Train checkpoint of ``run_name`` (Ray names
    them checkpoint_<timestamp>), or None. Works on local paths and object-store URIs (``jobs._storage``)."""
    import json

    import pyarrow.fs as pafs

    from kdtrack.checkpoint import CONFIG_SIDECAR

    fs, root = storage.filesystem, storage.path
    run_dir = f"{root.rstrip('/')}/{run_name}"
    try:
        infos = fs.get_file_info(pafs.FileSelector(run_dir, allow_not_found=True))
    except OSError:
        return None
    folders = sorted(i.path for i in infos if i.type == pafs.FileType.Directory
                     and i.base_name.startswith("checkpoint_"))
    for folder in reversed(folders):
        try:
            with fs.open_input_stream(f"{folder}/{CONFIG_SIDECAR}") as handle:
                return storage.uri_of(folder), json.loads(handle.read())
        except (OSError, ValueError):  # an older checkpoint without config.json (the worker checks those)
            continue
    return None
