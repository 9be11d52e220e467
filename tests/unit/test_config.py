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


SETTINGS = ("CallSettings", "DownloadSettings", "EmbeddingSettings", "MappingSettings")
SETTINGS += ("TrainingSettings",)


def settings_classes():
    import atlasmap.settings

    return [getattr(atlasmap.settings, name) for name in SETTINGS]


def test_settings_dataclasses_default_to_the_schema_defaults():
    """A library user who builds settings by hand gets what a workflow user gets."""
    config = schema_defaults()
    for settings in settings_classes():
        assert settings.from_config(config) == settings(), settings.__name__


def test_settings_mirror_the_schema_sections_key_for_key():
    """Every key a settings field names is a key of the schema, and every key of the
    sections the settings mirror is read by one: a new key cannot be forgotten."""
    from atlasmap.settings import schema_defaults as defaults

    read = {key for settings in settings_classes() for key in settings.keys().values()}
    reference = defaults()["reference"]
    mirrored = [f"reference.training.{key}" for key in reference["training"]]
    for section in ("mapping.calls", "mapping.surgery", "neighbors", "umap", "download"):
        head, _, sub = section.partition(".")
        keys = defaults()[head][sub] if sub else defaults()[head]
        mirrored += [f"{section}.{key}" for key in keys]
    assert set(mirrored) <= read, set(mirrored) - read
    flat = {**defaults(), "reference": reference}
    for key in read:
        value = flat
        for part in key.split("."):
            assert part in value, f"{key}: not a key of the schema"
            value = value[part]


def test_a_users_config_reaches_the_settings():
    from atlasmap.settings import (
        SURGERY_KEYS,
        CallSettings,
        MappingSettings,
        TrainingSettings,
        config_values,
    )

    config = schema_defaults()
    config["mapping"]["calls"]["n_neighbors"] = 7
    config["mapping"]["surgery"]["max_epochs"] = 3
    config["reference"]["counts_layer"] = "raw"
    config["reference"]["training"]["n_latent"] = 4
    config["seed"] = 9
    assert CallSettings.from_config(config, n_jobs=2) == CallSettings(
        n_neighbors=7, seed=9, n_jobs=2
    )
    assert TrainingSettings.from_config(config).n_latent == 4
    surgery = MappingSettings.from_config(config)
    assert (surgery.atlas_layer, surgery.surgery_max_epochs, surgery.seed) == ("raw", 3, 9)
    # Another reference of the same config: its own keys, the config's mapping.
    other = {**config["reference"], "counts_layer": None, "labels_key": "cell_type"}
    assert MappingSettings.from_config(config, other).labels_key == "cell_type"
    # The frozen mapping never reads surgery's keys: an edit of them leaves it alone.
    embed = config_values(MappingSettings, config, leave_out=SURGERY_KEYS)
    assert not any(key.startswith("mapping.surgery") for key in embed)
    assert (
        MappingSettings.from_values(embed).surgery_max_epochs
        == MappingSettings().surgery_max_epochs
    )


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
