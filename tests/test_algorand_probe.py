"""kind: algorand against a fake algod/indexer built from the official specs (tests/fake_algod.py).

The fake stands in for an Algorand node because none can be reached from this machine; every
response it sent during these tests is validated against the spec's JSON schemas at the end.
"""

from __future__ import annotations

import base64
import copy
import json
import time
from pathlib import Path

import pytest
from fake_algod import (
    ADMIN,
    CREATE_TXID,
    MAINNET_HASH,
    PAM_ASSET,
    PARTICIPANT,
    fake_algod,
    healthy_state,
    node_runner_state,
    seed_000_state,
)
from jsonschema import Draft4Validator
from probing import run_probe
from stackwatch.series import render_result
from stackwatch.config import ConfigError
from stackwatch.kinds import parse_config
from expo import find

TOKEN = "canary-algod-token-" + "a" * 45
SPECS = Path(__file__).resolve().parent / "data" / "algorand-specs"  # verbatim copies of the official specs
ALGOD_SPEC = json.loads((SPECS / "algod.oas2.json").read_text())
INDEXER_SPEC = json.loads((SPECS / "indexer.oas2.json").read_text())
SCHEMAS = {  # (server, route, status) -> JSON pointer into the spec; None: the body is null
    ("algod", "/health", 200): None, ("algod", "/ready", 200): None, ("algod", "/ready", 503): None,
    ("algod", "/ready", 500): None,
    ("algod", "/versions", 200): "#/responses/VersionsResponse/schema",
    ("algod", "/v2/status", 200): "#/responses/NodeStatusResponse/schema",
    ("algod", "/v2/status", 500): "#/definitions/ErrorResponse",
    ("algod", "/v2/transactions/params", 200): "#/responses/TransactionParametersResponse/schema",
    ("algod", "/v2/accounts/{address}", 200): "#/responses/AccountResponse/schema",
    ("algod", "/v2/assets/{asset-id}", 200): "#/responses/AssetResponse/schema",
    ("algod", "/v2/assets/{asset-id}", 404): "#/definitions/ErrorResponse",
    ("algod", "/v2/accounts/{address}/assets/{asset-id}", 200): "#/responses/AccountAssetResponse/schema",
    ("algod", "/v2/accounts/{address}/assets/{asset-id}", 404): "#/definitions/ErrorResponse",
    ("algod", "/v2/transactions/pending/{txid}", 200): "#/definitions/PendingTransactionResponse",
    ("algod", "/v2/transactions/pending/{txid}", 404): "#/definitions/ErrorResponse",
    ("algod", "401", 401): "#/definitions/ErrorResponse",
    ("algod", "/v2/ledger/supply", 200): "#/responses/SupplyResponse/schema",
    ("algod", "/v2/blocks/{round}", 200): "#/responses/BlockResponse/schema",
    ("algod", "/v2/participation", 200): "#/responses/ParticipationKeysResponse/schema",
    ("indexer", "/health", 200): "#/responses/HealthCheckResponse/schema",
    ("indexer", "/v2/transactions/{txid}", 200): "#/responses/TransactionResponse/schema",
    ("indexer", "/v2/transactions/{txid}", 404): "#/responses/ErrorResponse/schema",
}
SEEN: set[tuple[str, str, int]] = set()


@pytest.fixture(scope="module")
def fake():
    with fake_algod(TOKEN) as f:
        yield f


@pytest.fixture(autouse=True)
def validate_responses(fake):
    """After each test: every response the fake sent matches the official spec."""
    yield
    for server, route, status, body in fake.sent:
        key = (server, route, status)
        assert key in SCHEMAS, f"the fake sent {key}, which has no schema mapping"
        SEEN.add(key)
        pointer = SCHEMAS[key]
        if pointer is None:
            assert body is None, key
            continue
        spec = ALGOD_SPEC if server == "algod" else INDEXER_SPEC
        schema = {"definitions": spec["definitions"], "responses": spec["responses"], "allOf": [{"$ref": pointer}]}
        errors = sorted(Draft4Validator(schema).iter_errors(body), key=str)
        assert not errors, f"{key}: {errors[0].message}"


def target(fake, body: str = "", network: str = "testnet-v1.0", token: str = "${ALGOD_TOKEN}", timeout: str = "3s",
           indexer: bool = False):
    text = f"""targets:
  - name: pam-talk-chain
    kind: algorand
    timeout: {timeout}
    algod_url: {fake.algod_url}/
    algod_token: "{token}"
    network: {network}
{"    indexer_url: " + fake.indexer_url if indexer else ""}
{body}"""
    return parse_config(text, env={"ALGOD_TOKEN": TOKEN}).targets[0]


SEED_WATCH = f"""    accounts: [{{alias: admin, address: {ADMIN}, min_balance_algo: 1}}]
    assets: [{{alias: pam-token, id: {PAM_ASSET}, creator: {ADMIN}, holders: [admin]}}]
    transactions: [{{alias: pam-token-create, txid: {CREATE_TXID}}}]
"""


async def probe(t):
    r = await run_probe(t)
    return r, "".join(render_result(t, r).values())


def series(text: str, name: str) -> dict[str, float]:
    return {",".join(f'{k}="{v}"' for k, v in labels.items() if k not in ("target", "kind")): value
            for labels, value in find(text, "stackwatch_algorand_" + name)}


async def test_seed_000_state(fake):
    fake.reset(seed_000_state(TOKEN))
    r, text = await probe(target(fake, SEED_WATCH))
    assert r.success, r.message  # the node is fine; what it reports is the problem
    assert series(text, "network_match") == {"": 1}
    assert series(text, "asset_exists") == {'asset="pam-token"': 0}
    assert series(text, "asset_creator_match") == {'asset="pam-token"': 0}
    assert series(text, "account_balance_microalgos") == {'account="admin"': 0}
    assert series(text, "account_min_balance_microalgos") == {'account="admin"': 100_000}
    assert series(text, "account_spendable_microalgos") == {'account="admin"': 0}
    assert series(text, "account_fee_headroom_transactions") == {'account="admin"': 0}
    assert series(text, "account_above_floor") == {'account="admin"': 0}
    assert series(text, "account_floor_microalgos") == {'account="admin"': 1_000_000}
    assert series(text, "transaction_state") == {
        'transaction="pam-token-create",state="confirmed"': 0, 'transaction="pam-token-create",state="pending"': 0,
        'transaction="pam-token-create",state="rejected"': 0, 'transaction="pam-token-create",state="unknown"': 1}


async def test_healthy_node_funded_account_and_created_asset(fake):
    fake.reset(healthy_state(TOKEN))
    r, text = await probe(target(fake, SEED_WATCH))
    assert r.success, r.message
    assert series(text, "last_round") == {"": 58291734}
    assert series(text, "time_since_last_round_seconds") == {"": pytest.approx(1.432987654)}
    assert series(text, "account_fee_headroom_transactions") == {'account="admin"': (5_000_000 - 200_000) // 1000}
    assert series(text, "account_above_floor") == {'account="admin"': 1}
    assert series(text, "asset_exists") == {'asset="pam-token"': 1}
    assert series(text, "asset_creator_match") == {'asset="pam-token"': 1}
    assert series(text, "asset_total_base_units") == {'asset="pam-token"': 1e9}
    assert series(text, "asset_info") == {
        f'asset="pam-token",asset_id="{PAM_ASSET}",unit_name="PAM",name="PAM-TALK Token"': 1}
    assert series(text, "asset_holding_base_units") == {'asset="pam-token",account="admin"': 1e9}
    assert series(text, "transaction_state")['transaction="pam-token-create",state="confirmed"'] == 1
    assert series(text, "transaction_confirmed_round") == {'transaction="pam-token-create"': 58291736}
    assert 'version="4.3.0"' in text and 'genesis_id="testnet-v1.0"' in text


async def test_someone_elses_asset_is_a_creator_mismatch(fake):
    state = healthy_state(TOKEN)
    state["assets"][PAM_ASSET]["creator"] = "A" * 52 + "AAAAAA"  # not ours
    fake.reset(state)
    r, text = await probe(target(fake, SEED_WATCH))
    assert series(text, "asset_exists") == {'asset="pam-token"': 1}
    assert series(text, "asset_creator_match") == {'asset="pam-token"': 0}


async def test_pending_and_rejected_transactions(fake):
    state = healthy_state(TOKEN)
    state["pending"] = {CREATE_TXID: {"pool-error": ""}}
    fake.reset(state)
    t = target(fake, SEED_WATCH)
    _, first = await probe(t)
    time.sleep(0.2)
    _, second = await probe(t)
    assert series(second, "transaction_state")['transaction="pam-token-create",state="pending"'] == 1
    assert series(second, "transaction_pending_seconds")['transaction="pam-token-create"'] >= \
        series(first, "transaction_pending_seconds")['transaction="pam-token-create"'] + 0.2
    state["pending"] = {CREATE_TXID: {"pool-error": "TransactionPool.Remember: transaction: overspend (account MM7Z)"}}
    r, text = await probe(t)
    assert series(text, "transaction_state")['transaction="pam-token-create",state="rejected"'] == 1
    assert "overspend" in "\n".join(r.log)


async def test_indexer_tells_confirmed_long_ago_from_unknown(fake):
    state = seed_000_state(TOKEN)
    state["indexer_confirmed"] = {CREATE_TXID: 58000000}
    fake.reset(state)
    r, text = await probe(target(fake, SEED_WATCH, indexer=True))
    assert series(text, "transaction_state")['transaction="pam-token-create",state="confirmed"'] == 1
    assert series(text, "transaction_confirmed_round") == {'transaction="pam-token-create"': 58000000}
    assert series(text, "indexer_lag_rounds") == {"": 58291734 - 58291730}
    assert series(text, "indexer_db_available") == {"": 1}


async def test_catching_up_node(fake):
    state = healthy_state(TOKEN)
    state.update(ready=503, catchup_ns=42_000_000_000)
    fake.reset(state)
    r, text = await probe(target(fake))
    assert (r.success, r.reason.value) == (False, "not_synced")
    assert r.message.startswith("node is not in sync (catching up)")
    assert series(text, "node_ready_status_code") == {"": 503}
    assert series(text, "catchup_time_seconds") == {"": 42}


async def test_stalled_rounds(fake):
    state = healthy_state(TOKEN)
    state.update(since_last_round_ns=300 * 10**9)
    fake.reset(state)
    r, _ = await probe(target(fake))
    assert (r.reason.value, r.message) == ("not_synced", "node is not in sync (stalled): last round 58291734 was 300s ago")


async def test_wrong_network(fake):
    state = healthy_state(TOKEN)
    state.update(genesis_id="mainnet-v1.0", genesis_hash=MAINNET_HASH)
    fake.reset(state)
    r, text = await probe(target(fake, SEED_WATCH))
    assert (r.success, r.reason.value) == (False, "wrong_network")
    assert series(text, "network_match") == {"": 0}


async def test_wrong_token_is_auth_and_the_token_never_leaks(fake):
    fake.reset(healthy_state(TOKEN))
    t = parse_config(f"""targets:
  - name: chain
    kind: algorand
    algod_url: {fake.algod_url}
    algod_token: ${{WRONG}}
""", env={"WRONG": "canary-wrong-token-value-0123456789"}).targets[0]
    r, text = await probe(t)
    assert (r.success, r.reason.value) == (False, "auth")
    assert r.message == "GET /v2/status: HTTP 401 Invalid API Token: the API token was refused"
    everything = r.message + "\n".join(r.log) + text + repr(t)
    assert "canary-wrong-token-value-0123456789" not in everything
    assert series(text, "node_healthy") == {"": 1}  # what was learnt before the failure is kept


async def test_status_500(fake):
    state = healthy_state(TOKEN)
    state["fault"] = "status500"
    fake.reset(state)
    r, _ = await probe(target(fake))
    assert (r.reason.value, r.message) == ("http_status", "GET /v2/status: HTTP 500 failed retrieving node status")


async def test_malformed_json(fake):
    state = healthy_state(TOKEN)
    state["fault"] = "malformed"
    fake.reset(state)
    r, _ = await probe(target(fake))
    # The SDK turns an unparseable 200 body into {} once it has read it (resp.length is then 0);
    # the probe's required-field check catches that.
    assert (r.reason.value, r.message) == ("invalid_json", "GET /v2/status: a required field is missing or not a number")


async def test_hang_ends_at_the_deadline(fake):
    state = healthy_state(TOKEN)
    state["fault"] = "hang"
    fake.reset(state)
    started = time.monotonic()
    r, _ = await probe(target(fake, timeout="1s"))
    assert (r.success, r.reason.value) == (False, "timeout")
    assert time.monotonic() - started < 5  # the fake hangs for good: the 1 s deadline ended it


async def test_refused_node():
    t = parse_config("targets:\n  - {name: c, kind: algorand, algod_url: 'http://127.0.0.1:1'}\n").targets[0]
    r, text = await probe(t)
    assert (r.reason.value, r.message) == ("connection_refused", "GET /health: connection refused")
    assert series(text, "node_healthy") == {"": 0}


@pytest.mark.parametrize("body,error", [
    (f"accounts: [{{alias: admin, address: {ADMIN[:-1]}N}}]", "is not a valid Algorand address"),
    (f"accounts: [{{alias: admin, address: {ADMIN[:-3]}}}]", "is not a valid Algorand address"),
    ("network: localnet", "network must be one of mainnet-v1.0, testnet-v1.0, betanet-v1.0"),
    ("assets: [{alias: t, id: 1, holders: [nobody]}]", 'holder "nobody" is not the alias of a watched account'),
])
def test_config_errors(body, error):
    with pytest.raises(ConfigError) as info:
        parse_config(f"targets:\n  - name: c\n    kind: algorand\n    algod_url: http://x\n    {body}\n")
    assert error in str(info.value)


RUNNER_WATCH = f"""    algod_admin_token: "${{ALGOD_ADMIN_TOKEN}}"
    accounts: [{{alias: validator, address: {PARTICIPANT}, participating: true, incentive_eligible: true}}]
"""


def runner_target(fake, body: str = RUNNER_WATCH):
    text = f"""targets:
  - name: node-runner
    kind: algorand
    timeout: 3s
    algod_url: {fake.algod_url}
    algod_token: "${{ALGOD_TOKEN}}"
    network: testnet-v1.0
{body}"""
    return parse_config(text, env={"ALGOD_TOKEN": TOKEN, "ALGOD_ADMIN_TOKEN": TOKEN + "-admin"}).targets[0]


def one(text: str, name: str, account: str = "validator") -> float | None:
    values = series(text, name)
    return values.get(f'account="{account}"', values.get("", None))


async def test_a_healthy_participating_node_and_account(fake):
    fake.reset(node_runner_state(TOKEN))
    r, text = await probe(runner_target(fake))
    assert r.success, r.message
    assert one(text, "account_online") == 1 and one(text, "participation_key_on_node") == 1
    assert one(text, "participation_key_expires_in_rounds") == 1_000_000
    # the round time is measured from block timestamps (the fake's 2.85 s, to the second's truncation)
    assert series(text, "round_duration_seconds")[""] == pytest.approx(2.85, abs=0.002)
    assert one(text, "participation_key_expires_in_seconds") == pytest.approx(1_000_000 * 2.85, rel=0.001)
    assert one(text, "participation_rounds_since_last_vote") == 2
    assert one(text, "participation_rounds_since_last_proposal") == 100
    # absence window: 20 x online stake / account stake = 20 x 2e15 / 1e12 rounds; last seen 100 rounds ago
    assert one(text, "participation_absence_window_rounds") == 40_000
    assert one(text, "participation_absence_elapsed_ratio") == pytest.approx(100 / 40_000)
    assert one(text, "account_incentive_eligible") == 1 and one(text, "account_in_payout_band") == 1
    assert series(text, "upgrade_pending")[""] == 0 and series(text, "upgrade_supported")[""] == 1
    assert not r.samples or all(f.healthy is None or v == f.healthy for f, _, v in r.samples)


@pytest.mark.parametrize("change, metric, value, failing", [
    (lambda s: s["accounts"][PARTICIPANT]["participation"].update({"vote-last-valid": s["last_round"] + 50_000}),
     "participation_key_expires_in_rounds", 50_000, "participation_key_lasts"),
    (lambda s: s.update({"participation_keys": []}), "participation_key_on_node", 0,
     "participation_key_on_node"),
    (lambda s: s["participation_keys"][0]["key"].update({"vote-participation-key": "b3RoZXIta2V5LTAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="}),
     "participation_key_on_node", 0, "participation_key_on_node"),
    (lambda s: s["participation_keys"][0].update({"last-vote": s["last_round"] - 5_000}),
     "participation_rounds_since_last_vote", 5_000, "participation_voting"),
    (lambda s: s["accounts"][PARTICIPANT].update({"last-proposed": s["last_round"] - 30_000}),
     "participation_absence_elapsed_ratio", 0.75, "participation_present"),
    (lambda s: s["accounts"][PARTICIPANT].update({"status": "Offline", "incentive-eligible": False}),
     "account_online", 0, "account_online"),
    (lambda s: s["accounts"][PARTICIPANT].update({"incentive-eligible": False}), "account_incentive_eligible", 0, None),
])
async def test_each_participation_problem_is_its_own_signal(fake, change, metric, value, failing):
    state = node_runner_state(TOKEN)
    change(state)
    fake.reset(state)
    r, text = await probe(runner_target(fake))
    assert r.success, r.message  # the node answers: the problem is the account's, a check, not a probe failure
    assert one(text, metric) == pytest.approx(value)
    checks = [c for c in r.samples if c[0].healthy is not None and c[2] != c[0].healthy]
    assert [c[0].name.removeprefix("stackwatch_algorand_") for c in checks] == ([failing] if failing else [])


async def test_a_protocol_upgrade_the_node_does_not_support(fake):
    state = node_runner_state(TOKEN)
    state["upgrade"] = {"rounds": 10_000, "supported": False}
    fake.reset(state)
    r, text = await probe(runner_target(fake))
    assert series(text, "upgrade_pending")[""] == 1 and series(text, "upgrade_supported")[""] == 0
    assert series(text, "upgrade_in_rounds")[""] == 10_000
    assert series(text, "upgrade_in_seconds")[""] == pytest.approx(28_500, rel=0.001)
    from stackwatch.probes.base import check_words, failing_checks

    words = [check_words(c) for c in failing_checks(r.samples)]
    assert words == ["the node does not support the protocol upgrade the network scheduled"]


async def test_upgrade_votes_and_catchpoint_progress(fake):
    state = node_runner_state(TOKEN)
    state["upgrade_votes"] = {"yes": 7_000, "no": 1_000, "required": 9_000, "rounds_left": 2_000}
    state["catchpoint"] = {"total": 20_000_000, "processed": 5_000_000}
    state["catchup_ns"] = 60_000_000_000
    state["ready"] = 503
    fake.reset(state)
    r, text = await probe(runner_target(fake))
    assert series(text, "upgrade_votes") == {'vote="yes"': 7_000, 'vote="no"': 1_000, 'vote="required"': 9_000}
    assert series(text, "upgrade_vote_rounds_remaining")[""] == 2_000
    assert series(text, "catchpoint_accounts_processed_ratio")[""] == 0.25
    assert not r.success and r.reason.value == "not_synced" and "catching up" in r.message


async def test_the_admin_token_is_needed_for_keys_and_never_shown(fake):
    state = node_runner_state(TOKEN)
    state["admin_token"] = "the-real-admin-token-" + "b" * 40
    fake.reset(state)
    r, text = await probe(runner_target(fake))  # configured with another admin token: refused
    assert not r.success and r.reason.value == "auth" and "GET /v2/participation" in r.message
    assert TOKEN + "-admin" not in r.message + text + "\n".join(r.log)
    # without an admin token the key checks are left out, the rest still runs
    body = f"    accounts: [{{alias: validator, address: {PARTICIPANT}, participating: true}}]\n"
    r, text = await probe(runner_target(fake, body))
    assert r.success and one(text, "participation_key_on_node") is None and one(text, "account_online") == 1
    with pytest.raises(ConfigError, match="inline secrets are not accepted"):
        parse_config(f"targets:\n  - {{name: n, kind: algorand, algod_url: http://x, algod_admin_token: plain-admin}}\n")


async def test_twenty_accounts_and_keys_cost_a_bounded_probe(fake, record_property):
    state = node_runner_state(TOKEN)
    from algosdk import account as algo_account

    accounts = []
    for i in range(20):
        _, address = algo_account.generate_account()
        acct = copy.deepcopy(state["accounts"][PARTICIPANT])
        acct["participation"]["vote-participation-key"] = base64.b64encode(f"vote-key-{i:02d}".encode()).decode()
        state["accounts"][address] = acct
        key = copy.deepcopy(state["participation_keys"][0])
        key.update({"address": address, "id": f"key-{i}"})
        key["key"] = dict(acct["participation"])
        state["participation_keys"].append(key)
        accounts.append(address)
    body = "    algod_admin_token: \"${ALGOD_ADMIN_TOKEN}\"\n    accounts:\n" + "".join(
        f"      - {{alias: v{i}, address: {a}, participating: true}}\n" for i, a in enumerate(accounts))
    fake.reset(state)
    t = runner_target(fake, body)
    r, text = await probe(t)
    assert r.success and all(one(text, "participation_key_on_node", f"v{i}") == 1 for i in range(20))
    first = len(fake.sent)
    fake.sent.clear()
    r, _ = await probe(t)
    again = len(fake.sent)
    # /health, /ready, /versions, /v2/status, params, 20 accounts, supply, participation (+2 block
    # headers for the round time on the first probe, then every 100 rounds)
    assert (first, again) == (7 + 20 + 2, 7 + 20)
    record_property("algod_calls_per_probe_20_accounts", again)


def test_every_fake_response_kind_was_validated():
    """The spec check above ran on every kind of response the scenarios need."""
    must = {("algod", "/v2/assets/{asset-id}", 404), ("algod", "/v2/accounts/{address}", 200),
            ("algod", "/ready", 503), ("algod", "401", 401), ("indexer", "/health", 200),
            ("algod", "/v2/transactions/pending/{txid}", 404), ("indexer", "/v2/transactions/{txid}", 200),
            ("algod", "/v2/ledger/supply", 200), ("algod", "/v2/blocks/{round}", 200), ("algod", "/v2/participation", 200)}
    assert must <= SEEN


async def test_a_pending_transactions_age_survives_a_restart(fake, tmp_path):
    """The first-seen time is in the state store (a real SQLite file): an exporter restarted
    while a transaction is stuck keeps counting from when it was first seen, not from zero."""
    from stackwatch.probes import algorand
    from stackwatch.runner import Probers
    from stackwatch.state import StateStore

    state = healthy_state(TOKEN)
    state["pending"] = {CREATE_TXID: {"pool-error": ""}}
    fake.reset(state)
    t = target(fake, SEED_WATCH)
    path = str(tmp_path / "state.db")
    ages = []
    for _run in range(2):  # two exporter lifetimes on one store
        store = StateStore.open(path)
        probers = Probers({"algorand": algorand.KIND})
        probers.states["algorand"].use_store(store)
        probers.reload(type("C", (), {"targets": (t,)})())
        r = await probers.run(t)
        ages.append(series("".join(render_result(t, r).values()), "transaction_pending_seconds")[
            'transaction="pam-token-create"'])
        await probers.close()
        store.close()  # (the first-seen write was queued by the probe; close drains the queue)
        time.sleep(0.3)
    assert ages[1] >= ages[0] + 0.3
    # confirmed: the entry is gone from the store too
    fake.reset(healthy_state(TOKEN))
    store = StateStore.open(path)
    probers = Probers({"algorand": algorand.KIND})
    probers.states["algorand"].use_store(store)
    await probers.run(t)
    await probers.close()
    store.close()
    reopened = StateStore.open(path)
    try:
        assert reopened.values(algorand.PENDING_NAMESPACE) == {}
    finally:
        reopened.close()
