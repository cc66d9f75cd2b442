"""A small simulated platform for the example config: the services of the seed documents.

    python examples/demo_platform.py [--port 18500]

Serves, on one port:
  /pam-talk/health      PAM-TALK main platform: healthy, version 3.0.0-social, three features
  /esg/health           PAM-TALK ESG chain backend: 503, its PostgreSQL was never configured
  /trading/health       trading backend: healthy but reports the wrong version
  /ai-go/realtime-stats AI-GO stats (JSON)
  /api/v1/energy/overview  energy pools (seed 001): two partners, one low on energy
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def pam_talk(_: web.Request) -> web.Response:
    return web.json_response({"status": "healthy", "version": "3.0.0-social",
                              "features": ["social", "esg-points", "rewards"]})


async def esg(_: web.Request) -> web.Response:
    return web.json_response({"status": "error", "error": "database not configured: DATABASE_URL is empty"},
                             status=503)


async def trading(_: web.Request) -> web.Response:
    return web.json_response({"status": "healthy", "version": "1.4.2", "database": {"connected": True}})


async def ai_go(_: web.Request) -> web.Response:
    return web.json_response({"totalModels": 63, "activeModels": 51, "operationalModels": 49,
                              "degradedModels": 1, "outageModels": 1, "avgAvailability": 96.9})


async def energy(_: web.Request) -> web.Response:
    return web.json_response({
        "status": "healthy",
        "partners": [
            {"partner_id": "P-001", "level_percent": 82.0, "status": "normal", "unacknowledged_alerts": 0},
            {"partner_id": "P-002", "level_percent": 12.5, "status": "low", "unacknowledged_alerts": 3},
        ],
    })


def app() -> web.Application:
    a = web.Application()
    a.router.add_get("/pam-talk/health", pam_talk)
    a.router.add_get("/esg/health", esg)
    a.router.add_get("/trading/health", trading)
    a.router.add_get("/ai-go/realtime-stats", ai_go)
    a.router.add_get("/api/v1/energy/overview", energy)
    return a


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=18500)
    args = parser.parse_args()
    web.run_app(app(), host="127.0.0.1", port=args.port, print=None)
