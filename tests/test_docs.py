"""The configuration examples in docs/configuration.md load, so the reference cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from stackwatch.kinds import parse_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
BLOCKS = [b for b in re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S) if "kind:" in b and "\n- name:" in "\n" + b]


@pytest.mark.parametrize("block", BLOCKS, ids=[re.search(r"name: (\S+)", b).group(1) for b in BLOCKS])
def test_documented_target_examples_load(block, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-from-file\n")
    block = re.sub(r"(_file: )[^\s},]+", rf"\g<1>{secret}", block)
    env = {name: "env-secret-value" for name in re.findall(r"\$\{([A-Z_]+)\}", block)}
    text = "targets:\n" + "".join(f"  {line}\n" for line in block.splitlines())
    config = parse_config(text, env=env)
    assert config.targets


def test_readme_lists_every_failure_reason():
    from stackwatch.probes.base import Reason

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("Failure reasons are a fixed vocabulary")
    paragraph = readme[start:readme.index("\n\n", start)]
    assert [r.value for r in Reason if f"`{r.value}`" not in paragraph] == []
