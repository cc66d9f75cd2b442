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
