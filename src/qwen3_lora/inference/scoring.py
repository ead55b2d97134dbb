"""Label scoring: pick a classification label by the likelihood the model gives each label.

Every label of the task is scored as the continuation of the prompt, with exactly the tokens
training supervises (the answer and its end-of-turn token, from `encoding.encode_example`).
The labels form a token trie; one forward pass runs the prompt followed by the trie's inner
nodes under a tree-shaped attention mask, so the prompt is computed once and a prefix shared
by several labels is scored once. The answer is always a member of the label set.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..prompt.encoding import IGNORE_INDEX, encode_example

# Attention implementations that accept a ready-made 4D additive mask.
TREE_MASK_ATTENTION = ("sdpa", "eager")
METHODS = ("auto", "tree", "rows")


@dataclass(frozen=True)
class LabelScores:
    """The best label of one prompt, with every label's log-likelihood and probability."""

    label: str
    probability: float
    log_likelihoods: dict[str, float]
    probabilities: dict[str, float]


@dataclass(frozen=True)
class LabelTrie:
    """The labels' answer tokens as a trie; node i holds `tokens[i]` and its `parents[i]`.

    Parent -1 is the end of the prompt. `paths[k]` lists the nodes of label k from root to leaf;
    `inner` are the nodes with children, the only ones that must be fed to the model.
    """

    tokens: tuple[int, ...]
    parents: tuple[int, ...]
    depths: tuple[int, ...]
    paths: tuple[tuple[int, ...], ...]
    inner: tuple[int, ...]

    @classmethod
    def build(cls, sequences: Sequence[Sequence[int]]) -> LabelTrie:
        tokens: list[int] = []
        parents: list[int] = []
        depths: list[int] = []
        index: dict[tuple[int, int], int] = {}
        paths = []
        for seq in sequences:
            if not seq:
                raise ValueError("a label has no answer tokens")
            node, path = -1, []
            for token in seq:
                key = (node, int(token))
                if key not in index:
                    index[key] = len(tokens)
                    tokens.append(int(token))
                    parents.append(node)
                    depths.append(1 if node < 0 else depths[node] + 1)
                node = index[key]
                path.append(node)
            paths.append(tuple(path))
        if len(set(paths)) != len(paths):
            raise ValueError("two labels have the same answer tokens")
        has_child = {p for p in parents if p >= 0}
        inner = tuple(i for i in range(len(tokens)) if i in has_child)
        return cls(tuple(tokens), tuple(parents), tuple(depths), tuple(paths), inner)


def label_answer_ids(tokenizer: Any, task: str, label: str) -> list[int]:
    """The token ids training supervises for `label`: the answer and its end-of-turn token."""
    # The answer is rendered and tokenised on its own, so any input gives the same ids.
    encoded = encode_example(tokenizer, task, "", label)
    return [t for t, y in zip(encoded.input_ids, encoded.labels, strict=True) if y != IGNORE_INDEX]


def _softmax(values: Sequence[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


class LabelScorer:
    """Scores a task's label set as continuations of prompts given as token ids.

    `method`: "tree" runs prompt + label trie in one pass under a 4D attention mask (sdpa or
    eager attention); "rows" runs prompt + label as one row per label (any attention, no
    prefix sharing); "auto" picks "tree" where the model's attention supports it.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        task: str,
        labels: Sequence[str],
        method: str = "auto",
    ):
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
        if len(labels) < 2:
            raise ValueError(f"label scoring needs 2+ labels, {task!r} has {len(labels)}")
        self.model = model
        self.task = task
        self.labels = tuple(labels)
        self.label_ids = [label_answer_ids(tokenizer, task, label) for label in self.labels]
        self.trie = LabelTrie.build(self.label_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if method == "auto":
            attention = getattr(model.config, "_attn_implementation", None) or "eager"
            method = "tree" if attention in TREE_MASK_ATTENTION else "rows"
        self.method = method

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def log_likelihoods(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Sequence log-likelihood of every label after each prompt: a (prompts, labels) tensor."""
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        if self.method == "tree":
            return self._tree(prompts)
        return self._rows(prompts)

    def score(self, prompts: Sequence[Sequence[int]]) -> list[LabelScores]:
        """The best label of each prompt, with probabilities softmaxed over the label set."""
        results = []
        for row in self.log_likelihoods(prompts).tolist():
            probs = _softmax(row)
            best = max(range(len(row)), key=row.__getitem__)
            results.append(
                LabelScores(
                    label=self.labels[best],
                    probability=probs[best],
                    log_likelihoods=dict(zip(self.labels, row, strict=True)),
                    probabilities=dict(zip(self.labels, probs, strict=True)),
                )
            )
        return results

    def _tree(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        trie, device = self.trie, self.device
        batch, width = len(prompts), max(len(p) for p in prompts)
        inner = trie.inner
        slot = {node: i for i, node in enumerate(inner)}
        total = width + len(inner)
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        pads = width - lengths

        # Left-pad the prompts so every prompt ends at column width-1; trie nodes follow.
        ids = torch.full((batch, total), self.pad_id, dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt) : width] = torch.tensor(prompt, device=device)
        ids[:, width:] = torch.tensor([trie.tokens[n] for n in inner], device=device)

        columns = torch.arange(width, device=device)
        positions = torch.empty((batch, total), dtype=torch.long, device=device)
        positions[:, :width] = (columns[None, :] - pads[:, None]).clamp(min=0)
        depths = torch.tensor([trie.depths[n] for n in inner], dtype=torch.long, device=device)
        positions[:, width:] = lengths[:, None] + depths[None, :] - 1

        # Who sees whom: prompts causally (pads only themselves), each trie node the whole
        # prompt, its ancestors and itself.
        real = columns[None, :] >= pads[:, None]
        allowed = torch.zeros((batch, total, total), dtype=torch.bool, device=device)
        causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
        allowed[:, :width, :width] = causal[None] & real[:, None, :]
        allowed[:, :width, :width] |= torch.eye(width, dtype=torch.bool, device=device)[None]
        allowed[:, width:, :width] = real[:, None, :]
        ancestry = torch.zeros((len(inner), len(inner)), dtype=torch.bool)
        for i, node in enumerate(inner):
            while node >= 0:
                ancestry[i, slot[node]] = True
                node = trie.parents[node]
        allowed[:, width:, width:] = ancestry.to(device)[None]
        dtype = self.model.get_input_embeddings().weight.dtype
        mask = torch.zeros((batch, 1, total, total), dtype=dtype, device=device)
        mask.masked_fill_(~allowed[:, None], torch.finfo(dtype).min)

        # Only the last prompt column and the trie nodes predict label tokens. Given as positions,
        # they are gathered into a contiguous block; an int `logits_to_keep` slices a strided view,
        # for which torch copies the whole LM head when its weights are frozen (any adapter or
        # merged model; see `speed.FoldedLinear`).
        keep = torch.arange(width - 1, total, device=device)
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=False,
            logits_to_keep=keep,
        ).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        source = [0 if p < 0 else slot[p] + 1 for p in trie.parents]
        node_lp = logprobs[:, source, list(trie.tokens)]  # (batch, nodes)
        return torch.stack([node_lp[:, list(path)].sum(-1) for path in trie.paths], dim=1).cpu()

    def _rows(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        device = self.device
        rows = [(list(p), ans) for p in prompts for ans in self.label_ids]
        # The last answer token is only predicted, never fed.
        width = max(len(p) + len(a) - 1 for p, a in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        for r, (prompt, answer) in enumerate(rows):
            seq = prompt + answer[:-1]
            ids[r, : len(seq)] = torch.tensor(seq, device=device)
            mask[r, : len(seq)] = 1
        logits = self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores = torch.empty(len(rows))
        for r, (prompt, answer) in enumerate(rows):
            at = torch.arange(len(answer), device=device) + len(prompt) - 1
            target = torch.tensor(answer, device=device)
            scores[r] = logprobs[r, at, target].sum().cpu()
        return scores.view(len(prompts), len(self.label_ids))
