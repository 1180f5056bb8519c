"""wsstream's voice endpoints inside a FastAPI app, next to the app's own routes.

Why: a product rarely is only a voice socket. It has its own pages and APIs,
and it wants to look at and steer the calls in progress: list them, follow what
the reply function produces (a transcript, a score) on a dashboard, make the
agent answer now, change its settings mid-call. Mounting wsstream in your app
gives you all of that in one process: the WebSocket endpoints run on the app's
server (uvicorn here), every endpoint shares one ``Hub`` (one model, one batched
inference worker, one concurrency limit), and the app drives calls through the
hub's control API.

Run it from the repository's root::

    uv run uvicorn examples.fastapi_app:app

then stream speech to it (``uv run wsstream client tests/data/dialog_00.flac``,
or any client of ``/ws``, see PROTOCOL.md) and, from another terminal::

    curl http://127.0.0.1:8000/calls                    # the open calls
    curl -N http://127.0.0.1:8000/calls/s1/outputs      # one call's outputs, live (Server-Sent Events)
    curl -X POST http://127.0.0.1:8000/calls/s1/trigger # reply now, without waiting for a pause
    curl -X POST -H 'content-type: application/json' -d '{"tail_s": 1.0}' \\
        http://127.0.0.1:8000/calls/s1/inputs           # inputs of the next replies

A call's key is its stream id (``s1``, ``s2``, ... as ``/calls`` lists them) or the
client's own id: the ``id`` of ``/ws``'s start message, fastrtc's websocket_id or
Twilio's streamSid.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from wsstream import AdditionalOutputs, Hub, ReplyOnPause, UnknownStream, current_context
from wsstream.asgi import lifespan, mount

TURNS: dict[str, int] = {}  # replies so far, per stream id


async def reply(audio: tuple[int, np.ndarray], tail_s: float = 0.5) -> AsyncIterator[Any]:
    """Per finished turn: report what was heard, then echo the turn's last ``tail_s`` seconds."""
    rate, samples = audio
    stream_id = current_context().session_id
    turn = TURNS[stream_id] = TURNS.get(stream_id, 0) + 1
    yield AdditionalOutputs({"turn": turn, "heard_s": round(samples.size / rate, 3), "tail_s": tail_s})
    yield rate, samples[-max(int(tail_s * rate), 1):]


hub = Hub(ReplyOnPause(fn=reply))
app = FastAPI(title="wsstream in FastAPI", lifespan=lifespan(hub))
mount(app, hub)  # /ws, /websocket/offer, /telephone/handler


@hub.on("stream_closed")
def forget(stream_id: str, fields: dict[str, Any]) -> None:
    TURNS.pop(stream_id, None)


@app.get("/hello")
async def hello() -> dict[str, Any]:
    """A route of the host app's own, served by the same server as the voice socket."""
    return {"hello": "world", "open_calls": hub.active}


@app.get("/calls")
async def calls() -> list[dict[str, Any]]:
    return [{"id": s.id, "dialect": s.dialect, "client_id": s.client_id, "state": s.state.value, "reply": s.reply.value}
            for s in hub.streams()]


@app.get("/calls/{key}/outputs")
async def outputs(key: str, wait: float = Query(10.0, ge=0, le=60)) -> StreamingResponse:
    """The call's additional outputs as Server-Sent Events (``data: <json>``, one per output) until it
    ends. The call may open after the subscription: it is waited for ``wait`` seconds, then 404."""
    try:
        async with asyncio.timeout(wait):
            stream = await hub.wait_stream(key)
        follow = hub.outputs(stream.id)  # subscribed now: nothing from here on is missed
    except (TimeoutError, UnknownStream):  # (it never came, or ended at once)
        raise HTTPException(404, f"no call {key!r}") from None

    async def events() -> AsyncIterator[str]:
        async for data in follow:
            yield f"data: {json.dumps(data)}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@app.post("/calls/{key}/trigger")
async def trigger(key: str) -> dict[str, Any]:
    """Reply now to what the call has heard, without waiting for the speaker's pause."""
    try:
        replied = hub.trigger(key)
    except UnknownStream:
        raise HTTPException(404, f"no call {key!r}") from None
    if not replied:
        raise HTTPException(409, "nothing to reply to: no speech heard since the last reply")
    return {"triggered": True}


class Inputs(BaseModel):
    """The reply function's keyword arguments, validated here rather than failing in a reply."""

    tail_s: float = Field(0.5, gt=0, le=5)


@app.post("/calls/{key}/inputs")
async def inputs(key: str, values: Inputs) -> dict[str, Any]:
    """New inputs for the call's next replies (e.g. ``{"tail_s": 1.0}``); the reply playing goes on as it was."""
    try:
        hub.set_input(key, **values.model_dump())
    except UnknownStream:
        raise HTTPException(404, f"no call {key!r}") from None
    return {"inputs": values.model_dump()}
