"""kind: algorand -- an algod node (and optionally an indexer): sync, network, accounts, assets, transactions.

Typical failures it turns into metrics: a token whose creation transaction never confirmed (the
asset does not exist), an admin account holding 0 ALGO so nothing can pay a fee, a node on the
wrong network or catching up.  THRESHOLDS.md B1-B4.

py-algorand-sdk's clients are blocking (urllib): calls run in a small thread pool, each with the
probe's remaining budget as its socket timeout, under the scheduler's deadline.  SDK defects
guarded here: ``ready()`` crashes with AttributeError on 503/500 (their body is ``null``), so
/ready is read with urllib directly; refusals and timeouts arrive as raw URLError/TimeoutError;
a trailing slash in the address would give ``//v2`` paths.  Amounts are microAlgos.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator

from stackwatch.config import Duration, Model, Secret, TargetConfig, secret_from
from stackwatch.probes.base import (
    Family,
    KindState,
    ProbeContext,
    ProbeFailure,
    ProbeKind,
    ProbeResult,
    Reason,
    run_blocking,
    sanitize_label_value,
)
from stackwatch.probes.blocking import BlockingRunner
from stackwatch.redact import EnvStr, redact_url

POOL_WORKERS = 8

NETWORKS = {
    "mainnet-v1.0": "wGHE2Pwdvd7S12BL5FaOP20EGYesN73ktiC1qzkkit8=",
    "testnet-v1.0": "SGO1GKSzyE7IEPItTxCByw9x8FmnrCDexi9/cOUJOiI=",
    "betanet-v1.0": "mFgazF+2uRS1tMiL9dsj01hJGySEmPN28B/TjjvpVW0=",
}


def _address(v: Any) -> str:
    from algosdk import encoding  # imported with the first Algorand target (~15 MB)
    # is_valid_address accepts both values of the last character's 2 padding bits; a
    # decode/encode round trip does not.
    if not isinstance(v, str) or not encoding.is_valid_address(v) or encoding.encode_address(encoding.decode_address(v)) != v:
        raise ValueError(f'"{v}" is not a valid Algorand address (58 characters, base32, with a matching checksum)')
    return v


class Account(Model):
    alias: str
    address: str
    min_balance_algo: float | None = Field(None, ge=0)
    """Floor in ALGO: below it the account is reported as underfunded (THRESHOLDS.md B2)."""
    participating: bool = False
    """Expected online in consensus, voting with keys this node holds: the participation checks
    (key expiry, key on the node, votes, absence, suspension) apply to it."""
    incentive_eligible: bool = False
    """Expected eligible for block payouts (went online paying the extra fee): alert if it is not."""

    @field_validator("address")
    @classmethod
    def _valid(cls, v: str) -> str:
        return _address(v)


class Asset(Model):
    alias: str
    id: int = Field(ge=1)
    creator: str | None = None
    """Expected creator: asset and application ids share one counter, so a 200 alone can be
    somebody else's asset."""
    holders: list[str] = Field(default_factory=list)
    """Aliases of watched accounts whose holding of this asset is exported."""

    @field_validator("creator")
    @classmethod
    def _valid(cls, v: str | None) -> str | None:
        return v if v is None else _address(v)


class Transaction(Model):
    alias: str
    txid: str = Field(pattern=r"^[A-Z2-7]{52}$")
    max_pending: Duration = 600.0
    """Pending longer than this is stuck (THRESHOLDS.md B3); exported for the alert to compare."""


class Participation(Model):
    """Thresholds of the participation checks (THRESHOLDS.md B6-B9), per target."""

    key_expiry_warning: Duration = Field(14 * 86400.0, gt=0)
    key_expiry_critical: Duration = Field(2 * 86400.0, gt=0)
    max_rounds_without_vote: int = Field(1000, ge=1)
    """A key of an online account that has not voted for this many rounds is "not voting"."""
    suspension_risk: float = Field(0.5, gt=0, lt=1)
    """Share of the absence window (see docs) elapsed since the account was last seen, past which
    it is at risk of suspension."""

    @model_validator(mode="after")
    def _order(self) -> Participation:
        if self.key_expiry_critical >= self.key_expiry_warning:
            raise ValueError("key_expiry_critical must be shorter than key_expiry_warning")
        return self


class AlgorandTarget(TargetConfig):
    """An algod endpoint plus what to watch on it."""

    kind: Literal["algorand"]
    algod_url: str
    algod_token: Secret | None = None
    algod_token_file: str | None = None
    algod_admin_token: Secret | None = None
    algod_admin_token_file: str | None = None
    """algod's admin API token, for the participation keys the node holds (GET /v2/participation)."""
    indexer_url: str | None = None
    indexer_token: Secret | None = None
    indexer_token_file: str | None = None
    network: str | None = None
    """testnet-v1.0, mainnet-v1.0, betanet-v1.0, or a genesis hash (base64)."""
    max_round_age: Duration = 60.0
    """The node counts as stalled when its last round is older than this (THRESHOLDS.md B4)."""
    max_indexer_lag_rounds: int = Field(100, ge=0)
    accounts: list[Account] = Field(default_factory=list)
    assets: list[Asset] = Field(default_factory=list)
    transactions: list[Transaction] = Field(default_factory=list)
    participation: Participation = Field(default_factory=Participation)

    @field_validator("algod_url", "indexer_url", mode="before")
    @classmethod
    def _url(cls, v: Any) -> Any:
        if not isinstance(v, str):
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError(f'expected an http:// or https:// URL, got "{redact_url(v)[:200]}"')
        try:
            password = urlsplit(v).password
        except ValueError:
            raise ValueError(f'expected an http:// or https:// URL, got "{redact_url(v)[:200]}"') from None
        if password and not isinstance(v, EnvStr):
            raise ValueError("a password in the URL is not accepted; use algod_token or a URL that comes "
                             "whole from ${ENV_VAR}")
        stripped = v.rstrip("/")  # the SDK concatenates: a trailing slash gives //v2/...
        return EnvStr(stripped) if isinstance(v, EnvStr) else stripped

    def extra_secrets(self) -> list[str]:
        out = []
        for url in (self.algod_url, self.indexer_url):
            try:
                password = urlsplit(url).password if url else None
            except ValueError:
                password = None
            if password:
                out.extend([password, unquote(password)])
        return out

    @model_validator(mode="after")
    def _prepare(self) -> AlgorandTarget:
        object.__setattr__(self, "algod_token", secret_from(self.algod_token, self.algod_token_file, "algod_token"))
        object.__setattr__(self, "indexer_token",
                           secret_from(self.indexer_token, self.indexer_token_file, "indexer_token"))
        object.__setattr__(self, "algod_admin_token",
                           secret_from(self.algod_admin_token, self.algod_admin_token_file, "algod_admin_token"))
        aliases = {a.alias for a in self.accounts}
        if len(aliases) != len(self.accounts):
            raise ValueError("account aliases must be unique")
        for a in self.assets:
            missing = [h for h in a.holders if h not in aliases]
            if missing:
                raise ValueError(f'asset {a.alias}: holder "{missing[0]}" is not the alias of a watched account')
        if self.network and self.network not in NETWORKS and len(self.network) != 44:
            raise ValueError(f'network must be one of {", ".join(NETWORKS)} or a base64 genesis hash, got "{self.network}"')
        return self


# ------------------------------------------------------------------ metrics

P = "stackwatch_algorand_"
HEALTHY = Family(P + "node_healthy", "gauge", "1 if algod's /health answered 200.")
READY = Family(P + "node_ready", "gauge", "1 if /ready answered 200 (503: catching up; 500: stopped or failing).")
READY_CODE = Family(P + "node_ready_status_code", "gauge", "HTTP status of /ready.")
NODE_INFO = Family(P + "node_info", "gauge", "Genesis id and hash and algod build of the node (value 1).")
NET_MATCH = Family(P + "network_match", "gauge", "1 if the node is on the configured network (genesis id or hash).", healthy=1, failing="the node is on another network than the one configured")
LAST_ROUND = Family(P + "last_round", "gauge", "Last round the node has.")
ROUND_AGE = Family(P + "time_since_last_round_seconds", "gauge", "Time since the node's last round.")
CATCHUP = Family(P + "catchup_time_seconds", "gauge", "Time spent catching up (0 when in sync).")
STOPPED = Family(P + "stopped_at_unsupported_round", "gauge", "1 if the node stopped at a round its protocol cannot follow.")
MIN_FEE = Family(P + "min_fee_microalgos", "gauge", "Minimum transaction fee (from /v2/transactions/params).")
BALANCE = Family(P + "account_balance_microalgos", "gauge", "Account balance.")
MIN_BAL = Family(P + "account_min_balance_microalgos", "gauge", "Minimum balance the account must keep.")
SPENDABLE = Family(P + "account_spendable_microalgos", "gauge", "Balance minus minimum balance, floored at 0.")
HEADROOM = Family(P + "account_fee_headroom_transactions", "gauge",
                  "How many minimum-fee transactions the spendable balance can pay (0: cannot pay fees).")
FLOOR = Family(P + "account_floor_microalgos", "gauge", "The configured floor for the account's balance.")
FUNDED = Family(P + "account_above_floor", "gauge", "1 if the balance is at or above the configured floor.", healthy=1, failing="account {account} is below its balance floor")
EXISTS = Family(P + "asset_exists", "gauge", "1 if the asset exists on the node's network (0: 404, never created or destroyed).", healthy=1, failing="asset {asset} does not exist on this network (never created, or destroyed)")
CREATOR_OK = Family(P + "asset_creator_match", "gauge", "1 if the asset's creator is the expected address.", healthy=1, failing="asset {asset} was not created by the expected address")
TOTAL = Family(P + "asset_total_base_units", "gauge", "Total supply of the asset in base units (float64: exact up to 2^53).")
DECIMALS = Family(P + "asset_decimals", "gauge", "Decimals of the asset.")
ASSET_INFO = Family(P + "asset_info", "gauge", "Unit name and name of the asset (value 1).")
OPTED_IN = Family(P + "asset_opted_in", "gauge", "1 if the account holds (is opted in to) the asset.", healthy=1, failing="account {account} is not opted in to asset {asset}")
HOLDING = Family(P + "asset_holding_base_units", "gauge", "The account's amount of the asset, in base units.")
FROZEN = Family(P + "asset_holding_frozen", "gauge", "1 if the account's holding of the asset is frozen.")
TX_STATE = Family(P + "transaction_state", "gauge", "1 for the transaction's current state: confirmed, pending, rejected or unknown.")
TX_ROUND = Family(P + "transaction_confirmed_round", "gauge", "Round the transaction was confirmed in.")
TX_PENDING = Family(P + "transaction_pending_seconds", "gauge", "How long the transaction has been pending since stackwatch first saw it.")
TX_MAX_PENDING = Family(P + "transaction_max_pending_seconds", "gauge", "The configured age past which a pending transaction is stuck.")
IDX_UP = Family(P + "indexer_up", "gauge", "1 if the indexer's /health answered.")
IDX_DB = Family(P + "indexer_db_available", "gauge", "1 if the indexer reports its database available.")
IDX_MIGRATING = Family(P + "indexer_migrating", "gauge", "1 if the indexer is migrating.")
IDX_ROUND = Family(P + "indexer_round", "gauge", "Last round the indexer has imported.")
IDX_LAG = Family(P + "indexer_lag_rounds", "gauge", "Rounds the indexer is behind algod.")

TX_STATES = ("confirmed", "pending", "rejected", "unknown")

# node: protocol upgrades, catchpoint catch-up, the round time measured from block timestamps
UPGRADE_PENDING = Family(P + "upgrade_pending", "gauge", "1 if the network has scheduled a protocol upgrade (next-version differs).")
UPGRADE_SUPPORTED = Family(P + "upgrade_supported", "gauge", "1 if this node's algod supports the next protocol version.",
                           healthy=1, failing="the node does not support the protocol upgrade the network scheduled")
UPGRADE_ROUNDS = Family(P + "upgrade_in_rounds", "gauge", "Rounds until the scheduled protocol upgrade takes effect.")
UPGRADE_SECONDS = Family(P + "upgrade_in_seconds", "gauge", "Seconds until the scheduled upgrade (rounds x measured round time).")
UPGRADE_VOTES = Family(P + "upgrade_votes", "gauge", "Votes on the protocol upgrade proposal being voted on (vote: yes, no, required).")
UPGRADE_VOTE_LEFT = Family(P + "upgrade_vote_rounds_remaining", "gauge", "Rounds left in the upgrade proposal's voting period.")
CATCHPOINT = Family(P + "catchpoint_accounts_processed_ratio", "gauge", "Share of the catchpoint's accounts processed while fast catch-up runs.")
ROUND_TIME = Family(P + "round_duration_seconds", "gauge", "Average round time over the last 1,000 rounds, from block timestamps.")
ONLINE_STAKE = Family(P + "online_stake_microalgos", "gauge", "Stake online in consensus (GET /v2/ledger/supply).")
# accounts expected to participate (accounts[].participating)
ONLINE = Family(P + "account_online", "gauge", "1 if the account's status is Online.", healthy=1,
                failing="account {account} is not online in consensus")
KEY_LAST_VALID = Family(P + "participation_key_last_valid_round", "gauge", "Last round the account's registered participation key is valid for.")
KEY_EXPIRES_ROUNDS = Family(P + "participation_key_expires_in_rounds", "gauge", "Rounds until the registered key expires (negative: expired).")
KEY_EXPIRES_SECONDS = Family(P + "participation_key_expires_in_seconds", "gauge", "Seconds until the registered key expires (rounds x measured round time).")
KEY_WARNING = Family(P + "participation_key_expiry_warning_seconds", "gauge", "Configured: warn when the key expires sooner than this.")
KEY_CRITICAL = Family(P + "participation_key_expiry_critical_seconds", "gauge", "Configured: page when the key expires sooner than this.")
KEY_ON_NODE = Family(P + "participation_key_on_node", "gauge",
                     "1 if the node holds the key registered for the account, valid for the current round (needs the admin token).",
                     healthy=1, failing="the node holds no valid participation key registered for account {account}")
SINCE_VOTE = Family(P + "participation_rounds_since_last_vote", "gauge", "Rounds since the node's key for the account last voted.")
MAX_NO_VOTE = Family(P + "participation_max_rounds_without_vote", "gauge", "Configured: rounds without a vote past which the key is not voting.")
SINCE_PROPOSAL = Family(P + "participation_rounds_since_last_proposal", "gauge", "Rounds since the account last proposed a block.")
ABSENCE_WINDOW = Family(P + "participation_absence_window_rounds", "gauge",
                        "Rounds without a proposal or heartbeat after which the protocol suspends the account (about 20 x online stake / account stake).")
ABSENCE_ELAPSED = Family(P + "participation_absence_elapsed_ratio", "gauge", "Share of the absence window elapsed since the account was last seen (proposal or heartbeat).")
RISK = Family(P + "participation_suspension_risk_ratio", "gauge", "Configured: the elapsed share past which suspension is a risk.")
INCENTIVE = Family(P + "account_incentive_eligible", "gauge", "1 if the account is eligible for block payouts.")
INCENTIVE_EXPECTED = Family(P + "account_incentive_expected", "gauge", "Configured: 1 if the account should be eligible for block payouts.")
PAYOUT_BAND = Family(P + "account_in_payout_band", "gauge", "1 if the balance is within the protocol's payout band (30,000 to 70,000,000 ALGO).")

# The same thresholds as checks, so the status page shows the account degraded when an alert fires.
KEY_OK = Family(P + "participation_key_lasts", "gauge", "1 if the registered key lasts longer than key_expiry_warning.",
                healthy=1, failing="the participation key of account {account} expires soon")
VOTING_OK = Family(P + "participation_voting", "gauge", "1 if the key voted within max_rounds_without_vote.",
                   healthy=1, failing="the participation key of account {account} is not voting")
PRESENT_OK = Family(P + "participation_present", "gauge", "1 if less than suspension_risk of the absence window is used.",
                    healthy=1, failing="account {account} risks suspension for absence")

ABSENT_FACTOR = 20
"""go-algorand's absenteeism factor: an online, incentive-eligible account is suspended when it has
neither proposed nor sent a heartbeat for about ABSENT_FACTOR x (online stake / its stake) rounds."""
PAYOUT_MIN, PAYOUT_MAX = 30_000 * 1_000_000, 70_000_000 * 1_000_000
"""The balance band (microAlgos) in which an eligible account earns block payouts (consensus parameters)."""
ROUND_WINDOW = 1000


PENDING_NAMESPACE = "algorand.pending_since"


class AlgorandState(KindState):
    """The kind's thread pool and when each watched transaction was first seen pending."""

    def __init__(self) -> None:
        self.runner = BlockingRunner("algorand")
        self.round_time: dict[str, tuple[int, float]] = {}
        """target -> (round it was measured at, seconds per round over the ROUND_WINDOW before it)"""
        self.pending_since: dict[tuple[str, str], float] = {}
        """(target, transaction alias) -> unix time first seen pending; kept in the state store
        too, so a restart does not make a stuck transaction look freshly sent."""
        self.store: Any = None

    def use_store(self, store: Any) -> None:
        self.store = store
        for key, value in store.keyed_values(PENDING_NAMESPACE, 2).items():
            if isinstance(value, int | float):
                self.pending_since[key] = float(value)  # type: ignore[index]

    def first_pending(self, key: tuple[str, str]) -> float:
        """When the transaction was first seen pending (now, if this is the first time)."""
        first = self.pending_since.get(key)
        if first is None:
            first = self.pending_since[key] = time.time()
            if self.store is not None:
                self.store.put_values(PENDING_NAMESPACE, {key: first})
        return first

    def not_pending(self, key: tuple[str, str]) -> None:
        if self.pending_since.pop(key, None) is not None and self.store is not None:
            self.store.delete_values(PENDING_NAMESPACE, [key])

    def reload(self, targets: list[Any]) -> None:
        alive = {(t.name, tx.alias) for t in targets for tx in t.transactions}
        for key in [k for k in self.pending_since if k not in alive]:
            self.not_pending(key)



# ------------------------------------------------------------------ calls


class _Budget:
    def __init__(self, deadline: float):
        self.deadline = deadline

    def left(self) -> float:
        left = self.deadline - time.monotonic() - 0.02
        if left <= 0:
            raise ProbeFailure(Reason.TIMEOUT, "no time left in the probe's deadline")
        return left


def _classify(exc: BaseException, what: str) -> ProbeFailure:
    from algosdk.error import AlgodHTTPError, AlgodResponseError, IndexerHTTPError
    if isinstance(exc, ProbeFailure):
        return exc
    if isinstance(exc, AlgodHTTPError):
        code = exc.code or 0
        if code == 401:
            return ProbeFailure(Reason.AUTH, f"{what}: HTTP 401 {exc}: the API token was refused")
        return ProbeFailure(Reason.HTTP_STATUS, f"{what}: HTTP {code} {exc}")
    if isinstance(exc, IndexerHTTPError):
        return ProbeFailure(Reason.HTTP_STATUS, f"{what}: {exc}")
    if isinstance(exc, AlgodResponseError | json.JSONDecodeError):
        return ProbeFailure(Reason.INVALID_JSON, f"{what}: the response is not valid JSON")
    if isinstance(exc, AttributeError):  # SDK: an HTTP error whose JSON body is not an object
        return ProbeFailure(Reason.HTTP_STATUS, f"{what}: HTTP error with a body that is not an error object")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ProbeFailure(Reason.TIMEOUT, f"{what}: no answer in time")
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        if isinstance(inner, ConnectionRefusedError):
            return ProbeFailure(Reason.CONNECTION_REFUSED, f"{what}: connection refused")
        if isinstance(inner, socket.gaierror):
            return ProbeFailure(Reason.DNS, f"{what}: cannot resolve the host")
        if isinstance(inner, TimeoutError | socket.timeout):
            return ProbeFailure(Reason.TIMEOUT, f"{what}: no answer in time")
        return ProbeFailure(Reason.CONNECTION, f"{what}: {inner}")
    if isinstance(exc, ValueError):
        return ProbeFailure(Reason.INVALID_JSON, f"{what}: unexpected response: {exc}")
    return ProbeFailure(Reason.INTERNAL, f"{what}: {type(exc).__name__}: {exc}")


def _ready_status(url: str, timeout: float) -> int:
    """GET /ready (no token needed); its error bodies are ``null``, which crashes the SDK."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/ready", headers={"User-Agent": "stackwatch"}),
                                    timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _round_time(t: AlgorandTarget, kind_state: AlgorandState, algod: Any, last_round: int, call: Any) -> float | None:
    """Seconds per round, measured: the timestamps of the last block and of the one ROUND_WINDOW
    rounds before (two header-only block reads), again every ROUND_WINDOW / 10 rounds."""
    cached = kind_state.round_time.get(t.name)
    if cached is not None and last_round - cached[0] < ROUND_WINDOW // 10:
        return cached[1]
    if last_round <= ROUND_WINDOW:
        return cached[1] if cached else None
    newer = call("GET /v2/blocks/{round}", algod.block_info, round_num=last_round, header_only=True)
    older = call("GET /v2/blocks/{round}", algod.block_info, round_num=last_round - ROUND_WINDOW, header_only=True)
    try:
        seconds = (int(newer["block"]["ts"]) - int(older["block"]["ts"])) / ROUND_WINDOW
    except (KeyError, TypeError, ValueError):
        raise ProbeFailure(Reason.INVALID_JSON, "GET /v2/blocks/{round}: the block header has no timestamp") from None
    if seconds <= 0:
        return cached[1] if cached else None
    kind_state.round_time[t.name] = (last_round, seconds)
    return seconds


def _upgrade(status: dict[str, Any], last_round: int, round_time: float | None,
             out: list[tuple[Family, dict[str, str], float]], log: list[str]) -> None:
    pending = bool(status.get("next-version")) and status.get("next-version") != status.get("last-version")
    out.append((UPGRADE_PENDING, {}, 1 if pending else 0))
    out.append((UPGRADE_SUPPORTED, {}, 1 if status.get("next-version-supported", True) else 0))
    if pending:
        rounds = int(status.get("next-version-round") or last_round) - last_round
        out.append((UPGRADE_ROUNDS, {}, rounds))
        if round_time:
            out.append((UPGRADE_SECONDS, {}, rounds * round_time))
        log.append(f"protocol upgrade scheduled in {rounds} rounds; supported: {status.get('next-version-supported')}")
    if status.get("upgrade-votes-required"):
        for vote, key in (("yes", "upgrade-yes-votes"), ("no", "upgrade-no-votes"), ("required", "upgrade-votes-required")):
            out.append((UPGRADE_VOTES, {"vote": vote}, int(status.get(key) or 0)))
        before = int(status.get("upgrade-next-protocol-vote-before") or 0)
        if before:
            out.append((UPGRADE_VOTE_LEFT, {}, max(0, before - last_round)))
    total = int(status.get("catchpoint-total-accounts") or 0)
    if status.get("catchpoint") and total:
        out.append((CATCHPOINT, {}, int(status.get("catchpoint-processed-accounts") or 0) / total))


def _participation(t: AlgorandTarget, algod: Any, infos: dict[str, dict[str, Any]], last_round: int,
                   round_time: float | None, call: Any, out: list[tuple[Family, dict[str, str], float]],
                   log: list[str]) -> None:
    """The checks of accounts expected to participate: key validity and expiry, the key on the
    node and its votes (with the admin token), proposals, the absence window, payouts."""
    cfg = t.participation
    supply = call("GET /v2/ledger/supply", algod.ledger_supply)
    try:
        online_stake = int(supply.get("online-stake") or supply["online-money"])
    except (KeyError, TypeError, ValueError):
        raise ProbeFailure(Reason.INVALID_JSON, "GET /v2/ledger/supply: online-stake is missing or not a number") from None
    out.append((ONLINE_STAKE, {}, online_stake))
    if round_time:
        out.append((ROUND_TIME, {}, round_time))
    keys: list[dict[str, Any]] | None = None
    if t.algod_admin_token is not None:
        from algosdk.v2client.algod import AlgodClient

        admin = AlgodClient(t.algod_admin_token.get_secret_value(), t.algod_url)
        got = call("GET /v2/participation", admin.algod_request, "GET", "/participation")
        keys = [k for k in got if isinstance(k, dict)] if isinstance(got, list) else []
    for a in t.accounts:
        if not a.participating:
            continue
        info, lab = infos[a.alias], {"account": a.alias}
        online = info.get("status") == "Online"
        part = info.get("participation") or {}
        amount = int(info.get("amount", 0))
        out += [(ONLINE, lab, 1 if online else 0), (KEY_WARNING, lab, cfg.key_expiry_warning),
                (KEY_CRITICAL, lab, cfg.key_expiry_critical), (MAX_NO_VOTE, lab, cfg.max_rounds_without_vote),
                (RISK, lab, cfg.suspension_risk), (INCENTIVE, lab, 1 if info.get("incentive-eligible") else 0),
                (INCENTIVE_EXPECTED, lab, 1 if a.incentive_eligible else 0),
                (PAYOUT_BAND, lab, 1 if PAYOUT_MIN <= amount <= PAYOUT_MAX else 0)]
        last_valid = int(part.get("vote-last-valid") or 0)
        if online and last_valid:
            out += [(KEY_LAST_VALID, lab, last_valid), (KEY_EXPIRES_ROUNDS, lab, last_valid - last_round)]
            if round_time:
                left = (last_valid - last_round) * round_time
                out += [(KEY_EXPIRES_SECONDS, lab, left), (KEY_OK, lab, 1 if left >= cfg.key_expiry_warning else 0)]
        if info.get("last-proposed"):
            out.append((SINCE_PROPOSAL, lab, last_round - int(info["last-proposed"])))
        seen = max(int(info.get("last-proposed") or 0), int(info.get("last-heartbeat") or 0))
        if online and amount > 0 and online_stake > 0:
            window = ABSENT_FACTOR * online_stake / amount
            out.append((ABSENCE_WINDOW, lab, window))
            if seen:
                used = (last_round - seen) / window
                out += [(ABSENCE_ELAPSED, lab, used), (PRESENT_OK, lab, 1 if used <= cfg.suspension_risk else 0)]
        if keys is not None and online:
            registered = part.get("vote-participation-key")
            mine = [k for k in keys if k.get("address") == a.address
                    and (k.get("key") or {}).get("vote-participation-key") == registered]
            valid = [k for k in mine if int(k.get("effective-first-valid") or 0) <= last_round
                     <= int(k.get("effective-last-valid") or 0)]
            out.append((KEY_ON_NODE, lab, 1 if valid else 0))
            votes = [int(k["last-vote"]) for k in valid if k.get("last-vote")]
            if votes:
                since = last_round - max(votes)
                out += [(SINCE_VOTE, lab, since), (VOTING_OK, lab, 1 if since <= cfg.max_rounds_without_vote else 0)]
            elif valid:  # registered but never voted yet: count from the key's first valid round
                out.append((SINCE_VOTE, lab, max(0, last_round - int(valid[0].get("effective-first-valid") or last_round))))
        log.append(f"account {a.alias}: {info.get('status')}, key valid to {last_valid or '-'}, "
                   f"incentive-eligible {bool(info.get('incentive-eligible'))}")


def _probe_sync(t: AlgorandTarget, kind_state: AlgorandState, deadline: float, log: list[str],
                out: list[tuple[Family, dict[str, str], float]]) -> tuple[Reason | None, str]:
    """Runs in the Algorand thread pool.  Appends samples to ``out`` as it goes, so a failure
    half-way keeps what was learnt; returns (failure reason or None, message) or raises ProbeFailure."""
    from algosdk.error import AlgodHTTPError, IndexerHTTPError
    from algosdk.v2client.algod import AlgodClient
    from algosdk.v2client.indexer import IndexerClient
    budget = _Budget(deadline)
    token = t.algod_token.get_secret_value() if t.algod_token else ""
    algod = AlgodClient(token, t.algod_url)

    def call(what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, timeout=budget.left(), **kw)
        except Exception as exc:
            raise _classify(exc, what) from None

    # -- node
    try:
        algod.health(timeout=budget.left())
        out.append((HEALTHY, {}, 1))
    except Exception as exc:
        out.append((HEALTHY, {}, 0))
        raise _classify(exc, "GET /health") from None
    ready = call("GET /ready", lambda timeout: _ready_status(t.algod_url, timeout))
    out += [(READY, {}, 1 if ready == 200 else 0), (READY_CODE, {}, ready)]
    versions = call("GET /versions", algod.versions)
    genesis_id, genesis_hash = str(versions.get("genesis_id", "")), str(versions.get("genesis_hash_b64", ""))
    build = versions.get("build") or {}
    out.append((NODE_INFO, {"genesis_id": sanitize_label_value(genesis_id), "genesis_hash": sanitize_label_value(genesis_hash),
                            "version": f"{build.get('major', '?')}.{build.get('minor', '?')}.{build.get('build_number', '?')}"}, 1))
    network_ok = True
    if t.network:
        expected_hash = NETWORKS.get(t.network, t.network)
        network_ok = genesis_hash == expected_hash and (t.network not in NETWORKS or genesis_id == t.network)
        out.append((NET_MATCH, {}, 1 if network_ok else 0))
    status = call("GET /v2/status", algod.status)
    try:
        last_round = int(status["last-round"])
        age = int(status["time-since-last-round"]) / 1e9  # nanoseconds
        catchup = int(status["catchup-time"]) / 1e9
        stopped = bool(status["stopped-at-unsupported-round"])
    except (KeyError, TypeError, ValueError):
        # Also the SDK's answer to a malformed 200 body: it returns {} once the body is consumed.
        raise ProbeFailure(Reason.INVALID_JSON, "GET /v2/status: a required field is missing or not a number") from None
    out += [(LAST_ROUND, {}, last_round), (ROUND_AGE, {}, age), (CATCHUP, {}, catchup), (STOPPED, {}, 1 if stopped else 0)]
    round_time = _round_time(t, kind_state, algod, last_round, call) if any(a.participating for a in t.accounts) \
        or status.get("next-version") != status.get("last-version") else None
    _upgrade(status, last_round, round_time, out, log)
    log.append(f"node {genesis_id} round {last_round}, last round {age:.1f}s ago, ready {ready}")

    min_fee = 1000
    if t.accounts:
        params = call("GET /v2/transactions/params", algod.suggested_params)
        min_fee = int(getattr(params, "min_fee", 1000) or 1000)
        out.append((MIN_FEE, {}, min_fee))

    # -- accounts (an unfunded account is 200 with amount 0: "cannot pay fees", not an error)
    infos: dict[str, dict[str, Any]] = {}
    for a in t.accounts:
        info = call(f"GET /v2/accounts/{a.alias}", algod.account_info, a.address, exclude="all")
        infos[a.alias] = info
        amount, minimum = int(info.get("amount", 0)), int(info.get("min-balance", 0))
        spendable = max(0, amount - minimum)
        lab = {"account": a.alias}
        out += [(BALANCE, lab, amount), (MIN_BAL, lab, minimum), (SPENDABLE, lab, spendable),
                (HEADROOM, lab, spendable // max(1, min_fee))]
        if a.min_balance_algo is not None:
            floor = round(a.min_balance_algo * 1_000_000)
            out += [(FLOOR, lab, floor), (FUNDED, lab, 1 if amount >= floor else 0)]
        log.append(f"account {a.alias}: {amount} µALGO, min {minimum}, can pay {spendable // max(1, min_fee)} fees")

    if any(a.participating for a in t.accounts):
        _participation(t, algod, infos, last_round, round_time, call, out, log)

    # -- assets (404 "asset does not exist" is an answer, not a failure)
    by_alias = {a.alias: a for a in t.accounts}
    for asset in t.assets:
        lab = {"asset": asset.alias}
        try:
            info = algod.asset_info(asset.id, timeout=budget.left())
        except AlgodHTTPError as exc:
            if exc.code == 404:
                out += [(EXISTS, lab, 0)]
                if asset.creator:
                    out.append((CREATOR_OK, lab, 0))
                log.append(f"asset {asset.alias} ({asset.id}): does not exist on {genesis_id}")
                continue
            raise _classify(exc, f"GET /v2/assets/{asset.id}") from None
        except Exception as exc:
            raise _classify(exc, f"GET /v2/assets/{asset.id}") from None
        p = info.get("params") or {}
        out += [(EXISTS, lab, 1), (TOTAL, lab, float(p.get("total", 0))), (DECIMALS, lab, int(p.get("decimals", 0))),
                (ASSET_INFO, {**lab, "asset_id": str(asset.id), "unit_name": sanitize_label_value(p.get("unit-name", "")),
                              "name": sanitize_label_value(p.get("name", ""))}, 1)]
        if asset.creator:
            out.append((CREATOR_OK, lab, 1 if p.get("creator") == asset.creator else 0))
        for holder in asset.holders:
            hl = {"asset": asset.alias, "account": holder}
            try:
                h = algod.account_asset_info(by_alias[holder].address, asset.id, timeout=budget.left())
            except AlgodHTTPError as exc:
                if exc.code == 404:  # "account asset info not found": not opted in
                    out.append((OPTED_IN, hl, 0))
                    continue
                raise _classify(exc, f"GET /v2/accounts/{holder}/assets/{asset.id}") from None
            except Exception as exc:
                raise _classify(exc, f"GET /v2/accounts/{holder}/assets/{asset.id}") from None
            holding = h.get("asset-holding")
            out.append((OPTED_IN, hl, 1 if holding else 0))
            if holding:
                out += [(HOLDING, hl, float(holding.get("amount", 0))), (FROZEN, hl, 1 if holding.get("is-frozen") else 0)]

    # -- transactions
    indexer = None
    if t.indexer_url:
        itoken = t.indexer_token.get_secret_value() if t.indexer_token else ""
        indexer = IndexerClient(itoken, t.indexer_url)
    for tx in t.transactions:
        lab = {"transaction": tx.alias}
        key = (t.name, tx.alias)
        confirmed_round = None
        try:
            info = algod.pending_transaction_info(tx.txid, timeout=budget.left())
            if int(info.get("confirmed-round") or 0) > 0:
                state, confirmed_round = "confirmed", int(info["confirmed-round"])
            elif info.get("pool-error"):
                state = "rejected"
                log.append(f"transaction {tx.alias} rejected: {str(info['pool-error'])[:200]}")
            else:
                state = "pending"
        except AlgodHTTPError as exc:
            if exc.code != 404:
                raise _classify(exc, f"GET /v2/transactions/pending/{tx.alias}") from None
            state = "unknown"  # not in the pool nor in the last 1000 rounds
            if indexer is not None:
                try:
                    found = indexer.transaction(tx.txid, timeout=budget.left())
                    confirmed_round = int((found.get("transaction") or {}).get("confirmed-round") or 0) or None
                    if confirmed_round:
                        state = "confirmed"
                except IndexerHTTPError:
                    pass  # 404: the indexer does not know it either
                except Exception as e:
                    raise _classify(e, f"indexer GET /v2/transactions/{tx.alias}") from None
        except Exception as exc:
            raise _classify(exc, f"GET /v2/transactions/pending/{tx.alias}") from None
        for s in TX_STATES:
            out.append((TX_STATE, {**lab, "state": s}, 1 if s == state else 0))
        out.append((TX_MAX_PENDING, lab, tx.max_pending))
        if confirmed_round:
            out.append((TX_ROUND, lab, confirmed_round))
        if state == "pending":
            first = kind_state.first_pending(key)
            out.append((TX_PENDING, lab, time.time() - first))
        else:
            kind_state.not_pending(key)
        log.append(f"transaction {tx.alias}: {state}")

    # -- indexer
    if indexer is not None:
        try:
            h = indexer.health(timeout=budget.left())
            out += [(IDX_UP, {}, 1), (IDX_DB, {}, 1 if h.get("db-available") else 0),
                    (IDX_MIGRATING, {}, 1 if h.get("is-migrating") else 0), (IDX_ROUND, {}, int(h.get("round", 0))),
                    (IDX_LAG, {}, max(0, last_round - int(h.get("round", 0))))]
        except Exception as exc:
            out.append((IDX_UP, {}, 0))
            log.append(f"indexer: {_classify(exc, 'indexer GET /health').message}")

    # -- verdict
    if not network_ok:
        return Reason.WRONG_NETWORK, (f"node is on {genesis_id} ({genesis_hash}), expected {t.network}; "
                                           "asset and account results are for the wrong network")
    if stopped:
        return Reason.NOT_SYNCED, f"node stopped at unsupported round {last_round}; upgrade algod"
    if ready != 200 or age > t.max_round_age or catchup > 0:
        why = "catching up" if ready == 503 or catchup > 0 else f"/ready answered {ready}" if ready != 200 else "stalled"
        return Reason.NOT_SYNCED, f"node is not in sync ({why}): last round {last_round} was {age:.0f}s ago"
    return None, ""


async def probe_algorand(t: AlgorandTarget, ctx: ProbeContext) -> ProbeResult:
    state: AlgorandState = ctx.state
    return await run_blocking(ctx, state.runner,
                              lambda deadline, log, out: _probe_sync(t, state, deadline, log, out))


KIND = ProbeKind(name="algorand", config_model=AlgorandTarget, probe=probe_algorand, max_concurrent=POOL_WORKERS,
                 state=AlgorandState)
