"""Each conda env's header names exactly the rules that use it.

Every ``workflow/envs/*.yaml`` opens with a comment block holding one list in a
fixed format, the rules whose ``conda:`` names that file (any order)::

    # Rules: generate_demo, download_query, load_query, subset_query, obtain_atlas,
    #   layout_reference, neighbors_umap.

``# Rules:`` starts it, continuation lines start with ``#`` and three spaces, and a
full stop ends it. The truth is Snakemake's own parse of the workflow
(``tests/rules_info.py``, which also defines the rules made only when a config
fetches the atlas or the model).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, rules_info

ENVS = REPO / "workflow" / "envs"
START = "# Rules:"
CONTINUATION = "#   "


def header_rules(text: str) -> list[str]:
    """The rule names of the header's ``# Rules:`` list, in its order."""
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    starts = [i for i, line in enumerate(header) if line.startswith(START)]
    if len(starts) != 1:
        raise ValueError(f"the header has {len(starts)} '{START}' lines, not one")
    parts = [header[starts[0]][len(START) :]]
    for line in header[starts[0] + 1 :]:
        if parts[-1].rstrip().endswith(".") or not line.startswith(CONTINUATION):
            break
        parts.append(line[len(CONTINUATION) :])
    listed = " ".join(part.strip() for part in parts)
    if not listed.endswith("."):
        raise ValueError(f"the '{START}' list does not end with a full stop: {listed!r}")
    names = [name.strip() for name in listed[:-1].split(",")]
    if not all(names):
        raise ValueError(f"an empty name in the '{START}' list: {listed!r}")
    return names


@pytest.fixture(scope="module")
def users() -> dict[str, list[str]]:
    """Env file name -> the rules whose ``conda:`` names it."""
    found: dict[str, list[str]] = {}
    for rule in rules_info():
        if rule["conda"]:
            env = Path(rule["basedir"], rule["conda"]).resolve()
            assert env.parent == ENVS.resolve(), f"{rule['name']}: env outside workflow/envs"
            found.setdefault(env.name, []).append(rule["name"])
    return found


ENV_FILES = sorted(path.name for path in ENVS.glob("*.yaml"))


def test_there_are_envs_to_check():
    assert ENV_FILES


@pytest.mark.parametrize("env", ENV_FILES)
def test_an_env_header_names_exactly_the_rules_that_use_it(env, users):
    listed = header_rules((ENVS / env).read_text())
    assert len(listed) == len(set(listed)), f"{env}: a rule named twice: {listed}"
    used = users.get(env, [])
    assert used, f"{env}: no rule uses it"
    assert set(listed) == set(used), (
        f"{env}: the header's '{START}' list should be {', '.join(used)}. "
        f"(missing: {sorted(set(used) - set(listed))}; "
        f"not using it: {sorted(set(listed) - set(used))})"
    )


def test_every_env_a_rule_names_exists(users):
    assert set(users) <= set(ENV_FILES)


def test_the_header_parser_reads_its_format_and_refuses_others():
    text = "# About.\n# Rules: a, b,\n#   c.\n# Pins: x.\nchannels: []\n"
    assert header_rules(text) == ["a", "b", "c"]
    assert header_rules("# Rules: a.\nchannels: []\n") == ["a"]
    for bad in (
        "# About.\nchannels: []\n",  # no list
        "# Rules: a, b\nchannels: []\n",  # no full stop
        "# Rules: a,\n# b.\n",  # a continuation not indented
        "# Rules: a.\n# Rules: b.\n",  # two lists
        "# Rules: a, , b.\n",  # an empty name
    ):
        with pytest.raises(ValueError):
            header_rules(bad)
    # A list after the comment block is not the header's.
    with pytest.raises(ValueError):
        header_rules("# About.\nchannels: []\n# Rules: a.\n")
