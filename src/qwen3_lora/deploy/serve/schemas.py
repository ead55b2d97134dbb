"""The request bodies the server accepts (OpenAI chat completions, task and route requests)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _encodable(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from exc
    return text


Text = Annotated[str, AfterValidator(_encodable)]


def _adapter_switch():
    return Field(
        default=True,
        description="extension: false answers with the base model, the adapter switched off "
        "(400 no_adapter when the server has none)",
    )


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatTemplateKwargs(BaseModel):
    enable_thinking: bool = False


class ChatCompletionRequest(BaseModel):
    """The OpenAI chat-completions fields this server honours; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = Field(default=None, description="up to 4 stop strings")
    chat_template_kwargs: ChatTemplateKwargs | None = Field(
        default=None, description="`{'enable_thinking': true}` lets Qwen3 think first"
    )
    adapter: bool = _adapter_switch()

    def stop_strings(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]


class TaskRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: Text = Field(min_length=1, description="the user's text")
    max_tokens: int | None = Field(
        default=None, ge=1, description="answer length cap for generation/extraction tasks"
    )
    adapter: bool = _adapter_switch()


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    input: Text = Field(min_length=1, description="the user's text")
    adapter: bool = _adapter_switch()
