"""eager-mlx as an lm-evaluation-harness model: ``eager-mlx lm-eval --model_args ... --tasks ...``.

Install with ``pip install "eager-mlx[lm-eval]"`` (lm-eval >= 0.4.10, whose core has no torch). lm-eval 0.4
finds only its own models or ones registered in the running process, so run it as ``eager-mlx lm-eval ARGS``
(lm-eval's command line, ``--model eager-mlx`` by default), or import this module and call
``lm_eval.simple_evaluate(model="eager-mlx", ...)``.

``--model_args``: ``model`` (preset, folder, .gguf or hub id; default: the default preset), ``method``
(``parallel``, ``eager-init`` or ``eager-adapt``, as in ``eager-mlx eval``; ``eager`` needs gold answers,
which lm-eval keeps to itself), ``details`` (a JSONL side file, below), and every generation and engine
setting under its own key (docs/settings.md): ``threshold``, ``max_sequences``, ``seed``, ``temperature``,
``max_rows``, ... ``max_tokens`` is the default for requests without ``max_gen_toks`` (else lm-eval's 256);
``stop`` adds a stop string to every request's ``until``.

``generate_until``: the requests that share ``until`` and ``max_gen_toks`` (one task's, usually) run as one
evaluation, exactly as ``eager-mlx eval`` runs a data set: the method's scheduler, all rows of all requests in
every forward pass, preemption. Each request's random draws are keyed on its text, its ``until`` and
``max_gen_toks`` and its repeat number, so its result does not depend on the other requests (except through
eager-adapt's shared budget, as in ``eval``). The task's sampling arguments (``temperature``, ``do_sample``,
``top_p``, ...) are ignored with a warning: EAGer samples with the model_args' settings (the preset's
temperature by default). Returned text: answers are extracted as ``eval`` does (the last ``\\boxed{}``, else
"the answer is X" / "#### X"), the majority vote is taken over all sequences of the request (its runs in
order, each run's sequences by index), and the text of the first sequence holding the voted answer is
returned; when no sequence has an answer, the first sequence of the first run. lm-eval's filters then read
that text. ``details=FILE`` writes one JSON line per request: tokens, sequences, runs, branch points, the
answers, the vote and which sequence was returned (its run, index and text).

``loglikelihood`` (multiple-choice tasks) is one plain forward pass per request over context + continuation,
tokenised as lm-eval's Hugging Face model does. ``loglikelihood_rolling`` (perplexity tasks) is refused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional, Sequence

try:
    import lm_eval.models  # noqa: F401 - lm-eval's own models: its registry loads them only while it is empty
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import normalize_gen_kwargs
except ImportError:  # the extra is not installed
    raise ImportError("lm-eval is not installed: pip install 'eager-mlx[lm-eval]'") from None

from eager_mlx.answers import voted_index
from eager_mlx.config import EagerConfig, EngineConfig, SamplingConfig
from eager_mlx.settings import SettingError, check, settings_of

__all__ = ["NAME", "LMEvalError", "EagerLM", "main"]

NAME = "eager-mlx"
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default for a request without max_gen_toks
METHODS = ("parallel", "eager-init", "eager-adapt")  # "eager" needs gold answers
SAMPLING_KWARGS = ("do_sample", "temperature", "top_p", "top_k", "min_p")
PASSED_BY_LM_EVAL = ("batch_size", "max_batch_size", "device")  # results do not depend on them: rows = max_rows
log = logging.getLogger(__name__)


class LMEvalError(ValueError):
    """A request or model argument eager-mlx cannot handle; the message is one line."""


def _settings(args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """model_args -> (generation settings, engine settings), each value checked against its setting."""
    generation = {s.key: s for cls in (EagerConfig, SamplingConfig) for s in settings_of(cls) if s.key != "parallel"}
    engine = {s.key: s for s in settings_of(EngineConfig)}
    out: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    for key, value in args.items():
        group = 0 if key in generation else 1 if key in engine else None
        if group is None:
            known = ", ".join(["model", "method", "details", *generation, *engine])
            raise SettingError(f"unknown model_args key {key!r}; known: {known}")
        out[group][key] = check((generation if group == 0 else engine)[key], value)
    return out


def _details_file(details: Any) -> Optional[Path]:
    """The side file's path, checked now (its folder exists and is writable) so a bad one fails before any work."""
    if details in (None, ""):
        return None
    path = Path(str(details)).expanduser()
    folder = path.parent
    if path.is_dir() or not folder.is_dir() or not os.access(folder, os.W_OK):
        why = "is a directory" if path.is_dir() else f"{folder} is not a writable directory"
        raise LMEvalError(f"details: cannot write {path} ({why})")
    return path


def _request_index(context: str, stop: tuple[str, ...], max_tokens: int, repeat: int) -> int:
    """A request's id (its random key) from what it asks, never from its place among the others."""
    blob = json.dumps([context, list(stop), max_tokens, repeat], ensure_ascii=False).encode()
    return int(hashlib.sha256(blob).hexdigest()[:12], 16)


@dataclasses.dataclass(frozen=True)
class _Request:
    """One generate_until request as the engine runs it."""

    position: int  # in lm-eval's list
    context: str
    stop: tuple[str, ...]
    max_tokens: int
    index: int  # the example index: run ids p{index}-r{attempt}, hence the random keys
    task: Optional[str]
    doc_id: Optional[int]


def _returned(record: dict) -> tuple[str, dict]:
    """The voted sequence's text and what the details file says of the request (see the module docstring)."""
    attempt = {r["request_id"]: r["attempt"] for r in record["runs"]}
    seqs = sorted(record["sequences"], key=lambda s: (attempt[s["run"]], s["index"]))
    answers = [s["answer"] for s in seqs]
    k = voted_index(answers)
    chosen = seqs[0 if k is None else k]
    runs = record["runs"]
    detail = {"prompt_tokens": runs[0]["prompt_tokens"], "generated_tokens": sum(r["generated_tokens"] for r in runs),
              "sequences": len(seqs), "runs": len(runs), "branch_points": sum(r["branch_points"] for r in runs),
              "answers": answers, "vote": None if k is None else answers[k],
              "finish_reasons": [s["finish_reason"] for s in seqs],
              "returned": {"run": chosen["run"], "sequence": chosen["index"], "text": chosen["text"]}}
    return chosen["text"], detail


@register_model(NAME)
class EagerLM(LM):
    """lm-eval's model interface over an eager-mlx model (see the module docstring)."""

    def __init__(self, model: Optional[str] = None, method: str = "eager-adapt", details: Any = None,
                 **model_args: Any) -> None:
        super().__init__()
        from eager_mlx import config_for, load

        for key in PASSED_BY_LM_EVAL:
            model_args.pop(key, None)
        if method not in METHODS:
            why = " (it needs gold answers, which lm-eval keeps)" if method == "eager" else ""
            raise SettingError(f"method must be one of {', '.join(METHODS)}, got {method!r}{why}")
        generation, engine = _settings(model_args)
        self.method = method
        self.engine_config = EngineConfig(**engine)
        self.engine_config.validate()
        self.details, self._details_mode = _details_file(details), "w"  # the first write starts the file
        self.loaded = load(model)
        self.config = config_for(self.loaded.preset, **generation)
        self.max_tokens = generation.get("max_tokens") or DEFAULT_MAX_GEN_TOKS
        self._warned: set[str] = set()

    # ---- generation -------------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """The voted sequence's text for each request (see the module docstring)."""
        plans = self._plans(requests)
        groups: dict[tuple, list[_Request]] = {}
        for p in plans:
            groups.setdefault((p.stop, p.max_tokens), []).append(p)
        texts: list[str] = [""] * len(plans)
        for members in groups.values():
            records = self._evaluate(members, disable_tqdm)
            lines = []
            for p, record in zip(members, records):
                texts[p.position], detail = _returned(record)
                lines.append({"request": p.position, "task": p.task, "doc_id": p.doc_id, **detail})
            self._write_details(lines)
        return texts

    def _plans(self, requests: list) -> list[_Request]:
        """Every request checked and keyed before any work (a bad one is refused with a one-line error)."""
        seen: dict[tuple, int] = {}
        plans = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args[0], dict(req.args[1])
            stop, max_tokens = self._gen_kwargs(gen_kwargs)
            try:
                tokens = self._encode(context)
            except ValueError as e:  # PromptError
                raise LMEvalError(f"request {i} ({req.task_name} doc {req.doc_id}): {e}") from None
            limit = self.loaded.context_length
            if limit and len(tokens) >= limit:
                raise LMEvalError(f"request {i} ({req.task_name} doc {req.doc_id}) has {len(tokens)} prompt tokens, "
                                  f"the model's context is {limit}")
            key = (context, stop, max_tokens)
            seen[key] = seen.get(key, -1) + 1  # lm-eval repeats a request `repeats` times
            plans.append(_Request(i, context, stop, max_tokens, _request_index(*key, seen[key]),
                                  req.task_name, req.doc_id))
        return plans

    def _gen_kwargs(self, gen_kwargs: dict) -> tuple[tuple[str, ...], int]:
        """(stop strings, max tokens) of a request; its sampling arguments are ignored with a warning."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_tokens)
        until = kwargs.pop("until", None) or []
        max_tokens = kwargs.pop("max_gen_toks")
        ignored = {k: kwargs.pop(k) for k in SAMPLING_KWARGS if k in kwargs}
        if kwargs:
            raise LMEvalError(f"unsupported generation argument {sorted(kwargs)[0]!r} (eager-mlx takes until, "
                              f"max_gen_toks and, ignored, {', '.join(SAMPLING_KWARGS)})")
        if max_tokens < 1:
            raise LMEvalError(f"max_gen_toks must be >= 1, got {max_tokens}")
        text = ", ".join(f"{k}={v}" for k, v in sorted(ignored.items()))
        if text and text not in self._warned:
            self._warned.add(text)
            s = self.config.sampling
            log.warning("eager-mlx ignores the task's %s: it samples with temperature=%g, top_p=%g (model_args)",
                        text, s.temperature, s.top_p)
        stops = [until] if isinstance(until, str) else list(until)
        return tuple(dict.fromkeys(s for s in stops + list(self.config.stop) if s)), int(max_tokens)

    def _evaluate(self, members: list[_Request], disable_tqdm: bool) -> list[dict]:
        """Run one group as an evaluation (gold answers empty: lm-eval scores); its records, in order."""
        from tqdm import tqdm

        from eager_mlx.adaptive.options import AdaptiveOptions
        from eager_mlx.evaluation.data import Dataset, Example
        from eager_mlx.evaluation.evaluate import EvalSettings, evaluate

        first = members[0]
        eager = dataclasses.replace(self.config, stop=first.stop, max_tokens=first.max_tokens)
        settings = EvalSettings.build(eager, AdaptiveOptions(), method=self.method,
                                      max_rows=self.engine_config.max_rows, seed=self.engine_config.seed)
        examples = [Example(p.index, f"request-{p.position}", p.context, "") for p in members]
        dataset = Dataset("lm-eval", "lm-eval requests", examples, template="{question}")
        engine = self.loaded.engine(self.engine_config, token_events=False, preempt=True)
        bar = tqdm(total=len(members), desc="eager-mlx generate_until", disable=disable_tqdm)
        try:
            with tempfile.TemporaryDirectory(prefix="eager-mlx-lm-eval-") as tmp:
                result = evaluate(engine, self._encode, dataset, settings, Path(tmp) / "run", model=self.loaded.name,
                                  progress=lambda p: bar.update(p.done - bar.n))
        finally:
            bar.close()
        return sorted(result.records, key=lambda r: r["index"])  # a record's index is its place in `dataset`

    def _write_details(self, lines: list[dict]) -> None:
        if self.details is not None:
            with self.details.open(self._details_mode, encoding="utf-8") as f:
                for line in lines:
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._details_mode = "a"

    # ---- scoring ----------------------------------------------------------------------------------
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log-probability of the continuation, whether greedy decoding gives it), one forward pass each."""
        from tqdm import tqdm

        return [self._loglikelihood(*req.args) for req in tqdm(requests, desc="eager-mlx loglikelihood",
                                                                 disable=disable_tqdm)]

    def _loglikelihood(self, context: str, continuation: str) -> tuple[float, bool]:
        import mlx.core as mx

        context_ids, continuation_ids = self._encode_pair(context, continuation)
        tokens = context_ids + continuation_ids
        limit = self.loaded.context_length
        if limit and len(tokens) > limit:
            raise LMEvalError(f"a loglikelihood request has {len(tokens)} tokens, the model's context is {limit}")
        logits = self.loaded.model(mx.array([tokens[:-1]]))[0, len(context_ids) - 1:].astype(mx.float32)
        target = mx.array(continuation_ids)
        logp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        total = mx.take_along_axis(logp, target[:, None], axis=-1).sum()
        greedy = mx.all(mx.argmax(logits, axis=-1) == target)
        return float(total), bool(greedy)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """lm-eval's split: trailing spaces of the context go to the continuation; the continuation's tokens
        are those of context + continuation after the context's; an empty context is BOS (else EOS)."""
        if not continuation:
            raise LMEvalError("a loglikelihood request has an empty continuation")
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        if not context:
            tok = self.loaded.tokenizer
            prefix = getattr(tok, "bos_token_id", None)
            prefix = tok.eos_token_id if prefix is None else prefix
            return [prefix], self._encode(continuation)
        whole, context_ids = self._encode(context + continuation), self._encode(context)
        return context_ids, whole[len(context_ids):]

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        raise LMEvalError("eager-mlx does not compute loglikelihood_rolling requests (perplexity tasks); "
                          "it runs generate_until and loglikelihood tasks")

    # ---- prompts ----------------------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        """Token ids of a prompt lm-eval made (chat-templated already, or not); a doubled BOS is dropped."""
        from eager_mlx.prompts import PromptError

        if not text:
            raise PromptError("the prompt is empty")
        tokens = list(self.loaded.tokenizer.encode(text))
        bos = getattr(self.loaded.tokenizer, "bos_token_id", None)
        return tokens[1:] if bos is not None and tokens[:2] == [bos, bos] else tokens

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """For `--apply_chat_template`: the conversation through the model's chat template, as text."""
        tok = self.loaded.tokenizer
        if not getattr(tok, "chat_template", None):
            raise LMEvalError("the model has no chat template: run without --apply_chat_template")
        args = self.loaded.preset.chat_template_kwargs if self.loaded.preset is not None else {}
        return tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                       **args)

    @property
    def tokenizer_name(self) -> str:
        return f"eager-mlx:{self.loaded.name}"

    def chat_template(self, chat_template: Any = False) -> str:
        return getattr(self.loaded.tokenizer, "chat_template", None) or ""


def main(argv: Optional[Sequence[str]] = None) -> None:
    """lm-eval's command line with this model registered; `--model eager-mlx` unless another is named.
    An error of ours (a bad model_args value, a request we refuse) is one line on stderr, exit code 1."""
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    commands = ("run", "ls", "validate")
    if args[:1] == ["run"] or (args and args[0] not in (*commands, "-h", "--help")):
        if not {"--model", "-M"} & set(args) and not any(a.startswith("--model=") for a in args):
            at = 1 if args[0] == "run" else 0
            args[at:at] = ["--model", NAME]
    sys.argv = ["lm-eval", *args]
    try:
        cli_evaluate()
    except ValueError as e:  # ours, and lm-eval's own (an unknown task, ...)
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        raise SystemExit(1) from None


