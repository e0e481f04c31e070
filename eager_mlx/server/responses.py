"""Response shaping, pure (no socket): engine results and events to OpenAI-style JSON objects.

A response carries every sequence as a choice (with its `answer`, `parent`,
`branch_step`), the voted `answer` and `votes`, `usage` (completion tokens =
generated tokens with shared prefixes counted once) and an `eager` summary. A
stream sends a branch's inherited text as the first delta of the new choice and
ends with a chunk (no choices) holding the vote and the usage.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from eager_mlx.results import BranchEvent, Event, RunResult, SequenceFinished, TokenEvent

from .requests import GenerationRequest

__all__ = ["ResponseShaper", "finish_reason"]

_FINISH = {"eos": "stop", "stop": "stop", "length": "length", "nonfinite": "error"}


def finish_reason(reason: str) -> str:
    """OpenAI's finish_reason for an engine finish reason (aborted, pruned... read as "stop"; the model's
    numerics failing as "error")."""
    return _FINISH.get(reason, "stop")


def _sequences(result: RunResult) -> list[dict]:
    return [{"index": s.index, "finish_reason": finish_reason(s.finish_reason), "logprobs": None,
             "answer": s.answer, "parent": s.parent, "branch_step": s.branch_step} for s in result.sequences]


def _summary(req: GenerationRequest, result: RunResult) -> dict:
    votes = Counter(s.answer for s in result.sequences if s.answer is not None)
    return {
        "answer": result.answer,
        "votes": dict(votes.most_common()),
        "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.generated_tokens,
                  "total_tokens": result.prompt_tokens + result.generated_tokens},
        "eager": {"method": req.method, "threshold": result.threshold, "max_sequences": req.config.max_sequences,
                  "num_sequences": result.num_sequences, "branch_points": result.branch_points,
                  "elapsed_s": round(result.elapsed_s, 3)},
    }


@dataclass
class ResponseShaper:
    """The JSON objects of one request's response: `completion` (whole), or `opening`, `chunk`... `closing`."""

    request_id: str
    request: GenerationRequest
    fingerprint: str
    created: int
    texts: dict[int, str] = field(default_factory=dict)  # streamed so far, per sequence

    @property
    def chat(self) -> bool:
        return self.request.kind == "chat"

    def _base(self, chunk: bool) -> dict:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.request_id, "object": obj, "created": self.created, "model": self.request.model,
                "system_fingerprint": self.fingerprint}

    def completion(self, result: RunResult) -> dict:
        """The whole (non-streamed) response."""
        choices = _sequences(result)
        for c, s in zip(choices, result.sequences):
            if self.chat:
                c["message"] = {"role": "assistant", "content": s.text}
            else:
                c["text"] = s.text
        return {**self._base(False), "choices": choices, **_summary(self.request, result)}

    def _piece(self, index: int, text: str, first: bool) -> dict:
        if self.chat:
            delta = {"role": "assistant", "content": text} if first else {"content": text}
            return {"index": index, "delta": delta, "finish_reason": None, "logprobs": None}
        return {"index": index, "text": text, "finish_reason": None, "logprobs": None}

    def opening(self) -> dict:
        """The first chunk: an empty first delta for each sequence the request starts with."""
        first = range(self.request.n if self.request.method == "parallel" else 1)
        self.texts.update({i: "" for i in first})
        return {**self._base(True), "choices": [self._piece(i, "", True) for i in first]}

    def chunk(self, events: list[Event]) -> Optional[dict]:
        """One chunk for a batch of events (None when they add nothing); branches are listed in `branches`."""
        choices: dict[int, dict] = {}
        branches = []
        for ev in events:
            if isinstance(ev, BranchEvent):
                self.texts[ev.child] = self.texts.get(ev.parent, "")
                choices[ev.child] = self._piece(ev.child, self.texts[ev.child], True)
                branches.append({"parent": ev.parent, "child": ev.child, "step": ev.step,
                                 "entropy": round(ev.entropy, 4)})
            elif isinstance(ev, TokenEvent) and ev.text:
                self.texts[ev.sequence] = self.texts.get(ev.sequence, "") + ev.text
                self._add_text(choices.setdefault(ev.sequence, self._piece(ev.sequence, "", False)), ev.text)
            elif isinstance(ev, SequenceFinished):
                c = choices.setdefault(ev.sequence, self._piece(ev.sequence, "", False))
                c["finish_reason"] = finish_reason(ev.finish_reason)
                if self.chat and not c["delta"].get("content"):
                    c["delta"] = {}
        if not choices:
            return None
        out = {**self._base(True), "choices": [choices[i] for i in sorted(choices)]}
        return {**out, "branches": branches} if branches else out

    def _add_text(self, piece: dict, text: str) -> None:
        holder, key = (piece["delta"], "content") if self.chat else (piece, "text")
        holder[key] = holder.get(key, "") + text

    def closing(self, result: RunResult) -> dict:
        """The last chunk: no choices; the vote, the usage and every sequence's summary."""
        return {**self._base(True), "choices": [], **_summary(self.request, result),
                "sequences": _sequences(result)}
