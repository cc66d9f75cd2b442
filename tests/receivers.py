"""Notification receivers for the alert delivery tests: a webhook and a fake Telegram Bot API.

The webhook receiver is a real HTTP server, exactly what a user would point Alertmanager at.
The Telegram server is a stand-in because api.telegram.org cannot be reached from here: it
answers sendMessage the way the Bot API documents (``{"ok": true, "result": <Message>}``) and
records what Alertmanager sent.
"""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web
from targets import LoopThread, free_port


class Receivers:
    def __init__(self) -> None:
        self.lt = LoopThread()
        self.port = free_port()
        self.webhook: list[tuple[float, dict[str, Any]]] = []
        self.telegram: list[tuple[float, str, dict[str, Any]]] = []
        self.lt.run(self._start())

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    @property
    def telegram_api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/telegram"

    async def _start(self) -> None:
        async def webhook(request: web.Request) -> web.Response:
            self.webhook.append((time.time(), await request.json()))
            return web.Response(text="ok")

        async def telegram(request: web.Request) -> web.Response:
            method = request.match_info["method"]
            token = request.match_info["token"]
            if request.content_type == "application/json":
                body = await request.json()
            else:
                body = dict(await request.post())
            self.telegram.append((time.time(), token, {"method": method, **body}))
            if method != "sendMessage":
                return web.json_response({"ok": False, "error_code": 404, "description": "Not Found"}, status=404)
            if not str(body.get("text", "")).strip():  # what the real Bot API answers to an empty message
                return web.json_response({"ok": False, "error_code": 400,
                                          "description": "Bad Request: message text is empty"}, status=400)
            chat_id = int(body.get("chat_id", 0))
            return web.json_response({"ok": True, "result": {
                "message_id": len(self.telegram), "date": int(time.time()),
                "chat": {"id": chat_id, "type": "supergroup", "title": "on-call"},
                "text": body.get("text", "")}})

        app = web.Application()
        app.router.add_post("/webhook", webhook)
        app.router.add_post("/telegram/bot{token}/{method}", telegram)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    def webhook_alerts(self, alertname: str, status: str) -> list[tuple[float, dict[str, Any]]]:
        out = []
        for at, payload in list(self.webhook):
            for alert in payload["alerts"]:
                if alert["labels"].get("alertname") == alertname and alert["status"] == status:
                    out.append((at, alert))
        return out

    def telegram_texts(self) -> list[str]:
        return [body.get("text", "") for _, _, body in list(self.telegram)]

    def close(self) -> None:
        self.lt.run(self.runner.cleanup())
        self.lt.close()


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, default=str)[:4000]
