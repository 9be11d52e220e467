"""The profiles give the settings they promise, in keys the pinned tools read.

Snakemake's command line is parsed here exactly as a user types it, in the
repository root, by Snakemake's own parser (`snakemake.cli.parse_args`): that is
where profiles are found and merged, and where a workflow profile
(`profiles/default`, read on every run) would override a user's `--profile`.
"""

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import snakemake.common
import snakemake_executor_plugin_slurm as slurm_plugin
import yaml
from atlasmap.resources_check import SLURM_PLUGIN_RESOURCES, SNAKEMAKE_RESOURCES
from conftest import REPO
from snakemake.cli import get_argument_parser, parse_args, parse_cores
from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

SLURM_PROFILE = REPO / "profiles" / "slurm"
PROFILES = sorted(p.parent for p in (REPO / "profiles").glob("*/config.yaml"))
# What profiles/slurm promises a cluster run.
SLURM_SETTINGS = {
    "executor": "slurm",
    "jobs": 50,
    "retries": 1,
    "keep_going": True,
    "rerun_incomplete": True,
}


def parse(argv, capsys):
    """Snakemake's effective arguments for ``snakemake <argv>``, and what it printed."""
    _, args = parse_args(argv)
    return args, capsys.readouterr().err


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def assert_slurm_settings(args, said):
    assert "workflow specific profile" not in said, said
    assert {key: getattr(args, key) for key in SLURM_SETTINGS} == SLURM_SETTINGS
    # The partition choice reads partitions.yaml beside the profile, wherever it is found.
    assert (
        Path(args.slurm_partition_config).resolve() == (SLURM_PROFILE / "partitions.yaml").resolve()
    )


def test_profile_slurm_from_the_clone_gives_its_own_settings(in_repo, capsys):
    args, said = parse(["--profile", "profiles/slurm"], capsys)
    assert "Using profile profiles/slurm" in said
    assert_slurm_settings(args, said)


def test_profile_slurm_by_name_after_make_slurm_profile(in_repo, capsys, tmp_path, monkeypatch):
    """`make slurm-profile` links the profile where Snakemake looks for one by name."""
    xdg = tmp_path / "xdg"
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILES"}
    env["XDG_CONFIG_HOME"] = str(xdg)
    subprocess.run(
        ["make", "-s", "slurm-profile"],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (xdg / "snakemake" / "slurm").resolve() == SLURM_PROFILE.resolve()
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setattr(snakemake.common, "APPDIRS", None)  # Snakemake caches the folders
    args, said = parse(["--profile", "slurm"], capsys)
    assert "Using profile slurm" in said
    assert_slurm_settings(args, said)


def test_local_runs_read_no_profile_unless_named(in_repo, capsys):
    args, said = parse(["--cores", "all"], capsys)
    assert "profile" not in said, said  # no workflow profile: nothing overrides a user's
    assert not (REPO / "profiles" / "default").exists()
    args, said = parse(["--profile", "profiles/local"], capsys)  # what `make demo` runs
    assert "workflow specific profile" not in said
    assert (args.cores, args.printshellcmds, args.show_failed_logs) == (
        parse_cores("all"),
        True,
        True,
    )
    makefile = (REPO / "Makefile").read_text()
    assert "snakemake --profile profiles/local" in makefile


# --- Every key is one the pinned Snakemake and SLURM plugin read ---------------

PLUGIN_SOURCE = "\n".join(
    path.read_text() for path in sorted(Path(slurm_plugin.__file__).parent.glob("*.py"))
)
# Settings of plugin 2.8.0 (`slurm-<field>` in a profile) that its code reads;
# no_account is declared but never read.
PLUGIN_SETTINGS = {
    field.name
    for field in dataclasses.fields(slurm_plugin.ExecutorSettings)
    if re.search(rf"\.{field.name}\b", PLUGIN_SOURCE)
}
# Job resources the plugin reads, and Snakemake's own that a profile may set: the
# lists the workflow checks profiles with (tests/unit/test_resources_check.py holds
# them to what the installed plugin reads).
PLUGIN_RESOURCES = SLURM_PLUGIN_RESOURCES


def test_the_plugin_facts_the_checks_rely_on():
    """If the plugin changes, these sets must be looked at again."""
    assert {"logdir", "partition_config", "init_seconds_before_status_checks"} <= PLUGIN_SETTINGS
    assert "no_account" not in PLUGIN_SETTINGS
    assert "account" not in {f.name for f in dataclasses.fields(slurm_plugin.ExecutorSettings)}
    assert {"slurm_partition", "slurm_account", "runtime", "mem_mb", "gpu", "gpu_model"} <= (
        PLUGIN_RESOURCES
    )


def snakemake_options() -> set[str]:
    """Snakemake's own long options (`--keep-going` -> keep-going), plugins' left out."""
    parser = get_argument_parser()
    return {
        option[2:]
        for option in parser._option_string_actions
        if option.startswith("--") and not option.startswith("--slurm-")
    }


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_profile_key_is_a_setting_of_snakemake_or_the_slurm_plugin(profile):
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    own = snakemake_options()
    unknown = [
        key
        for key in settings
        if not (
            key.startswith("slurm-")
            and key.removeprefix("slurm-").replace("-", "_") in PLUGIN_SETTINGS
        )
        and key not in own
    ]
    assert not unknown, f"{profile.name}: not settings of Snakemake or plugin 2.8.0: {unknown}"


def test_slurm_profile_resources_and_comments_name_only_what_the_plugin_reads():
    text = (SLURM_PROFILE / "config.yaml").read_text()
    settings = yaml.safe_load(text)
    resources = dict(settings.get("default-resources") or {})
    for rule_resources in (settings.get("set-resources") or {}).values():
        resources.update(rule_resources)
    unread = set(resources) - PLUGIN_RESOURCES - SNAKEMAKE_RESOURCES
    assert not unread, f"resources plugin 2.8.0 does not read: {unread}"
    # GPUs are the rules' to ask for, by `gpu`; gres beside it asks twice.
    assert not {"gpu", "gres"} & set(resources)
    # A partition named here would switch off the choice by partitions.yaml.
    assert "slurm_partition" not in resources
    # The comments too: `slurm-account` and the like are no settings of 2.8.0.
    mentioned = set(re.findall(r"(?<![\w-])(?<!make )slurm-([a-z-]+[a-z])", text))
    dead = {m for m in mentioned if m.replace("-", "_") not in PLUGIN_SETTINGS}
    assert not dead, f"the profile mentions settings plugin 2.8.0 lacks: {dead}"
    named_resources = set(re.findall(r"\b(slurm_[a-z_]+|gpu_model|gres)\b", text))
    assert named_resources <= PLUGIN_RESOURCES, named_resources - PLUGIN_RESOURCES


def job(gpu: int, threads: int = 4):
    return SimpleNamespace(
        name="map_query", threads=threads, resources={"gpu": gpu, "mem_mb": 16000, "runtime": 120}
    )


def test_partitions_yaml_sends_gpu_jobs_to_the_gpu_partition_and_the_rest_to_cpu():
    """By the plugin's own choice (get_best_partition), from the shipped partitions.yaml."""
    partitions = read_partition_file(SLURM_PROFILE / "partitions.yaml")
    logger = SimpleNamespace(info=lambda *a: None, debug=lambda *a: None, warning=print)
    assert get_best_partition(partitions, job(gpu=1), logger) == "gpu"
    assert get_best_partition(partitions, job(gpu=0), logger) == "cpu"
    assert get_best_partition(partitions, job(gpu=0, threads=1), logger) == "cpu"


def test_a_mistyped_key_in_a_users_profile_stops_snakemake_naming_it(tmp_path, capsys):
    """A typo (`slurm-acount`) is refused by name, not silently ignored as a comment would be."""
    profile = tmp_path / "slurm"
    shutil.copytree(SLURM_PROFILE, profile)
    settings = yaml.safe_load((profile / "config.yaml").read_text())
    settings["slurm-acount"] = "my_lab"
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    with pytest.raises(SystemExit) as stopped:
        parse_args(["--profile", str(profile), "-n"])
    assert stopped.value.code == 2
    assert "unrecognized arguments: --slurm-acount=my_lab" in capsys.readouterr().err
