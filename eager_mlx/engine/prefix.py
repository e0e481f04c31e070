"""Prompt KV shared across requests: a tree of prompt segments, prefilled once, exact by construction.

A prompt is cut into segments after each end-of-turn token (by default the tokenizer's eos ids:
chat templates end every message with one), so a system prompt, each few-shot exemplar and each
earlier turn of a chat is a segment of its own. The tree keeps, for every path of segments
prefilled so far, what the next segment's prefill needs (the global layers' keys and values of
each segment, the last W - 1 positions of sliding-window layers, the recurrent layers' state at
the segment's end) and the logits after its last token. A request whose prompt starts with
segments in the tree prefills only the rest; a prompt seen before prefills nothing.

Exact, and the same with or without the tree: every segment is prefilled the same way whatever
came before it, in chunks of `_PREFILL_CHUNK` tokens counted from the segment's start, on mlx-lm
caches rebuilt from the state stored at the end of the segment before it. So a segment's KV is
bitwise the same whether its prefix was found in the tree, computed just now, or the tree is off
(`prefix_cache=False`, `--no-prefix-cache`), and so is every result. The price of that: only
whole segments are shared (two prompts that differ inside a segment share the segments before it),
and a segment has at least two tokens (a sliding-window cache cannot start from a rebuilt state
with one token). What the rows then attend to is the request's whole prompt KV, one array per
layer (kv.py): the segments' KV put together, or the node's own arrays for a one-segment prompt.

The tree's memory is bounded: least recently used leaves are dropped first (`trim`); the engine
keeps it under what `max_kv_memory` leaves free, else under `DEFAULT_MEMORY`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache, RotatingKVCache, make_prompt_cache

from eager_mlx.engine.cache_kinds import LeafSpec, cache_arrays, flat, segment_state

__all__ = ["PrefixTree", "PrefixStats", "segments", "DEFAULT_MEMORY"]

_PREFILL_CHUNK = 512
_MIN_SEGMENT = 2  # see the module docstring
DEFAULT_MEMORY = 1 << 30  # bytes the tree may hold when the engine has no max_kv_memory


def segments(prompt: list[int], ends: Iterable[int]) -> list[tuple[int, int]]:
    """[start, stop) of each segment of `prompt`: cut after every token in `ends`, each at least two tokens
    (a shorter one joins the next; a short last one joins the one before)."""
    ends = set(ends)
    cuts = [0]
    for i, t in enumerate(prompt[:-1]):
        if t in ends and i + 1 - cuts[-1] >= _MIN_SEGMENT:
            cuts.append(i + 1)
    if len(cuts) > 1 and len(prompt) - cuts[-1] < _MIN_SEGMENT:
        cuts.pop()
    return list(zip(cuts, cuts[1:] + [len(prompt)]))


@dataclass
class PrefixStats:
    """Counts since the engine started: requests prefilled, those that found a prefix in the tree (hits),
    prompt tokens taken from the tree (saved) and prefilled, segments dropped to stay in memory."""

    requests: int = 0
    hits: int = 0
    misses: int = 0
    tokens_saved: int = 0
    tokens_prefilled: int = 0
    evicted: int = 0
    nodes: int = 0
    bytes: int = 0


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...]  # the segment
    end: int  # prompt position after it
    leaves: list  # per leaf: (keys, values) of the segment (global) or of the last W - 1 positions, or a state
    logits: Optional[mx.array]  # (1, vocab) after its last token
    parent: Optional["_Node"] = None
    children: dict = field(default_factory=dict)
    used: int = 0  # last use, for LRU
    nbytes: int = 0


class PrefixTree:
    """Prompt segments shared across requests (see the module docstring). `prefill(prompt)` returns what
    the engine's rows need of the prompt and the logits after its last token."""

    def __init__(self, model, specs: list[LeafSpec], ends: Iterable[int], enabled: bool = True):
        self.model, self.specs, self.ends, self.enabled = model, specs, frozenset(ends), enabled
        self.root = _Node((), 0, [], None)
        self.stats = PrefixStats()
        self._tick = 0

    def prefill(self, prompt: list[int]) -> tuple[list, mx.array]:
        """(per leaf: (keys, values, first position) or recurrent state, last logits) of `prompt`."""
        path, node, saved = [], self.root, 0
        for a, b in segments(prompt, self.ends):
            key = tuple(prompt[a:b])
            child = node.children.get(key)
            if child is None:
                child = self._compute(path, key, a, b)
                if self.enabled:
                    self._insert(node, child)
            else:
                saved += b - a
            self._tick += 1
            child.used = self._tick
            path.append(child)
            node = child
        st = self.stats
        st.requests, st.hits, st.misses = st.requests + 1, st.hits + (saved > 0), st.misses + (saved == 0)
        st.tokens_saved, st.tokens_prefilled = st.tokens_saved + saved, st.tokens_prefilled + len(prompt) - saved
        return self._prompt_state(path, len(prompt)), path[-1].logits

    def _compute(self, path: list[_Node], key: tuple[int, ...], start: int, stop: int) -> _Node:
        """Prefill one segment after `path` on caches rebuilt from the path's last node."""
        caches = self._rebuild(path)
        tokens = mx.array(key, dtype=mx.int32)[None]
        for i in range(0, len(key), _PREFILL_CHUNK):
            logits = self.model(tokens[:, i : i + _PREFILL_CHUNK], cache=caches)
            if i + _PREFILL_CHUNK < len(key):
                mx.eval(cache_arrays(caches))
        node = _Node(key, stop, segment_state(caches, start, stop), logits[:, -1, :])
        arrays = [node.logits] + [a for leaf in node.leaves for a in leaf if a is not None]
        mx.eval(*arrays)
        node.nbytes = sum(a.nbytes for a in arrays)
        return node

    def _rebuild(self, path: list[_Node]) -> list:
        """Fresh mlx-lm caches holding the state after `path` (as if its segments had just been prefilled)."""
        caches = make_prompt_cache(self.model)
        if not path:
            return caches
        last = path[-1]
        for i, c in enumerate(flat(caches)):
            if type(c) is ArraysCache:
                c.cache = list(last.leaves[i])
                continue
            if type(c) is RotatingKVCache:
                c.keys, c.values = last.leaves[i]
                c._idx = c.keys.shape[2]
            else:
                c.keys, c.values = _joined(path, i)
            c.offset = last.end
        return caches

    def _prompt_state(self, path: list[_Node], length: int) -> list:
        out = []
        for i, spec in enumerate(self.specs):
            if spec.kind == "recurrent":
                out.append(list(path[-1].leaves[i]))
            elif spec.window:
                keys, values = path[-1].leaves[i]
                out.append((keys, values, length - keys.shape[2]))
            else:
                out.append((*_joined(path, i), 0))
        return out

    def _insert(self, parent: _Node, node: _Node) -> None:
        node.parent = parent
        parent.children[node.tokens] = node
        self.stats.nodes += 1
        self.stats.bytes += node.nbytes

    def trim(self, limit: int) -> None:
        """Drop least recently used leaves until the tree holds at most `limit` bytes."""
        while self.stats.bytes > limit:
            leaves = [n for n in self._nodes() if not n.children]
            if not leaves:
                return
            for node in sorted(leaves, key=lambda n: n.used):
                del node.parent.children[node.tokens]
                self.stats.nodes -= 1
                self.stats.bytes -= node.nbytes
                self.stats.evicted += 1
                if self.stats.bytes <= limit:
                    return

    def _nodes(self) -> list[_Node]:
        out, todo = [], list(self.root.children.values())
        while todo:
            node = todo.pop()
            out.append(node)
            todo.extend(node.children.values())
        return out


def _joined(path: list[_Node], leaf: int) -> tuple[mx.array, mx.array]:
    """A global layer's keys and values over the whole path (the node's own arrays for one segment)."""
    if len(path) == 1:
        return path[0].leaves[leaf]
    return tuple(mx.concatenate([n.leaves[leaf][j] for n in path], axis=2) for j in range(2))
