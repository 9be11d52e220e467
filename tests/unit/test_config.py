"""The config schema: defaults filled, typos and wrong types refused."""

import copy
from pathlib import Path

import pytest
import yaml
from conftest import REPO, with_demo_query
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


@pytest.fixture
def demo_config():
    """The demo config, its query as a config mapping (the sheet form: test_sheet.py)."""
    return with_demo_query(yaml.safe_load((REPO / "config" / "config.yaml").read_text()))


def check(config):
    config = copy.deepcopy(config)
    if "references" not in config:  # as common.smk: one reference, the demo's by default
        config.setdefault("reference", {})
    validate(config, SCHEMA, set_default=False)
    validate(config, SCHEMA)
    return config


def test_demo_config_is_valid_and_gets_the_schema_defaults(demo_config):
    del demo_config["reference"]
    config = check(demo_config)
    assert config["queries"]["demo"]["metadata"] == {
        "table": None,
        "barcode_column": None,
        "max_unmatched_fraction": 0.0,
    }
    assert config["queries"]["demo"]["format"] == "auto"
    assert config["reference"]["labels_key"] == "Level_4"
    assert config["reference"]["batch_key"] == "Sample_ID"


def test_every_key_of_the_schema_has_a_description_and_objects_refuse_unknown_keys():
    schema = yaml.safe_load(Path(SCHEMA).read_text())

    def walk(node, path):
        if isinstance(node, dict) and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} accepts unknown keys"
            for key, sub in node["properties"].items():
                assert "description" in sub or "$ref" in sub, f"{path}.{key} has no description"
                walk(sub, f"{path}.{key}")
        if isinstance(node, dict):
            for key in ("oneOf", "anyOf"):
                for i, sub in enumerate(node.get(key, [])):
                    walk(sub, f"{path}.{key}[{i}]")
            if isinstance(node.get("additionalProperties"), dict):
                walk(node["additionalProperties"], f"{path}.*")

    walk(schema, "config")
    for name, definition in schema["$defs"].items():
        walk(definition, f"$defs.{name}")


def test_every_top_level_key_is_documented_in_config_readme():
    schema = yaml.safe_load(Path(SCHEMA).read_text())
    readme = (REPO / "config" / "README.md").read_text()
    keys = list(schema["properties"])
    keys += [f"{k}.{s}" for k, v in schema["properties"].items() for s in v.get("properties", {})]
    keys += [f"queries.<name>.{k}" for k in schema["$defs"]["query"]["properties"]]
    keys += [f"reference.{k}" for k in schema["$defs"]["reference"]["properties"]]
    missing = [k for k in keys if f"`{k}`" not in readme]
    assert not missing, f"config/README.md does not document {missing}"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c.update(sed=1), "'sed' was unexpected"),
        (lambda c: c["queries"]["demo"].update(subsett={}), "'subsett' was unexpected"),
        (lambda c: c["reference"].update(lables_key="x"), "'lables_key' was unexpected"),
        (lambda c: c.update(seed="zero"), "'zero' is not of type 'integer'"),
        (lambda c: c["queries"]["demo"]["metadata"].update(max_unmatched_fraction=2), "2"),
        (lambda c: c["queries"].update({"../x": c["queries"]["demo"]}), "'../x' does not match"),
        (
            lambda c: c["queries"].update({"/abs": c["queries"]["demo"]}),
            "'/abs' does not match",
        ),
        (
            lambda c: c["queries"].update({"my query": c["queries"]["demo"]}),
            "'my query' does not match",
        ),
        (lambda c: c["queries"]["demo"]["source"].update(urls={}), "source"),
        (lambda c: c.update(reference="atlas.h5ad"), "'atlas.h5ad' is not of type 'object'"),
    ],
    ids=[
        "top-typo",
        "query-typo",
        "reference-typo",
        "wrong-type",
        "out-of-range",
        "escaping-name",
        "absolute-name",
        "name-with-space",
        "two-sources",
        "string-for-mapping",
    ],
)
def test_bad_configs_are_refused_with_the_key_at_fault(demo_config, edit, expected):
    demo_config["queries"]["demo"]["metadata"] = {}
    edit(demo_config)
    with pytest.raises(WorkflowError) as err:
        check(demo_config)
    assert expected in str(err.value)


def schema_defaults() -> dict:
    """Every key at its schema default (a query is required: the demo's, source only)."""
    return check(
        {"queries": {"demo": {"source": with_demo_query({})["queries"]["demo"]["source"]}}}
    )


def test_settings_dataclasses_default_to_the_schema_defaults():
    """A library user who builds settings by hand gets what a workflow user gets."""
    from atlasmap.calls import CallSettings, call_settings
    from atlasmap.embedding import EmbeddingSettings, embedding_settings
    from atlasmap.mapping import MappingSettings, mapping_settings
    from atlasmap.reference import TrainingSettings, training_settings

    config = schema_defaults()
    assert embedding_settings(config["neighbors"], config["umap"], seed=0) == EmbeddingSettings()
    assert call_settings(config["mapping"]) == CallSettings()
    assert mapping_settings(config["reference"], config["mapping"]) == MappingSettings()
    assert training_settings(config["reference"]["training"]) == TrainingSettings()


def config_readme_defaults() -> dict[str, str]:
    """`key` -> the default column of config/README.md's tables, as written."""
    rows = {}
    for line in (REPO / "config" / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[2].startswith("`"):
            rows[cells[0].strip("`")] = cells[2].strip("`")
    return rows


def test_config_readme_states_the_schema_defaults():
    config = schema_defaults()
    documented = config_readme_defaults()
    checked = 0
    for key, written in documented.items():
        if key.startswith("queries."):
            continue
        value = config
        for part in key.split("."):
            value = value[part]
        if written == "{}" and isinstance(value, dict):  # a section: its keys are checked
            continue
        assert yaml.safe_load(written) == value, f"config/README.md: `{key}` default {written}"
        checked += 1
    assert checked > 40


def test_the_template_for_real_data_carries_no_demo_shortcut():
    """config/template.yaml is what a user copies for a real atlas: it must validate, and
    train and call with the schema's own settings, not the demo's short training."""
    template = check(yaml.safe_load((REPO / "config" / "template.yaml").read_text()))
    defaults = schema_defaults()
    assert template["reference"]["training"] == defaults["reference"]["training"]
    assert template["mapping"]["calls"] == defaults["mapping"]["calls"]
    assert template["mapping"]["unknown_threshold"] == defaults["mapping"]["unknown_threshold"]
    assert template["reference"]["model"] is None  # trained here, by the schema's rule
    demo = (REPO / "config" / "config.yaml").read_text()
    assert "DEMO SHORTCUT" in demo.split("training:")[0], "the demo's training is not marked"
