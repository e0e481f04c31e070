"""Turning a prompt (text, chat messages or token ids) into token ids, one way for every front end."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

__all__ = ["PromptError", "Prompt", "encode_prompt"]

Prompt = Union[str, Sequence[dict], Sequence[int]]


class PromptError(ValueError):
    """The prompt cannot be encoded; the message is one line and names the part at fault."""

    def __init__(self, message: str, param: str = "prompt"):
        super().__init__(message)
        self.param = param


def _encodable(text: str, where: str, param: str) -> str:
    """`text`, unless it holds a lone surrogate (a JSON "\\ud800" escape, bytes that were not UTF-8): no tokenizer
    takes one, so it is refused here, naming where it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PromptError(f"{where} holds a lone surrogate {text[e.start]!r} at character {e.start}: not text",
                          param) from None
    return text


def _text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return _encodable(content, f"messages[{i}].content", f"messages[{i}].content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        text = "".join(str(p.get("text", "")) for p in content)
        return _encodable(text, f"messages[{i}].content", f"messages[{i}].content")
    raise PromptError(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def _messages(messages: Any) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError("messages must be a non-empty list", "messages")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise PromptError(f"messages[{i}] must be an object with a role", f"messages[{i}]")
        clean.append({"role": m["role"], "content": _text(m.get("content", ""), i)})
    return clean


def _apply_template(tokenizer, messages: list[dict], template_args: Optional[dict]) -> list[int]:
    if not getattr(tokenizer, "chat_template", None):  # no template: plain "role: text" lines
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return list(tokenizer.encode(text))
    try:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                  **(template_args or {})))
    except Exception as e:  # jinja errors from templates that reject a conversation shape
        raise PromptError(f"the chat template rejected the messages: {str(e).splitlines()[0]}", "messages") from None


def encode_prompt(tokenizer, prompt: Prompt, *, chat: bool = True, chat_template_kwargs: Optional[dict] = None,
                  system: Optional[str] = None) -> list[int]:
    """Token ids of `prompt`: text (a user message through the chat template when `chat` and the tokenizer
    has one), a list of chat messages, or token ids (used as they are). Raises PromptError."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise PromptError("the prompt is empty")
        _encodable(prompt, "the prompt", "prompt")
        if system is not None:
            _encodable(system, "the system message", "system")
        if chat and getattr(tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user",
                                                                                       "content": prompt}]
            tokens = _apply_template(tokenizer, messages, chat_template_kwargs)
        else:
            tokens = list(tokenizer.encode(prompt))
    elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(m, dict) for m in prompt):
        tokens = _apply_template(tokenizer, _messages(prompt), chat_template_kwargs)
    elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        tokens = list(prompt)
    else:
        raise PromptError("prompt must be text, a list of chat messages or a list of token ids")
    if not tokens:
        raise PromptError("the prompt is empty")
    return tokens
