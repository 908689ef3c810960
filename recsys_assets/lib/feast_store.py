"""Opening the Feast repository (``feature_repo/``) in-process, the one way every process does it (pipeline
assets, Triton's lookup stages, the API).

The yaml names its registry and online store as ``${RECSYS_FEAST_REGISTRY}`` / ``${RECSYS_FEAST_ONLINE_STORE}``;
they are expanded from the mapping the caller passes (a server's environment, a resource's settings), never by
changing ``os.environ``, so one process can open stores of two roots. A variable left unset is an error that names
it, not a Feast connection error later.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path


class FeastRepoError(Exception):
    """The Feast repository cannot be opened as configured; the message says what to set."""


class FeastYamlMissing(FeastRepoError, FileNotFoundError):
    """The repository's yaml does not exist."""


class FeastVariablesMissing(FeastRepoError, KeyError):
    """The yaml names variables the environment given does not set."""

    __str__ = Exception.__str__  # KeyError would quote the message


def _leaves(value) -> list[str]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value] if isinstance(value, str) else []


def repo_config(repo_dir: Path, yaml_file: str, environ: Mapping[str, str]):
    """Feast's ``RepoConfig`` of ``repo_dir/yaml_file``, its ``${VAR}`` expanded from ``environ``."""
    import yaml
    from feast.repo_config import RepoConfig

    path = Path(repo_dir) / yaml_file
    if not path.exists():
        raise FeastYamlMissing(f"Feast repository yaml {path} not found: set RECSYS_FEAST_REPO and RECSYS_FEAST_YAML")
    values = yaml.safe_load(string.Template(path.read_text()).safe_substitute(environ))
    missing = sorted({name for leaf in _leaves(values) for name in re.findall(r"\$\{(\w+)\}", leaf)})
    if missing:
        raise FeastVariablesMissing(f"{path} needs {', '.join(missing)} set in the environment of the process "
                                    "opening it (the serve command and triton_deployment set them for Triton)")
    config = RepoConfig(**values)
    config.repo_path = Path(repo_dir)
    return config


def open_feature_store(repo_dir: Path, yaml_file: str, environ: Mapping[str, str]):
    """A ``FeatureStore`` over ``repo_dir/yaml_file`` with ``${VAR}`` expanded from ``environ``."""
    from feast import FeatureStore

    return FeatureStore(repo_path=str(repo_dir), config=repo_config(repo_dir, yaml_file, environ))
