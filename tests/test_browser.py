"""The demo page end to end in real headless Chromium (Debian's package, never a downloaded browser).

Chromium's fake microphone plays a corpus file (in a loop) into the page; the page
streams it to an in-process server through wsstream.js and plays the replies. All
assertions read the page's own state (``window.wsstreamDemo``).

Driven by Playwright for Python: its async API runs on the test's event loop next to the
in-process server, and it reports console messages and uncaught page errors as events.
It launches /usr/bin/chromium through ``executable_path``; ``playwright install`` is never run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from conftest import DATA, ROOT, require_program, turn_ends_s
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import async_playwright

from wsstream.echo import echo
from wsstream.reply import ReplyOnPause

FILE = "dialog_00.flac"
ARTIFACTS = ROOT / "artifacts"
DOCS_SCREENSHOT = ROOT / "docs" / "demo.png"
SHORT_REPLY_S = 0.8

# Until: 3 turns ended and the 4th begun, replies 1 and 3 played to the end (their marks
# echoed), reply 2 interrupted by turn 3 (clear). About 19 s of the file.
DONE = """() => {
  const d = window.wsstreamDemo;
  const n = (name) => d.events.filter((e) => e.data === name).length;
  return (n("pause_detected") >= 3 && n("started_talking") >= 4 && d.marksEchoed.length >= 2 && d.clears >= 1)
    || d.errors.length > 0;
}"""


def chromium_args(wav: Path) -> list[str]:
    return [
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--autoplay-policy=no-user-gesture-required",
    ]


async def test_demo_page_talks_in_chromium(make_server: Any, manifest: dict[str, Any], tmp_path: Path) -> None:
    chromium = require_program("chromium")
    # Chromium's fake capture reads WAV only (and loops it).
    audio, rate = sf.read(DATA / FILE, dtype="int16")
    wav = tmp_path / "dialog_00.wav"
    sf.write(wav, audio, rate, subtype="PCM_16")

    replies = 0

    async def reply(utterance: tuple[int, np.ndarray], *args: Any, **kwargs: Any) -> Any:
        # Odd replies are short, so they end before the next turn and the page echoes their
        # marks; even ones echo the whole turn, so the next turn barges in and the page gets clear.
        nonlocal replies
        replies += 1
        sr, samples = utterance
        if replies % 2 == 1:
            samples = samples[: int(SHORT_REPLY_S * sr)]
        async for chunk in echo((sr, samples)):
            yield chunk

    server = await make_server(ReplyOnPause(fn=reply))
    url = f"http://127.0.0.1:{server.port}/"

    problems: list[str] = []
    async with async_playwright() as pw:
        # A persistent context is how Playwright takes a fresh --user-data-dir of our own.
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True,
            args=chromium_args(wav), viewport={"width": 1100, "height": 980}, device_scale_factor=1,
        )
        try:
            page = context.pages[0] if context.pages else await context.new_page()
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}")
                    if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
            page.on("response", lambda r: problems.append(f"HTTP {r.status} for {r.url}") if r.status >= 400 else None)
            await page.goto(url)
            await page.click("#start")
            await page.wait_for_function("() => window.wsstreamDemo.state === 'open'", timeout=10_000)
            try:
                await page.wait_for_function(DONE, timeout=45_000, polling=100)
            except PlaywrightError:
                pass  # the assertions below say what is missing
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "demo.png"
            await page.screenshot(path=str(shot), full_page=True)
            if os.environ.get("WSSTREAM_UPDATE_SCREENSHOT") == "1" or not DOCS_SCREENSHOT.exists():
                DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
                shutil.copyfile(shot, DOCS_SCREENSHOT)
            demo = await page.evaluate("() => JSON.parse(JSON.stringify(window.wsstreamDemo))")

            # Stop: the server finishes the reply in progress and closes with 1000; no error on the page.
            await page.click("#stop")
            await page.wait_for_function("() => window.wsstreamDemo.state === 'closed'", timeout=15_000)
            after = await page.evaluate("() => JSON.parse(JSON.stringify(window.wsstreamDemo))")
        finally:
            await context.close()

    summary = {k: v for k, v in demo.items() if k != "events"}
    names = [e["data"] for e in demo["events"] if e["data"] in ("started_talking", "pause_detected", "clear")]
    context_msg = f"events: {names}\nstate: {summary}\nbrowser: {problems}"
    assert not demo["errors"], context_msg
    assert not problems, context_msg

    # The turns of the file, in order: started_talking then pause_detected for each.
    logs = [e for e in demo["events"] if e["data"] in ("started_talking", "pause_detected")]
    assert [e["data"] for e in logs[:6]] == ["started_talking", "pause_detected"] * 3, context_msg
    # Spacing of the detected pauses matches the corpus labels (the page starts mid-file by a
    # fraction of a second, so compare differences): each within 300 ms.
    ends = turn_ends_s(manifest, FILE)
    pauses = [e["t"] for e in logs if e["data"] == "pause_detected"][:3]
    for i in (1, 2):
        assert abs((pauses[i] - pauses[0]) - (ends[i] - ends[0])) < 0.3, (pauses, ends, context_msg)

    # Reply audio arrived, was scheduled on the playback worklet and played.
    assert demo["sampleRate"] and demo["audioFramesReceived"] > 0, context_msg
    assert demo["scheduledSamples"] >= SHORT_REPLY_S * demo["sampleRate"] * 0.9, context_msg
    assert demo["playedSamples"] > 0, context_msg
    assert len(demo["delaysMs"]) >= 2 and max(demo["delaysMs"]) < 1000, context_msg
    # Marks of the replies that played to the end were echoed; reply 2 was cleared by barge-in.
    assert demo["marksEchoed"][:2] == ["reply-1", "reply-3"], context_msg
    assert demo["clears"] >= 1 and demo["droppedSamples"] > 0, context_msg
    assert demo["vadWindows"] > 300, context_msg  # the trace was fed ("debug": true)

    assert after["state"] == "closed" and not after["errors"], after
    assert server.metrics.counters.get("events_pause_detected", 0) >= 3


async def test_demo_page_says_what_went_wrong(make_server: Any, tmp_path: Path) -> None:
    """Server full, socket closed and microphone refused are shown to the person in words."""
    chromium = require_program("chromium")
    audio, rate = sf.read(DATA / FILE, dtype="int16", frames=16000)
    wav = tmp_path / "short.wav"
    sf.write(wav, audio, rate, subtype="PCM_16")
    full = await make_server(ReplyOnPause(fn=echo), concurrency_limit=0)
    open_server = await make_server(ReplyOnPause(fn=echo))

    async def error_after_start(context: Any, port: int, then: Any = None) -> tuple[str, str, dict[str, Any]]:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.click("#start")
        if then is not None:
            await page.wait_for_function("() => window.wsstreamDemo.state === 'open'", timeout=10_000)
            await then()
        await page.wait_for_function("() => window.wsstreamDemo.errors.length > 0", timeout=10_000)
        await page.wait_for_function("() => !document.querySelector('#start').disabled", timeout=10_000)
        text = await page.inner_text("#error")
        pill = await page.inner_text("#conn")
        demo = await page.evaluate("() => JSON.parse(JSON.stringify(window.wsstreamDemo))")
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / f"demo-error-{demo['errors'][0]['kind']}.png"))
        assert not errors
        await page.close()
        return text, pill, demo

    async with async_playwright() as pw:
        args = chromium_args(wav)
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=chromium, headless=True, args=args)
        try:
            text, pill, demo = await error_after_start(context, full.port)
            assert "server is full" in text and "Try again" in text, text
            assert "server full" in pill
            assert [e["kind"] for e in demo["errors"]] == ["server_full"]

            text, pill, demo = await error_after_start(context, open_server.port, then=open_server.aclose)
            assert "connection to the server was closed" in text, text
            assert [e["kind"] for e in demo["errors"]] == ["closed"]
        finally:
            await context.close()

        # Without the fake permission UI, headless Chromium refuses the microphone.
        no_ui = [a for a in args if a != "--use-fake-ui-for-media-stream"]
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "profile2"), executable_path=chromium, headless=True, args=no_ui)
        try:
            text, pill, demo = await error_after_start(context, full.port)
            assert "Microphone access was refused" in text, text
            assert [e["kind"] for e in demo["errors"]] == ["microphone"]
        finally:
            await context.close()
