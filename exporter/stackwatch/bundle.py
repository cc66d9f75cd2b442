"""The monitoring bundle beside the exporter (prometheus/, alertmanager/, grafana/), and the
renderings `stackwatch demo` and the tests need to run it locally.

An installed wheel carries the bundle as package data (stackwatch/_bundle/); a source checkout
(an editable install included) uses the top-level folders.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import yaml

PACKAGED = Path(__file__).resolve().parent / "_bundle"
"""Where a wheel puts the bundle."""
CHECKOUT = Path(__file__).resolve().parents[2]
"""The source checkout (exporter/stackwatch/ is two levels below it)."""


def bundle_dir(name: str) -> Path:
    for base in (PACKAGED, CHECKOUT):
        path = base / name
        if path.is_dir() and any(path.iterdir()):
            return path
    raise FileNotFoundError(f"the bundle's {name}/ folder is neither in {PACKAGED} nor in {CHECKOUT}")


PARTS = ("prometheus", "alertmanager", "grafana", "examples")


def export(dest: Path) -> list[Path]:
    """Copy the bundle (rules and their tests, Alertmanager config and templates, dashboards and
    provisioning, the example config) into ``dest``; existing files are overwritten."""
    written = []
    for part in PARTS:
        src = bundle_dir(part)
        for f in sorted(src.rglob("*")):
            if f.is_file() and f.suffix in (".yml", ".yaml", ".json", ".tmpl"):
                target = dest / part / f.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
                written.append(target)
    return written


def write_private(dest: Path, text: str) -> Path:
    """Write a file that holds secrets: owner-only (0600) from its creation."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return dest


def alertmanager_config(*, bundle: Path | None = None, bot_token: str | None = None,
                        bot_token_file: str | None = None, telegram_api_url: str | None = None,
                        webhook_url: str | None = None, email: bool = True, fast: bool = False) -> dict[str, Any]:
    """The bundle's alertmanager.yml made runnable where it is: ``templates`` points at the
    template files by absolute path (checked to exist: a missing template makes every Telegram
    message empty, which the Bot API rejects), and the Telegram token is either a file path
    (Alertmanager >= 0.26) or inline (``bot_token``: Debian's 0.25 has no bot_token_file)."""
    am_dir = (bundle / "alertmanager") if bundle is not None else bundle_dir("alertmanager")
    source = am_dir / "alertmanager.yml"
    templates = sorted((am_dir / "templates").glob("*.tmpl"))
    if not source.is_file() or not templates:
        raise FileNotFoundError(f"{am_dir} lacks alertmanager.yml or templates/*.tmpl; write the bundle first "
                                "(stackwatch bundle DIR)")
    doc: dict[str, Any] = yaml.safe_load(source.read_text())
    doc["templates"] = [str((am_dir / "templates").resolve() / "*.tmpl")]
    for receiver in doc["receivers"]:
        for tg in receiver.get("telegram_configs", []):
            if bot_token is not None:
                tg.pop("bot_token_file", None)
                tg["bot_token"] = bot_token
            elif bot_token_file is not None:
                tg["bot_token_file"] = str(Path(bot_token_file).resolve())
            if telegram_api_url:
                tg["api_url"] = telegram_api_url
        for wh in receiver.get("webhook_configs", []):
            if webhook_url:
                wh["url"] = webhook_url
        if not email:
            receiver.pop("email_configs", None)
    if fast:
        for route in [doc["route"], *doc["route"]["routes"]]:
            for key, value in (("group_wait", "1s"), ("group_interval", "2s"), ("repeat_interval", "1h")):
                if key in route or route is doc["route"]:
                    route[key] = value
    return doc


def _seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if m is None:
        raise ValueError(f"unexpected duration {text!r}")
    return int(m.group(1)) * units[m.group(2)]


def scale_alertmanager(doc: dict[str, Any], divisor: int) -> dict[str, Any]:
    """Every route timer (group_wait, group_interval, repeat_interval, inherited ones included)
    divided by ``divisor``: the same order of events, faster."""
    defaults = {"group_wait": "30s", "group_interval": "5m", "repeat_interval": "4h"}

    def walk(route: dict[str, Any], inherited: dict[str, str]) -> None:
        own = {k: route.get(k, inherited[k]) for k in defaults}
        for key, value in own.items():
            route[key] = f"{max(1, round(_seconds(value) * 1000 / divisor))}ms"
        for child in route.get("routes", []):
            walk(child, own)

    walk(doc["route"], defaults)
    return doc


def render_alertmanager(dest: Path, bot_token: str, telegram_api_url: str | None = None,
                        webhook_url: str | None = None, fast: bool = False, email: bool = True) -> Path:
    """For Debian's Alertmanager 0.25 (tests, the demo): token inline, file written 0600.
    ``fast`` scales the route timers down; ``email=False`` drops the e-mail integration."""
    doc = alertmanager_config(bot_token=bot_token, telegram_api_url=telegram_api_url, webhook_url=webhook_url,
                              email=email, fast=fast)
    for receiver in doc["receivers"]:
        for em in receiver.get("email_configs", []):
            em.pop("auth_password_file", None)
            em["auth_password"] = "placeholder-smtp-password"
    return write_private(dest, yaml.safe_dump(doc, sort_keys=False))


def scaled_alert_rules(dest: Path, divisor: int = 30) -> Path:
    """The real alert rules with every `for` divided by ``divisor`` (at least 1s): same
    expressions, faster, for end-to-end tests and the demo."""
    doc = yaml.safe_load((bundle_dir("prometheus") / "rules" / "stackwatch-alerts.yml").read_text())
    units = {"s": 1, "m": 60, "h": 3600}
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                m = re.fullmatch(r"(\d+)([smh])", rule["for"])
                if m is None:
                    raise ValueError(f"unexpected for: {rule['for']}")
                rule["for"] = f"{max(1, int(m.group(1)) * units[m.group(2)] // divisor)}s"
    dest.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dest
