"""The HTTP side of `distillspec serve`: OpenAI's chat and completion endpoints over a Scheduler.

Routes: POST /v1/chat/completions, POST /v1/completions (streamed as server-sent events in
OpenAI's chunk format, ending with `data: [DONE]`, when `stream` is true), GET /v1/models,
GET /health, GET /metrics (Prometheus's text format: `metrics.py`). Every error is OpenAI's
error object with its HTTP status: 400 for a bad request (malformed JSON, a field of the
wrong type or range, a prompt over the context), 503 when the slots and the queue are full.
A client that disconnects has its job cancelled, which frees its slot at the engine's next
step.

Responses carry OpenAI's `usage`; the speculative statistics (acceptance, block
efficiency, tokens drafted) go in an extra `distillspec` field that clients ignore.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.text import IncrementalDecoder
from ..errors import DistillSpecError
from .metrics import RequestTimer, ServerMetrics
from .scheduler import Job, QueueFull, Scheduler
from .schema import ChatRequest, CompletionRequest, error_body, validation_message
from .text import StopTextStream

#: max_tokens when a request gives none (and its context allows it)
DEFAULT_MAX_TOKENS = 512


def create_app(scheduler: Scheduler, model_name: str, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> FastAPI:
    app = FastAPI(title="distillspec", description="OpenAI-compatible speculative decoding")
    tokenizer = scheduler.tokenizer
    created = int(time.time())
    metrics = app.state.metrics = ServerMetrics(scheduler.load)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors())
        metrics.refused("invalid")
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, **scheduler.load()}

    @app.get("/metrics")
    async def exposition():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "distillspec"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        if not getattr(tokenizer, "chat_template", None):
            metrics.refused("invalid")
            return JSONResponse(error_body(f"{model_name} has no chat template; use /v1/completions",
                                           param="messages"), status_code=400)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        prompt = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))
        return await _respond(body, prompt, request, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        prompt = tokenizer(body.prompt, add_special_tokens=True)["input_ids"]
        return await _respond(body, list(prompt), request, chat=False)

    async def _respond(body, prompt: list[int], request: Request, chat: bool):
        timer = metrics.request()
        limit = body.token_limit()
        room = scheduler.context_per_slot - len(prompt)
        max_tokens = limit if limit is not None else min(default_max_tokens, room)
        if max_tokens < 1:
            metrics.refused("invalid")
            return JSONResponse(error_body(f"the prompt has {len(prompt)} tokens; a request may use "
                                           f"{scheduler.context_per_slot}", param="messages" if chat else "prompt",
                                           code="context_length_exceeded"), status_code=400)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job = Job(prompt, max_tokens, lambda kind, payload: loop.call_soon_threadsafe(events.put_nowait, (kind, payload)),
                  temperature=body.temperature, top_k=body.top_k, top_p=None if body.top_p >= 1.0 else body.top_p,
                  seed=body.seed, stop=body.stop, cache_prompt=body.cache_prompt)
        try:
            scheduler.submit(job)
        except QueueFull as exc:
            metrics.refused("rejected")
            return JSONResponse(error_body(f"server busy: {exc}; retry later", "server_overloaded"), status_code=503,
                                headers={"Retry-After": "1"})
        except DistillSpecError as exc:
            metrics.refused("invalid")
            return JSONResponse(error_body(str(exc), param="max_tokens", code="context_length_exceeded"),
                                status_code=400)
        reply = Reply(tokenizer, body.stop, chat, model_name, len(prompt))
        if body.stream:
            return StreamingResponse(_stream(reply, events, job, body.include_usage(), timer),
                                     media_type="text/event-stream")
        return await _collect(reply, events, job, request, timer)

    return app


class Reply:
    """One request's text, finish reason and OpenAI documents, built from engine events."""

    def __init__(self, tokenizer, stops, chat: bool, model: str, prompt_tokens: int):
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=True)
        self.stops = StopTextStream(stops)
        self.chat, self.model, self.prompt_tokens = chat, model, prompt_tokens
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.text = ""

    def push(self, tokens: list[int]) -> str:
        for token in tokens:
            self.decoder.push(token)
        delta = self.stops.emit(self.decoder.text)
        self.text += delta
        return delta

    def finish(self, result) -> tuple[str, str]:
        """(the last text delta, finish_reason) once the engine is done."""
        delta = self.stops.emit(self.decoder.text, final=True)
        self.text += delta
        reason = "length" if result.stats.stopped_by == "max_new_tokens" else "stop"
        return delta, reason

    def usage(self, result) -> dict:
        completion = len(result.tokens)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "prompt_tokens_details": {"cached_tokens": result.stats.prompt_tokens_kept}}

    @staticmethod
    def statistics(result) -> dict:
        stats = result.stats
        return {"acceptance_rate": stats.acceptance_rate, "block_efficiency": stats.block_efficiency,
                "drafted_tokens": stats.drafted, "accepted_tokens": stats.accepted, "looked_up_tokens": stats.looked_up,
                "steps": stats.steps,
                "seconds": stats.total_seconds, "time_to_first_token": stats.time_to_first_token}

    def extra(self, result) -> dict:
        """The `distillspec` field of a reply: statistics and the completion's token ids."""
        return {**self.statistics(result), "completion_ids": list(result.tokens)}

    def document(self, result, reason: str) -> dict:
        choice = {"index": 0, "finish_reason": reason, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": self.text}
        else:
            choice["text"] = self.text
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage(result),
                "distillspec": self.extra(result)}

    def chunk(self, delta: str | None, reason: str | None = None, role: bool = False) -> dict:
        if self.chat:
            content = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice = {"index": 0, "delta": content, "finish_reason": reason, "logprobs": None}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": delta or "", "finish_reason": reason, "logprobs": None}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}


def _sse(document: dict) -> str:
    return f"data: {json.dumps(document)}\n\n"


async def _stream(reply: Reply, events: asyncio.Queue, job: Job, include_usage: bool, timer: RequestTimer):
    """Server-sent events; a client that goes away cancels the job (Starlette stops the
    generator), which frees its slot."""
    try:
        if reply.chat:
            yield _sse(reply.chunk(None, role=True))
        while True:
            kind, payload = await events.get()
            if kind == "tokens":
                timer.tokens()
                delta = reply.push(payload[0])
                if delta:
                    yield _sse(reply.chunk(delta))
            elif kind == "error":
                timer.failed()
                yield _sse(error_body(payload, "server_error"))
                break
            else:
                timer.done(reply.prompt_tokens, payload)
                delta, reason = reply.finish(payload)
                if delta:
                    yield _sse(reply.chunk(delta))
                final = reply.chunk(None, reason)
                final["distillspec"] = reply.extra(payload)
                yield _sse(final)
                if include_usage:
                    usage = {**reply.chunk(None), "choices": [], "usage": reply.usage(payload)}
                    yield _sse(usage)
                break
        yield "data: [DONE]\n\n"
    finally:
        timer.left()  # counted only if the request had not ended
        job.cancel()  # a no-op once the job is done; frees the slot of one that is not


async def _collect(reply: Reply, events: asyncio.Queue, job: Job, request: Request, timer: RequestTimer):
    try:
        while True:
            try:
                kind, payload = await asyncio.wait_for(events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return JSONResponse(error_body("client disconnected"), status_code=499)
                continue
            if kind == "tokens":
                timer.tokens()
                reply.push(payload[0])
            elif kind == "error":
                timer.failed()
                return JSONResponse(error_body(payload, "server_error"), status_code=500)
            else:
                timer.done(reply.prompt_tokens, payload)
                _, reason = reply.finish(payload)
                return reply.document(payload, reason)
    finally:
        timer.left()
        job.cancel()
