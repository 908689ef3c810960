"""Opening the Feast repository with its ``${VAR}`` expanded from a given mapping."""

import pytest

from recsys_assets.lib.feast_store import FeastVariablesMissing, FeastYamlMissing, repo_config

YAML = """project: recsys
provider: local
registry: ${RECSYS_FEAST_REGISTRY}
online_store:
  type: redis
  connection_string: ${RECSYS_FEAST_ONLINE_STORE}
entity_key_serialization_version: 2
"""


def test_variables_come_from_the_mapping_given(tmp_path):
    (tmp_path / "feature_store.yaml").write_text(YAML)
    config = repo_config(tmp_path, "feature_store.yaml", {"RECSYS_FEAST_REGISTRY": str(tmp_path / "r.db"),
                                                          "RECSYS_FEAST_ONLINE_STORE": "127.0.0.1:6390,db=0"})
    assert config.online_store.connection_string == "127.0.0.1:6390,db=0" and config.repo_path == tmp_path


def test_an_unset_variable_is_named_and_a_missing_yaml_says_what_to_set(tmp_path):
    (tmp_path / "feature_store.yaml").write_text(YAML)
    with pytest.raises(FeastVariablesMissing, match="needs RECSYS_FEAST_ONLINE_STORE set") as missing:
        repo_config(tmp_path, "feature_store.yaml", {"RECSYS_FEAST_REGISTRY": "r.db"})
    assert isinstance(missing.value, KeyError)  # callers that caught KeyError still do
    with pytest.raises(FeastYamlMissing, match="set RECSYS_FEAST_REPO"):
        repo_config(tmp_path, "other.yaml", {})
