"""Dagster run config derived from the ``ml/`` hyperparameter dataclasses, so each hyperparameter is declared once.

``ml/`` runs in the merlin env without dagster, so its dataclasses (``TwoTowerParams``, ``DlrmParams``,
``FineTuneParams``) are the source: their fields, types, defaults and attribute docstrings become the fields and
descriptions of a ``dg.Config`` that an asset's own config class extends with what only the asset needs (the
days it reads, the gate's tolerance ...). The params dict an asset hands the merlin env is the dataclass's
fields, read back from the config (:func:`params_of`).
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import inspect
import textwrap
import typing

import dagster as dg
import pydantic


def _docstrings(cls) -> dict[str, str]:
    """``{field: docstring}`` of the string literals that follow a class's annotated fields."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    out = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(after, ast.Expr) \
                and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            out[node.target.id] = inspect.cleandoc(after.value.value)
    return out


def _config_type(annotation):
    """Dagster config has lists and dicts: ``tuple[int, ...]`` becomes ``list[int]``, a ``Mapping`` a ``dict``."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        return list[typing.get_args(annotation)[0]]
    if origin is collections.abc.Mapping:
        return dict[typing.get_args(annotation)]
    return annotation


def config_from_params(params_cls, exclude: tuple[str, ...] = ()) -> type[dg.Config]:
    """A ``dg.Config`` whose fields are ``params_cls``'s (minus ``exclude``), with its defaults and docstrings."""
    hints = typing.get_type_hints(params_cls)
    docs = _docstrings(params_cls)
    fields = {}
    for field in dataclasses.fields(params_cls):
        if field.name in exclude:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        default = list(default) if isinstance(default, tuple) else dict(default) if isinstance(default, dict) \
            else default
        fields[field.name] = (_config_type(hints[field.name]),
                              pydantic.Field(default=default, description=docs.get(field.name)))
    return pydantic.create_model(f"{params_cls.__name__}Config", __base__=dg.Config,
                                 __doc__=params_cls.__doc__, **fields)


def params_of(config, params_cls, exclude: tuple[str, ...] = ()) -> dict:
    """The ``params_cls`` fields of an asset's config, as the dict the merlin env's ``from_dict`` reads."""
    names = {f.name for f in dataclasses.fields(params_cls)} - set(exclude)
    return {k: v for k, v in config.dict().items() if k in names}
