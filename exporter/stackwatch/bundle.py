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


def render_alertmanager(dest: Path, bot_token: str, telegram_api_url: str | None = None,
                        webhook_url: str | None = None, fast: bool = False, email: bool = True) -> Path:
    """alertmanager/alertmanager.yml, made runnable by Debian's Alertmanager 0.25.

    0.25 has no bot_token_file, so the token goes inline and the file is written 0600.  ``fast`` scales the route timers
    down (for tests and the demo); ``email=False`` drops the e-mail integration (no SMTP here).
    """
    doc: dict[str, Any] = yaml.safe_load((bundle_dir("alertmanager") / "alertmanager.yml").read_text())
    doc["templates"] = [str(bundle_dir("alertmanager") / "templates" / "*.tmpl")]
    for receiver in doc["receivers"]:
        for tg in receiver.get("telegram_configs", []):
            tg.pop("bot_token_file")
            tg["bot_token"] = bot_token
            if telegram_api_url:
                tg["api_url"] = telegram_api_url
        for wh in receiver.get("webhook_configs", []):
            if webhook_url:
                wh["url"] = webhook_url
        for em in receiver.get("email_configs", []):
            em.pop("auth_password_file")
            em["auth_password"] = "placeholder-smtp-password"
        if not email:
            receiver.pop("email_configs", None)
    if fast:
        for route in [doc["route"], *doc["route"]["routes"]]:
            for key, value in (("group_wait", "1s"), ("group_interval", "2s"), ("repeat_interval", "1h")):
                if key in route or route is doc["route"]:
                    route[key] = value
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
