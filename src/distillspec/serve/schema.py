"""The OpenAI request and error shapes the server speaks, and their checks.

Why pydantic models: FastAPI validates a request body against them and names the field at
fault; `error_body` turns any failure into OpenAI's error object, so clients see errors as
they see the OpenAI API's. Fields clients send that we do not use (user, logprobs: false,
...) are accepted and ignored; a known field of the wrong type or range is refused.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: stop strings at most (OpenAI's limit)
MAX_STOP_STRINGS = 4


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict] | None = ""

    def text(self) -> str:
        """The message's text (a list of content parts: their text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part.get("text", "") for part in self.content if part.get("type") == "text")
        return self.content or ""


class SamplingFields(BaseModel):
    """What both endpoints take besides the prompt."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)  # an extension (llama-server and vLLM take it too)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, lt=2 ** 63)
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)  # one choice per request
    stream_options: dict | None = None
    cache_prompt: bool = True  # an extension (llama-server's): False prefills the whole prompt again

    @field_validator("stop")
    @classmethod
    def _stop_strings(cls, value):
        strings = [value] if isinstance(value, str) else (value or [])
        if len(strings) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(strings)}")
        if any(not s for s in strings):
            raise ValueError("stop strings must be non-empty")
        return strings or None

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list):
            if len(value) != 1:
                raise ValueError(f"one prompt per request, got a list of {len(value)}")
            value = value[0]
        if not value:
            raise ValueError("the prompt is empty")
        return value

    def token_limit(self) -> int | None:
        return self.max_tokens


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """(one line naming each bad field and what is allowed, the first field's name) from
    pydantic's errors."""
    parts, first = [], None
    for error in errors:
        location = [str(p) for p in error.get("loc", ()) if p != "body"]
        field = ".".join(location) or "body"
        first = first or field
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", first
