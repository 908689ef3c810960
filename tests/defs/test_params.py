"""Hyperparameters are declared once, in the ml/ (and serving) dataclasses; the Dagster configs derive from them."""

import dataclasses

import pytest

from recsys_assets.defs.params import params_of
from recsys_assets.defs.release.assets import RepositoryConfig
from recsys_assets.defs.release.releases import FineTuneConfig
from recsys_assets.defs.training.assets import DlrmConfig, TwoTowerConfig
from recsys_assets.ml.dlrm import DlrmParams
from recsys_assets.ml.finetune import FineTuneParams
from recsys_assets.ml.two_tower import TwoTowerParams
from recsys_assets.release.repository import ServingDefaults

# (Dagster config, the dataclass it derives from, fields the asset sets itself)
DERIVED = [(TwoTowerConfig, TwoTowerParams, ("variant",)), (DlrmConfig, DlrmParams, ()),
           (FineTuneConfig, FineTuneParams, ("variant",)), (RepositoryConfig, ServingDefaults, ())]


@pytest.mark.parametrize("config_cls, params_cls, set_by_asset", DERIVED, ids=lambda x: getattr(x, "__name__", ""))
def test_the_config_has_every_hyperparameter_with_the_dataclass_default(config_cls, params_cls, set_by_asset):
    config = config_cls()
    for field in dataclasses.fields(params_cls):
        if field.name in set_by_asset:
            assert field.name not in config_cls.model_fields
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        value = getattr(config, field.name)
        assert (list(value) if isinstance(default, tuple) else value) == (
            list(default) if isinstance(default, tuple) else default), field.name


def test_what_the_assets_send_rebuilds_the_dataclass_defaults():
    sent = {**params_of(TwoTowerConfig(), TwoTowerParams, exclude=("variant",)), "variant": "plain"}
    assert TwoTowerParams.from_dict(sent) == TwoTowerParams()
    assert DlrmParams.from_dict(params_of(DlrmConfig(), DlrmParams)) == DlrmParams()
    sent = {**params_of(FineTuneConfig(), FineTuneParams, exclude=("variant",)), "variant": "plain"}
    assert FineTuneParams.from_dict(sent) == FineTuneParams()
    assert RepositoryConfig().defaults() == ServingDefaults()


def test_an_override_reaches_the_dataclass_and_the_docstrings_reach_the_ui():
    config = TwoTowerConfig(epochs=3, mlp=[64, 32])
    params = TwoTowerParams.from_dict({**params_of(config, TwoTowerParams, exclude=("variant",)), "variant": "plain"})
    assert params.epochs == 3 and params.mlp == (64, 32)
    assert "memorize" in TwoTowerConfig.model_fields["epochs"].description
    assert RepositoryConfig(bloom_ttl_s=3600, instance_counts={"feast_user_lookup": 2}).defaults() == \
        ServingDefaults(bloom_ttl_s=3600, instance_counts={"feast_user_lookup": 2})
