"""A fake algod and indexer, for `stackwatch demo` and the tests (no Algorand node is reachable here).

It answers with the shapes of the official specs (copies in tests/data/algorand-specs/) and the server
behaviours that folder's README lists: /health, /ready and /versions need no token; /health is
``null``; /ready answers 200, 503 or 500 with a ``null`` body; /v2 needs X-Algo-API-Token and a
bad one gets 401 {"message":"Invalid API Token"}; 404 messages are the server's; an address
never funded is 200 with amount 0 and min-balance 100000.  Every response it sends is recorded,
and tests/test_algorand_probe.py validates them against the spec's schemas so the fake cannot
drift from the real API.  Not a node: it serves fixed scenarios (healthy, seed 000, faults).
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from aiohttp import web

TESTNET_HASH = "SGO1GKSzyE7IEPItTxCByw9x8FmnrCDexi9/cOUJOiI="
MAINNET_HASH = "wGHE2Pwdvd7S12BL5FaOP20EGYesN73ktiC1qzkkit8="
ADMIN = "MM7ZDYCD4RD5CVUO5RO6NAA7K7S7T7REFYEVQJ5AGQWVB63G7JD66SDKBM"
PAM_ASSET = 746418487
CREATE_TXID = "TXNCREATEPAMTOKEN2222222222222222222222222222222222A"
PROTOCOL = "https://github.com/algorandfoundation/specs/tree/953304de35264fc3ef91bcd05c123242015eeaed"
NEXT_PROTOCOL = "https://github.com/algorandfoundation/specs/tree/236dcc18c9c507d794813ab768e467ea42d1b4d9"


def healthy_state(token: str) -> dict[str, Any]:
    return {
        "token": token, "genesis_id": "testnet-v1.0", "genesis_hash": TESTNET_HASH,
        "last_round": 58291734, "since_last_round_ns": 1_432_987_654, "catchup_ns": 0, "stopped": False,
        "ready": 200, "min_fee": 1000,
        "accounts": {ADMIN: {"amount": 5_000_000, "min-balance": 200_000, "total-assets-opted-in": 1,
                             "total-created-assets": 1}},
        "assets": {PAM_ASSET: {"creator": ADMIN, "decimals": 6, "total": 1_000_000_000, "unit-name": "PAM",
                               "name": "PAM-TALK Token", "manager": ADMIN, "reserve": ADMIN, "default-frozen": False}},
        "holdings": {(ADMIN, PAM_ASSET): {"amount": 1_000_000_000, "asset-id": PAM_ASSET, "is-frozen": False}},
        "pending": {CREATE_TXID: {"confirmed-round": 58291736, "asset-index": PAM_ASSET, "pool-error": ""}},
        "indexer_round": 58291730, "indexer_db": True, "indexer_confirmed": {},
        "fault": None,  # None | "status500" | "hang" | "malformed"
        # consensus participation (node runners)
        "admin_token": token + "-admin", "round_seconds": 2.85, "genesis_ts": 1_650_000_000,
        "online_stake": 2_000_000_000_000_000, "upgrade": None,  # None | {"rounds": N, "supported": bool}
        "participation_keys": [],
    }


PARTICIPANT = "XQJEJECPWUOXSKMIC5TCSARPVGHQJIIOKHO7WTKEPPLJMKG3D7VWWID66E"
VOTE_KEY = "dm90ZS1wYXJ0aWNpcGF0aW9uLWtleS0wMDAwMDAwMDA="
SELECTION_KEY = "c2VsZWN0aW9uLXBhcnRpY2lwYXRpb24ta2V5LTAwMDA="
STATE_PROOF_KEY = "c3RhdGUtcHJvb2Yta2V5LTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="


def node_runner_state(token: str, expires_in_rounds: int = 1_000_000, rounds_since_seen: int = 100,
                      stake_algo: int = 1_000_000) -> dict[str, Any]:
    """A node keeping one account online: its key valid for ``expires_in_rounds`` more rounds and
    held by the node, last seen (proposal) ``rounds_since_seen`` rounds ago, ``stake_algo`` staked."""
    s = healthy_state(token)
    last = s["last_round"]
    participation = {"selection-participation-key": SELECTION_KEY, "vote-participation-key": VOTE_KEY,
                     "state-proof-key": STATE_PROOF_KEY, "vote-first-valid": last - 100_000,
                     "vote-last-valid": last + expires_in_rounds, "vote-key-dilution": 1733}
    s["accounts"][PARTICIPANT] = {
        "amount": stake_algo * 1_000_000, "min-balance": 100_000, "status": "Online", "participation": participation,
        "incentive-eligible": True, "last-proposed": last - rounds_since_seen, "last-heartbeat": last - 50_000}
    s["participation_keys"] = [{
        "id": "c2ItMDAwMDAxLXBhcnRpY2lwYXRpb24taWQtMDAwMDAwMDA", "address": PARTICIPANT,
        "effective-first-valid": last - 99_680, "effective-last-valid": last + expires_in_rounds,
        "last-vote": last - 2, "last-block-proposal": last - rounds_since_seen, "key": dict(participation)}]
    return s


def seed_000_state(token: str) -> dict[str, Any]:
    """PAM-TALK on 2025-xx: the token's creation never confirmed, the admin account holds 0 ALGO."""
    s = healthy_state(token)
    s["accounts"] = {}  # never funded: algod answers 200 with amount 0
    s["assets"] = {}
    s["holdings"] = {}
    s["pending"] = {}
    return s


class FakeAlgorand:
    """Two aiohttp apps (algod, indexer) answering from a mutable scenario ``state``."""

    def __init__(self, token: str, state: dict[str, Any] | None = None, record: bool = True):
        self.state = state or healthy_state(token)
        self.record = record  # keep every response sent (for spec validation in tests)
        self.sent: list[tuple[str, str, int, Any]] = []  # (server, route, status, body)
        self.algod_port = 0
        self.indexer_port = 0
        self.runners: list[web.AppRunner] = []

    @property
    def algod_url(self) -> str:
        return f"http://127.0.0.1:{self.algod_port}"

    @property
    def indexer_url(self) -> str:
        return f"http://127.0.0.1:{self.indexer_port}"

    def reset(self, state: dict[str, Any]) -> None:
        self.state = state
        self.sent.clear()

    # ------------------------------------------------------------------ helpers

    def _reply(self, server: str, route: str, status: int, body: Any) -> web.Response:
        if self.record:
            self.sent.append((server, route, status, copy.deepcopy(body)))
        return web.Response(status=status, text=json.dumps(body) + "\n", content_type="application/json")

    def _error(self, route: str, status: int, message: str) -> web.Response:
        return self._reply("algod", route, status, {"message": message})

    async def _fault(self, route: str) -> web.Response | None:
        fault = self.state["fault"]
        if fault == "hang":
            await asyncio.sleep(5)  # longer than any test timeout
        if fault == "malformed" and route.startswith("/v2"):
            return web.Response(status=200, text='{"last-round": 58291734, ', content_type="application/json")
        if fault == "status500" and route == "/v2/status":
            return self._error(route, 500, "failed retrieving node status")
        return None

    def _authorised(self, request: web.Request, admin: bool = False) -> bool:
        token = request.headers.get("X-Algo-API-Token")
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        wanted = self.state["admin_token"] if admin else self.state["token"]
        # algod's admin token also opens the public endpoints
        return wanted in (token, bearer) or (not admin and self.state["admin_token"] in (token, bearer))

    # ------------------------------------------------------------------ algod

    async def _algod(self, request: web.Request) -> web.Response:
        path = request.path
        s = self.state
        if path == "/health":
            return self._reply("algod", "/health", 200, None)
        if path == "/ready":
            return self._reply("algod", "/ready", s["ready"], None)
        if path == "/versions":
            return self._reply("algod", "/versions", 200, {
                "versions": ["v2"], "genesis_id": s["genesis_id"], "genesis_hash_b64": s["genesis_hash"],
                "build": {"major": 4, "minor": 3, "build_number": 0, "commit_hash": "0123abcd", "branch": "rel/stable",
                          "channel": "stable"}})
        if not path.startswith("/v2/"):
            return self._error(path, 404, "Not Found")
        if not self._authorised(request, admin=path.startswith("/v2/participation")):
            return self._error("401", 401, "Invalid API Token")
        faulty = await self._fault(path)
        if faulty is not None:
            return faulty
        parts = path.split("/")[2:]
        if parts == ["status"]:
            upgrade = s.get("upgrade")
            body = {
                "catchup-time": s["catchup_ns"], "last-round": s["last_round"], "last-version": PROTOCOL,
                "next-version": PROTOCOL, "next-version-round": s["last_round"] + 1, "next-version-supported": True,
                "stopped-at-unsupported-round": s["stopped"], "time-since-last-round": s["since_last_round_ns"],
                "last-catchpoint": "", "catchpoint": ""}
            if upgrade:
                body.update({"next-version": NEXT_PROTOCOL, "next-version-round": s["last_round"] + upgrade["rounds"],
                             "next-version-supported": upgrade["supported"]})
            votes = s.get("upgrade_votes")
            if votes:  # an upgrade proposal being voted on
                body.update({"upgrade-yes-votes": votes["yes"], "upgrade-no-votes": votes["no"],
                             "upgrade-votes": votes["yes"] + votes["no"], "upgrade-votes-required": votes["required"],
                             "upgrade-vote-rounds": 10_000, "upgrade-delay": 140_000, "upgrade-node-vote": True,
                             "upgrade-next-protocol-vote-before": s["last_round"] + votes["rounds_left"]})
            catchpoint = s.get("catchpoint")
            if catchpoint:  # fast catch-up in progress
                body.update({"catchpoint": "58290000#ABCDEFGHIJKLMNOPQRSTUVWXYZ234567ABCDEFGHIJKLMNOPQRST",
                             "catchpoint-total-accounts": catchpoint["total"],
                             "catchpoint-processed-accounts": catchpoint["processed"],
                             "catchpoint-verified-accounts": 0, "catchpoint-total-blocks": 1000,
                             "catchpoint-acquired-blocks": 0, "catchpoint-total-kvs": 0, "catchpoint-processed-kvs": 0,
                             "catchpoint-verified-kvs": 0})
            return self._reply("algod", "/v2/status", 200, body)
        if parts == ["ledger", "supply"]:
            return self._reply("algod", "/v2/ledger/supply", 200, {
                "current_round": s["last_round"], "online-money": s["online_stake"], "online-stake": s["online_stake"],
                "total-money": 10_000_000_000_000_000})
        if len(parts) == 2 and parts[0] == "blocks" and parts[1].isdigit():
            rnd = int(parts[1])
            if rnd > s["last_round"]:
                return self._error("/v2/blocks/{round}", 404, "failed to retrieve information from the ledger")
            return self._reply("algod", "/v2/blocks/{round}", 200, {"block": {
                "rnd": rnd, "ts": int(s["genesis_ts"] + rnd * s["round_seconds"]), "gen": s["genesis_id"],
                "gh": s["genesis_hash"]}})
        if parts == ["participation"]:
            return self._reply("algod", "/v2/participation", 200, copy.deepcopy(s["participation_keys"]))
        if parts == ["transactions", "params"]:
            return self._reply("algod", "/v2/transactions/params", 200, {
                "consensus-version": PROTOCOL, "fee": 0, "genesis-hash": s["genesis_hash"], "genesis-id": s["genesis_id"],
                "last-round": s["last_round"], "min-fee": s["min_fee"]})
        if len(parts) == 2 and parts[0] == "accounts":
            a = s["accounts"].get(parts[1], {})
            body = {
                "address": parts[1], "amount": a.get("amount", 0), "amount-without-pending-rewards": a.get("amount", 0),
                "min-balance": a.get("min-balance", 100_000), "pending-rewards": 0, "rewards": 0, "round": s["last_round"],
                "status": a.get("status", "Offline"), "total-apps-opted-in": 0,
                "total-assets-opted-in": a.get("total-assets-opted-in", 0),
                "total-created-apps": 0, "total-created-assets": a.get("total-created-assets", 0)}
            for key in ("participation", "incentive-eligible", "last-proposed", "last-heartbeat"):
                if key in a:
                    body[key] = copy.deepcopy(a[key])
            return self._reply("algod", "/v2/accounts/{address}", 200, body)
        if len(parts) == 2 and parts[0] == "assets":
            asset = s["assets"].get(int(parts[1]))
            if asset is None:
                return self._error("/v2/assets/{asset-id}", 404, "asset does not exist")
            return self._reply("algod", "/v2/assets/{asset-id}", 200, {"index": int(parts[1]), "params": asset})
        if len(parts) == 4 and parts[0] == "accounts" and parts[2] == "assets":
            holding = s["holdings"].get((parts[1], int(parts[3])))
            if holding is None:
                return self._error("/v2/accounts/{address}/assets/{asset-id}", 404, "account asset info not found")
            return self._reply("algod", "/v2/accounts/{address}/assets/{asset-id}", 200,
                               {"round": s["last_round"], "asset-holding": holding})
        if len(parts) == 3 and parts[:2] == ["transactions", "pending"]:
            found = s["pending"].get(parts[2])
            if found is None:
                return self._error("/v2/transactions/pending/{txid}", 404,
                                   "could not find the transaction in the transaction pool or in the last 1000 confirmed rounds")
            txn = {"sig": "c2ln", "txn": {"type": "acfg", "snd": ADMIN, "fee": 1000, "fv": 58291700, "lv": 58292700,
                                          "gen": s["genesis_id"], "gh": s["genesis_hash"]}}
            return self._reply("algod", "/v2/transactions/pending/{txid}", 200, {**found, "txn": txn})
        return self._error(path, 404, "Not Found")

    # ------------------------------------------------------------------ indexer

    async def _indexer(self, request: web.Request) -> web.Response:
        s = self.state
        if request.path == "/health":
            return self._reply("indexer", "/health", 200, {
                "version": "3.9.0", "message": str(s["indexer_round"]), "round": s["indexer_round"],
                "is-migrating": False, "db-available": s["indexer_db"]})
        parts = request.path.split("/")[2:]
        if len(parts) == 2 and parts[0] == "transactions":
            rnd = s["indexer_confirmed"].get(parts[1])
            if rnd is None:
                return self._reply("indexer", "/v2/transactions/{txid}", 404,
                                   {"message": f"no transaction found for transaction id: {parts[1]}"})
            return self._reply("indexer", "/v2/transactions/{txid}", 200, {"current-round": s["indexer_round"], "transaction": {
                "id": parts[1], "confirmed-round": rnd, "fee": 1000, "first-valid": rnd - 10, "last-valid": rnd + 990,
                "sender": ADMIN, "tx-type": "acfg", "round-time": 1700000000, "intra-round-offset": 0,
                "close-rewards": 0, "closing-amount": 0, "receiver-rewards": 0, "sender-rewards": 0,
                "created-asset-index": PAM_ASSET, "asset-config-transaction": {"asset-id": 0}}})
        return self._reply("indexer", request.path, 404, {"message": "Not Found"})

    async def start(self, algod_port: int, indexer_port: int, host: str = "127.0.0.1") -> None:
        self.algod_port, self.indexer_port = algod_port, indexer_port
        for handler, port in ((self._algod, algod_port), (self._indexer, indexer_port)):
            app = web.Application()
            app.router.add_route("GET", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            self.runners.append(runner)

    async def start_on(self, algod_sock: Any, indexer_sock: Any) -> None:
        """Serve on sockets already bound (the caller chose the ports without a race)."""
        self.algod_port, self.indexer_port = algod_sock.getsockname()[1], indexer_sock.getsockname()[1]
        for handler, sock in ((self._algod, algod_sock), (self._indexer, indexer_sock)):
            app = web.Application()
            app.router.add_route("GET", "/{tail:.*}", handler)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            self.runners.append(runner)

    async def stop(self) -> None:
        for r in self.runners:
            await r.cleanup()
