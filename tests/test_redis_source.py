"""The consistency kind's Redis source against the machine's real Redis (127.0.0.1:6379;
tests/run.sh starts it): JSON, hash and length fields, TTL and refresh tracking, and the ways a
cache fails (wrong password, refused connection, missing key), beside a file source."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
from probing import run_probe
from stackwatch.series import render_result
from stackwatch.kinds import parse_config

REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture()
def cache():
    """A real Redis connection and a unique key prefix, cleaned up after the test."""
    r = redis.Redis.from_url(REDIS, socket_timeout=5)
    try:
        r.ping()
    except redis.exceptions.ConnectionError as exc:
        raise AssertionError(f"Redis is not running on 127.0.0.1:6379 ({exc}); tests/run.sh starts it") from None
    prefix = f"stackwatch-test:{uuid.uuid4().hex[:10]}:"
    yield r, prefix
    for key in r.scan_iter(prefix + "*"):
        r.delete(key)
    r.close()


def target(tmp_path, prefix: str, redis_block: str, env: dict[str, str] | None = None):
    (tmp_path / "db.json").write_text('{"total": 63, "active": 51, "queued": 3}')
    text = f"""targets:
  - name: ai-go
    kind: consistency
    timeout: 3s
    fields: [total, active, queued]
    invariants: ["active <= total"]
    tolerance: {{absolute: 0}}
    sources:
      - {{name: database, file: {{path: "{tmp_path / 'db.json'}", fields: {{total: $.total, active: $.active, queued: $.queued}}}}}}
      - name: cache
        redis:
{redis_block}"""
    return parse_config(text.replace("PREFIX:", prefix), env=env or {}).targets[0]


BLOCK = f"""          url: {REDIS}
          fields:
            total: {{key: "PREFIX:stats", path: $.totalModels}}
            active: {{key: "PREFIX:counts", hash_field: active}}
            queued: {{key: "PREFIX:jobs", length: true}}
          max_age: {{"PREFIX:stats": 2m}}
"""


def fill(r, prefix: str, total: int, active: int, ex: int | None) -> None:
    """The cache as the application writes it: stats JSON (with expiry ``ex``), a counts hash
    without expiry, a job list of three."""
    r.set(prefix + "stats", json.dumps({"totalModels": total}), ex=ex)
    r.hset(prefix + "counts", mapping={"active": active})
    r.rpush(prefix + "jobs", "a", "b", "c")


def lines(text: str, family: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(family + "{"):
            labels, value = line[len(family) + 1:].rsplit("} ", 1)
            out[labels] = float(value)
    return out


async def probe(t):
    r = await run_probe(t)
    return r, "".join(render_result(t, r).values())


async def test_json_hash_and_length_fields_and_ttls(cache, tmp_path):
    r, prefix = cache
    fill(r, prefix, total=60, active=50, ex=120)
    t = target(tmp_path, prefix, BLOCK)
    res, text = await probe(t)
    values = lines(text, "stackwatch_consistency_value")
    assert values[f'target="ai-go",kind="consistency",source="cache",field="total"'] == 60
    assert values[f'target="ai-go",kind="consistency",source="cache",field="active"'] == 50
    assert values[f'target="ai-go",kind="consistency",source="cache",field="queued"'] == 3
    # the cache drifted from the database: 60 vs 63 (tolerance 0): the sources disagree
    assert not res.success and res.reason.value == "disagreement"
    ttl = lines(text, "stackwatch_consistency_redis_key_ttl_seconds")
    assert 100 < ttl[f'target="ai-go",kind="consistency",source="cache",key="{prefix}stats"'] <= 120
    assert ttl[f'target="ai-go",kind="consistency",source="cache",key="{prefix}counts"'] == -1  # never expires
    assert lines(text, "stackwatch_consistency_redis_key_max_age_seconds") == {
        f'target="ai-go",kind="consistency",source="cache",key="{prefix}stats"': 120}


async def test_refresh_is_seen_from_the_ttl_and_the_value(cache, tmp_path):
    r, prefix = cache
    fill(r, prefix, total=63, active=51, ex=100)
    t = target(tmp_path, prefix, BLOCK)
    key = f'target="ai-go",kind="consistency",source="cache",key="{prefix}stats"'

    async def refreshed() -> float:
        return lines((await probe(t))[1], "stackwatch_consistency_redis_key_refreshed_timestamp_seconds")[key]

    first = await refreshed()
    time.sleep(1.1)
    assert await refreshed() == first  # same value, TTL only went down: not refreshed
    r.set(prefix + "stats", json.dumps({"totalModels": 63}), ex=1000)  # SET ... EX again: the TTL goes up
    time.sleep(1.1)
    second = await refreshed()
    assert second > first
    time.sleep(1.1)
    r.set(prefix + "stats", json.dumps({"totalModels": 64}), keepttl=True)  # new value, TTL kept
    assert await refreshed() > second


async def test_cache_failures_have_their_reasons_and_hide_the_password(cache, tmp_path):
    r, prefix = cache
    fill(r, prefix, total=63, active=51, ex=None)
    user = "sw-" + prefix.split(":")[1]
    password = "cAnary-redis-pw-" + uuid.uuid4().hex[:8]
    r.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    try:
        ok = BLOCK.replace(f"url: {REDIS}", f'url: {REDIS}\n          username: {user}\n          password: "${{REDIS_PW}}"')
        res, _ = await probe(target(tmp_path, prefix, ok, env={"REDIS_PW": password}))
        assert res.success, res.message
        res, text = await probe(target(tmp_path, prefix, ok, env={"REDIS_PW": password + "-wrong"}))
        assert not res.success and res.reason.value == "auth"
        assert password not in res.message + text + "\n".join(res.log)
    finally:
        r.acl_deluser(user)
    refused = BLOCK.replace(REDIS, "redis://127.0.0.1:1/0")
    res, _ = await probe(target(tmp_path, prefix, refused))
    assert not res.success and res.reason.value == "connection_refused"
    r.delete(prefix + "jobs")
    res, _ = await probe(target(tmp_path, prefix, BLOCK))
    assert not res.success and res.reason.value == "extraction" and "does not exist" in res.message
    r.set(prefix + "jobs", "not a list")
    r.set(prefix + "counts", "not a hash")
    res, _ = await probe(target(tmp_path, prefix, BLOCK))
    assert not res.success and res.reason.value == "extraction" and "not a hash" in res.message


def test_an_inline_password_in_the_url_is_refused(tmp_path):
    from stackwatch.config import ConfigError

    with pytest.raises(ConfigError, match="a password in the URL is not accepted"):
        target(tmp_path, "p:", BLOCK.replace(REDIS, "redis://:hunter2hunter2@127.0.0.1:6379/0"))
