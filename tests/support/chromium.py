"""Render a local HTML file in Debian's headless Chromium over the DevTools protocol (CDP, via
``websockets``): wait for a condition, collect console errors, uncaught exceptions and every
network request, and take a full-page screenshot."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--remote-debugging-port=0",
    "--remote-allow-origins=*",
]


def chromium_binary() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Rendered:
    png: bytes
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    requests: list[str] = field(default_factory=list)  # every URL the page asked for


class _Cdp:
    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._event = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self._ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self._waiting:
                self._waiting.pop(msg["id"]).set_result(msg)
            else:
                self.events.append(msg)
                self._event.set()

    async def send(self, method: str, session: str | None = None, **params: Any) -> Any:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self._ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def wait_event(self, method: str, timeout_s: float) -> dict[str, Any]:
        async def find() -> dict[str, Any]:
            while True:
                for ev in self.events:
                    if ev.get("method") == method:
                        return ev
                self._event.clear()
                await self._event.wait()

        return await asyncio.wait_for(find(), timeout_s)

    async def aclose(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def render(
    page: Path, *, ready_js: str, width: int = 1280, timeout_s: float = 60
) -> Rendered:
    """Open ``page`` (file://), wait until ``ready_js`` evaluates true, screenshot it whole."""
    binary = chromium_binary()
    assert binary is not None
    with tempfile.TemporaryDirectory(prefix="mdp-chromium-") as profile:
        proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            url = await asyncio.to_thread(_devtools_url, proc.stderr)
            async with websockets.connect(url, max_size=256 * 1024 * 1024) as ws:
                cdp = _Cdp(ws)
                try:
                    return await _render(cdp, page, ready_js, width, timeout_s)
                finally:
                    await cdp.aclose()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def _devtools_url(stderr: Any) -> str:
    for line in stderr:
        m = re.search(r"DevTools listening on (ws://\S+)", line)
        if m:
            return m.group(1)
    raise AssertionError("chromium exited without a DevTools endpoint")


async def _render(cdp: _Cdp, page: Path, ready_js: str, width: int, timeout_s: float) -> Rendered:
    target = await cdp.send("Target.createTarget", url="about:blank")
    attached = await cdp.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
    s = attached["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        await cdp.send(f"{domain}.enable", session=s)
    await cdp.send(
        "Emulation.setDeviceMetricsOverride",
        session=s,
        width=width,
        height=900,
        deviceScaleFactor=1,
        mobile=False,
    )
    await cdp.send("Page.navigate", session=s, url=page.resolve().as_uri())
    await cdp.wait_event("Page.loadEventFired", timeout_s)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        res = await cdp.send("Runtime.evaluate", session=s, expression=ready_js, returnByValue=True)
        if res.get("result", {}).get("value") is True:
            break
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"page not ready after {timeout_s}s: {ready_js}")
        await asyncio.sleep(0.1)
    metrics = await cdp.send("Page.getLayoutMetrics", session=s)
    height = int(metrics["cssContentSize"]["height"])
    shot = await cdp.send(
        "Page.captureScreenshot",
        session=s,
        format="png",
        captureBeyondViewport=True,
        clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    )
    out = Rendered(png=base64.b64decode(shot["data"]))
    for ev in cdp.events:
        if ev.get("sessionId") != s:
            continue
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            out.errors.append(details.get("exception", {}).get("description") or details["text"])
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            out.errors.append(" ".join(str(a.get("value", a)) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            out.errors.append(params["entry"]["text"])
        elif method == "Network.requestWillBeSent":
            out.requests.append(params["request"]["url"])
    return out
