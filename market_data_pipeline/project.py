"""The files mdp ships and the project folder ``mdp init`` writes.

The defaults are package data in ``market_data_pipeline/defaults/``, laid out as a project::

    configs/streaming.yaml       the config used when no configs/streaming.yaml is in the
                                 working directory (and none is given with --config)
    configs/rules.yaml           the rules adapter's rules (also when a config names none)
    configs/datasets.yaml        the registry of the shipped datasets
    datasets/                    the shipped samples of real market data (README.md: provenance)
    models/example_model.joblib  the example scikit-learn model, pinned by its SHA-256
    templates/datasets.yaml      the (empty) registry ``mdp init`` writes for the user's files

The shipped config names no rules file and no dataset registry (so a copy of it anywhere
still runs: unset means the shipped rules, and the shipped registry only); its example model is
named by a path relative to it. A relative path in a config resolves against the folder of the
config file (:mod:`market_data_core.config`). ``mdp init`` copies the config with its
``file: "rules.yaml"`` and ``datasets_file: "datasets.yaml"`` lines switched on, so the project
uses its own editable copies. mdp reads these files by path: it must be installed unpacked (as
pip does), not run from a zip file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from market_data_core.config import AppConfig
from market_data_core.errors import ConfigError

__all__ = [
    "DEFAULTS_DIR",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_RULES_FILE",
    "EXAMPLE_MODEL_FILE",
    "PROJECT_FILES",
    "SHIPPED_DATASETS_FILE",
    "ProjectFile",
    "dataset_registries",
    "init_project",
    "rules_file",
]

DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"
DEFAULT_CONFIG_FILE = DEFAULTS_DIR / "configs" / "streaming.yaml"
DEFAULT_RULES_FILE = DEFAULTS_DIR / "configs" / "rules.yaml"
SHIPPED_DATASETS_FILE = DEFAULTS_DIR / "configs" / "datasets.yaml"
EXAMPLE_MODEL_FILE = DEFAULTS_DIR / "models" / "example_model.joblib"


@dataclass(frozen=True, slots=True)
class ProjectFile:
    """One file ``mdp init`` writes: ``path`` relative to the project folder, copied from
    ``source`` with the commented-out ``switch_on`` lines (each exactly once in it) switched on;
    ``what`` is the line printed beside it."""

    path: str
    source: Path
    what: str
    switch_on: tuple[str, ...] = ()

    def content(self) -> bytes:
        """The bytes to write."""
        data = self.source.read_bytes()
        for line in self.switch_on:
            commented = line.replace("# ", "", 1)
            if data.count(f"{line}\n".encode()) != 1:
                raise RuntimeError(f"{self.source}: expected the line {line!r} exactly once")
            data = data.replace(f"{line}\n".encode(), f"{commented}\n".encode())
        return data


PROJECT_FILES = (
    ProjectFile(
        "configs/streaming.yaml",
        DEFAULT_CONFIG_FILE,
        "servers, windows, features, inference (the shipped defaults)",
        switch_on=('    # datasets_file: "datasets.yaml"', '      # file: "rules.yaml"'),
    ),
    ProjectFile("configs/rules.yaml", DEFAULT_RULES_FILE, "the rules adapter's rules"),
    ProjectFile(
        "configs/datasets.yaml",
        DEFAULTS_DIR / "templates" / "datasets.yaml",
        "a registry for your own data files (an example inside)",
    ),
    ProjectFile(
        "models/example_model.joblib",
        EXAMPLE_MODEL_FILE,
        "the example scikit-learn model (--adapter sklearn)",
    ),
)


def rules_file(config: AppConfig, base_dir: Path | None = None) -> Path:
    """The rules file of ``config``: ``inference.adapters.rules.file`` (absolute once loaded
    from a file; a relative one, from a config built in code, against ``base_dir`` or else the
    working directory), or the shipped rules when unset."""
    given = config.inference.adapters.rules.file
    if given is None:
        return DEFAULT_RULES_FILE
    path = Path(given)
    return path if path.is_absolute() or base_dir is None else base_dir / path


def dataset_registries(config: AppConfig, given: Path | None = None) -> list[Path]:
    """The registries a dataset name is looked up in, in order: ``given`` (``--datasets``,
    relative to the working directory) or else ``producers.replay.datasets_file``, then the
    shipped registry."""
    first = given if given is not None else config.producers.replay.datasets_file
    return ([Path(first)] if first else []) + [SHIPPED_DATASETS_FILE]


def init_project(folder: Path, *, force: bool = False) -> list[ProjectFile]:
    """Write :data:`PROJECT_FILES` into ``folder`` (created if missing); returns them.

    Nothing is written when one of them exists, unless ``force`` (then they are overwritten);
    other files in ``folder`` are never touched. Raises ``ConfigError`` (one line) when
    ``folder`` is a file, a target exists without ``force`` or is a folder, or writing fails.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError("not a folder", source=str(folder))
    existing = [f for f in PROJECT_FILES if (folder / f.path).exists()]
    folders = [f for f in existing if (folder / f.path).is_dir()]
    if folders:
        raise ConfigError("is a folder, not a file", source=str(folder / folders[0].path))
    if existing and not force:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise ConfigError(
            f"already exists{more}; nothing written (mdp init --force overwrites the files "
            f"mdp init writes, nothing else)",
            source=str(folder / existing[0].path),
        )
    for f in PROJECT_FILES:
        target = folder / f.path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.content())
        except OSError as exc:
            raise ConfigError(f"cannot write: {exc.strerror or exc}", source=str(target)) from None
    return list(PROJECT_FILES)
