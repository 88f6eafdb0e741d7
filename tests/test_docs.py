"""The documentation stays true to the code: the README's commands parse with the real argument parsers of
their jobs (presets and ``--set`` fields included), every relative link in the README and ``docs/`` resolves
(anchors too), and the project speaks of itself by what things are, never by a work-log number.

Nothing here trains or evaluates: a command is parsed, its config resolved, and that is all.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
import shlex
from pathlib import Path
from typing import Iterator

import pytest

from kdtrack.config import PRESET_DIR, load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SWEEP_DIR = ROOT / "tune" / "configs"
README_MAX_LINES = 300

# Markdown files whose relative links must resolve.
LINKED_DOCS = sorted([README, ROOT / "CHANGELOG.md", ROOT / "bench" / "README.md", *(ROOT / "docs").rglob("*.md")])

# Text the project writes about itself: history is told by date in CHANGELOG.md, never as a numbered
# work session or tracker ticket ("session" / "issue" followed by a number, with or without a separator).
WORK_LOG_NUMBER = re.compile(r"(?<![A-Za-z])(?:session|issue)s?[ _#-]{0,2}\d", re.IGNORECASE)
SCANNED_DIRS = ("tests", "kdtrack", "jobs", "bench", "tune", "data_pipelines", "docs", "scripts", ".ci")
SCANNED_ROOT_FILES = ("README.md", "CHANGELOG.md", "Makefile", "pyproject.toml")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cfg", ".ini", ".json", ""}


# --- the README's shell commands ------------------------------------------------------------------------


def fenced_shell_lines(text: str) -> Iterator[str]:
    """Each command line of the ```bash / ```sh blocks, continuation lines joined."""
    for block in re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, flags=re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if line.strip():
                yield line.strip()


def inline_commands(text: str) -> Iterator[str]:
    """Commands quoted inline (tables, prose): a code span that starts with one."""
    for span in re.findall(r"`([^`\n]+)`", text):
        if re.match(r"(?:python -m jobs\.\w+(?:\s|$)|python bench/\S+\.py|pytest \S)", span):
            yield span


class Command:
    """A README command line, tokenised: what it runs and with which arguments."""

    def __init__(self, line: str):
        self.line = line
        self.tokens = shlex.split(line, comments=True)

    def job(self) -> tuple[str, list[str]] | None:
        """``(module, argv)`` for ``... python -m jobs.X argv`` (also after ``ray job submit ... --``)."""
        for i, token in enumerate(self.tokens[:-1]):
            if token == "-m" and self.tokens[i + 1].startswith("jobs."):
                return self.tokens[i + 1], self.tokens[i + 2:]
        return None

    def script(self) -> str | None:
        """The file a ``python path.py`` or ``pytest path`` line runs."""
        for i, token in enumerate(self.tokens[:-1]):
            if (token.endswith("python") or token == "pytest") and not self.tokens[i + 1].startswith("-"):
                return self.tokens[i + 1]
        return None

    def make_target(self) -> str | None:
        if len(self.tokens) >= 2 and self.tokens[0] == "make":
            return self.tokens[1]
        return None


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace):
        super().__init__("parsed")
        self.namespace = namespace


def parse_job_args(module_name: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """The job's own parser on ``argv``: ``get_args_parser()`` where the job has one, else ``main(argv)``
    stopped the moment its parser returns (nothing after the parse runs)."""
    module = importlib.import_module(module_name)
    if hasattr(module, "get_args_parser"):
        parser = module.get_args_parser()
        return parser.parse_args(argv)
    real_parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(real_parse(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed) as parsed:
        module.main(argv)
    return parsed.value.namespace


def is_preset_name(value: str) -> bool:
    """A bare preset name, as opposed to a YAML path a user's run wrote (``runs/sweep/best_config.yaml``)."""
    return "/" not in value and not value.endswith((".yaml", ".yml"))


def check_config(module_name: str, ns: argparse.Namespace) -> None:
    """The preset a command names exists, and its ``--set`` fields resolve against it."""
    config = getattr(ns, "config", None)
    overrides = list(getattr(ns, "overrides", None) or [])
    if module_name == "jobs.tune":
        from tune.spec import load_sweep

        assert (SWEEP_DIR / f"{config}.yaml").is_file(), f"sweep preset {config!r} not in {SWEEP_DIR}"
        load_sweep(config, overrides, num_samples=ns.num_samples)
        return
    if config is not None and not is_preset_name(str(config)):
        return
    if config is not None:
        assert (PRESET_DIR / f"{config}.yaml").is_file(), f"preset {config!r} not in {PRESET_DIR}"
    if config is not None or overrides:
        load_config(config, overrides)


def readme_commands() -> list[str]:
    text = README.read_text()
    return [*fenced_shell_lines(text), *inline_commands(text)]


def make_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))


def test_readme_has_commands_of_every_kind():
    """The collection below sees the README's jobs, scripts and make targets (a parser change that found
    none would pass every check vacuously)."""
    commands = [Command(line) for line in readme_commands()]
    jobs = {c.job()[0] for c in commands if c.job()}
    assert {"jobs.train", "jobs.evaluate", "jobs.tune", "jobs.pseudo_label", "jobs.generate_synth"} <= jobs
    assert any(c.make_target() for c in commands)
    assert any(c.script() and c.script().startswith("bench/") for c in commands)


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_is_valid(line: str, monkeypatch: pytest.MonkeyPatch):
    command = Command(line)
    job = command.job()
    if job is not None:
        module_name, argv = job
        try:
            ns = parse_job_args(module_name, argv, monkeypatch)
        except SystemExit as exc:  # argparse's error exit: the message went to stderr
            pytest.fail(f"{module_name} rejects the README's arguments {argv} (exit {exc.code})")
        check_config(module_name, ns)
        return
    target = command.make_target()
    if target is not None:
        assert target in make_targets(), f"make {target}: no such target in the Makefile"
        return
    script = command.script()
    if script is not None and not script.startswith("-"):
        assert (ROOT / script).exists(), f"{line!r} runs {script}, which does not exist"


def test_readme_starts_with_the_two_setup_commands():
    """`.ci/run` runs `make test`, the README's test command: the first block is the two set-up commands."""
    first = next(fenced_shell_lines(README.read_text()), "")
    lines = list(fenced_shell_lines(README.read_text()))[:2]
    assert first.startswith("make demo")
    assert [line.split()[:2] for line in lines] == [["make", "demo"], ["make", "test"]]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; studies go to docs/results/, figures to bench/"


def test_doc_commands_name_real_jobs_and_presets():
    """Beyond the README, the guides' commands (which show optional flags as ``[...]``) at least name jobs
    that exist and presets that exist."""
    problems = []
    for path in LINKED_DOCS:
        for line in fenced_shell_lines(path.read_text()):
            for module_name in re.findall(r"-m (jobs\.\w+)", line):
                if importlib.util.find_spec(module_name) is None:
                    problems.append(f"{path.relative_to(ROOT)}: {module_name} does not exist")
            for name in re.findall(r"--config ([\w.-]+)(?=\s|$)", line):
                if is_preset_name(name) and not ((PRESET_DIR / f"{name}.yaml").is_file()
                                                  or (SWEEP_DIR / f"{name}.yaml").is_file()):
                    problems.append(f"{path.relative_to(ROOT)}: preset {name!r} does not exist")
    assert not problems, "\n".join(problems)


# --- links ----------------------------------------------------------------------------------------------


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to '-', repeats -1, -2."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    without_blocks = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", without_blocks, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def strip_code(markdown: str) -> str:
    """The text without fenced blocks and inline code spans, where brackets are code, not links."""
    markdown = re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", markdown)


def relative_links(markdown: str) -> Iterator[str]:
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", strip_code(markdown)):
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:
            yield target


def test_heading_anchors_follow_github():
    # "## Evaluate on MOT17, CUHK-SYSU, PRW" -> evaluate-on-mot17-cuhk-sysu-prw; a repeat gets "-1".
    assert heading_anchors("## Evaluate on MOT17, CUHK-SYSU, PRW\n## The `colour` row (x)\n## A\n## A\n") == {
        "evaluate-on-mot17-cuhk-sysu-prw", "the-colour-row-x", "a", "a-1"}


@pytest.mark.parametrize("path", LINKED_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path):
    broken = []
    for target in relative_links(path.read_text()):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: {linked} does not exist")
            continue
        if anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text()):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{path.relative_to(ROOT)}:\n" + "\n".join(broken)


# --- the project speaks of itself -----------------------------------------------------------------------


def scanned_files() -> Iterator[Path]:
    for name in SCANNED_ROOT_FILES:
        if (ROOT / name).is_file():
            yield ROOT / name
    for folder in SCANNED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix in TEXT_SUFFIXES:
                yield path


def test_work_log_pattern():
    # Each example is written as (word, rest) so that this file does not hold what it forbids.
    for word, rest in (("session", " 23"), ("Session", " 21:"), ("sessions", " 24-25"), ("issue", " 7"),
                       ("Issue", " 12:"), ("issues", " 9 and 10"), ("session", "-27"), ("test_issue", "7_learns"),
                       ("issue", " #36")):
        assert WORK_LOG_NUMBER.search(word + rest), word + rest
    for fine in ("the MLflow session", "t" "issue" " 7", "an issue with 2 cores", "sessions of training"):
        assert not WORK_LOG_NUMBER.search(fine), fine


def test_no_work_log_numbers_in_the_repo():
    hits = []
    for path in scanned_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            match = WORK_LOG_NUMBER.search(line)
            if match:
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not hits, ("say what it is (the measurement, its date, the command) instead of a work-log number; "
                      "history goes to CHANGELOG.md:\n" + "\n".join(hits))
