"""Heads that write: fill-mask (masked-LM), generation (causal-LM) and text-writing heads (seq2seq).

Fill-mask works on any Hugging Face masked-LM checkpoint and on headkit saves that carry a
masked-LM head (the output of `headkit pretrain --objective mlm`). Generation works on any
causal-LM checkpoint and on `headkit pretrain --objective clm` / `headkit sft` runs; GGUF files
(the shipped SmolLM2) are dequantised once and cached as safetensors, so later loads take a
second instead of twenty. A save whose heads write text (seq2seq) answers through its heads:
one backbone pass, then each head's decoder (`generate_heads`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from headkit.backbone import dequantised, inspect_model, quietly_from_pretrained, resolve_model
from headkit.devices import place
from headkit.errors import DataError, HeadkitError
from headkit.heads import head_class
from headkit.heads.lm import CAUSAL_LM, MASKED_LM, MaskedLMHead
from headkit.ship.save import find_save, read_manifest


def _local_path(name: str) -> Path:
    source = resolve_model(name)
    return dequantised(source) if source.gguf_file else source.path


def masked_lm(
    name: str, trust_remote_code: bool = False, device: str = "cpu", dtype: str = "auto"
) -> tuple[Callable[..., torch.Tensor], Any]:
    """A function (input_ids, attention_mask) -> vocabulary logits (inputs moved to the model's
    device), and the tokenizer."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    saved = find_save(name)
    if saved is not None:
        from headkit.ship.predict import load_for_inference

        model, tokenizer = load_for_inference(
            saved, trust_remote_code=trust_remote_code, engine="torch", device=device, dtype=dtype
        )
        head = next((n for n, h in model.heads.items() if isinstance(h, MaskedLMHead)), None)
        if head is None:
            raise HeadkitError(
                f"{name} has no masked-LM head (its heads: {list(model.heads)}); "
                f"give its backbone one with: headkit pretrain --objective mlm --model {name} --corpus FILE"
            )
        return (lambda **enc: model(heads=[head], **_on(enc, model.device)).outputs[head]), tokenizer
    report = inspect_model(name, trust_remote_code=trust_remote_code)
    if report.head_kind != MASKED_LM:
        what = "no head at all" if report.head_kind == "none" else f"a {report.head_kind} head"
        raise HeadkitError(
            f"{name} ({report.architecture}) has {what}, not a masked-LM head, so it cannot fill masks. "
            f"Give it one with: headkit pretrain --objective mlm --model {name} --corpus FILE "
            "(then run fill-mask on the run directory)"
        )
    path = _local_path(name)
    model = place(
        quietly_from_pretrained(AutoModelForMaskedLM, path, trust_remote_code=trust_remote_code), device, dtype
    )
    return (lambda **enc: model(**_on(enc, model.device)).logits), AutoTokenizer.from_pretrained(path)


def _on(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


@torch.no_grad()
def fill_mask(
    name: str,
    texts: list[str],
    top_k: int = 5,
    trust_remote_code: bool = False,
    device: str = "cpu",
    dtype: str = "auto",
) -> list[list[list[tuple[str, float]]]]:
    """For each text, for each mask in it: the top-k tokens with their probabilities."""
    logits_fn, tokenizer = masked_lm(name, trust_remote_code, device, dtype)
    mask = tokenizer.mask_token
    if mask is None:
        raise HeadkitError(f"the tokenizer of {name} has no mask token, so it cannot fill masks")
    if not texts:
        raise DataError("no text given to fill")
    for i, text in enumerate(texts):
        if mask not in text:
            raise DataError(f"text {i + 1} has no {mask} to fill: {text!r}; mark each blank with {mask}")
    limit = getattr(tokenizer, "model_max_length", 512)
    limit = limit if limit and limit < 100_000 else 512
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    if enc["input_ids"].shape[1] > limit:
        raise DataError(f"a text is {enc['input_ids'].shape[1]} tokens long; this model reads at most {limit}")
    inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    probs = logits_fn(**inputs).float().softmax(-1).cpu()
    results = []
    for row in range(len(texts)):
        positions = (enc["input_ids"][row] == tokenizer.mask_token_id).nonzero().flatten().tolist()
        per_mask = []
        for pos in positions:
            top = probs[row, pos].topk(top_k)
            per_mask.append(
                [(tokenizer.decode([i]).strip(), float(p)) for p, i in zip(top.values, top.indices, strict=True)]
            )
        results.append(per_mask)
    return results


def load_causal_lm(name: str, trust_remote_code: bool = False, device: str = "cpu", dtype: str = "auto"):
    """A causal-LM model (eval mode, on `device`) and its tokenizer; GGUF files are dequantised once and cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from headkit.ship.load import base_checkpoint

    saved = find_save(name)
    report = None if saved else inspect_model(name, trust_remote_code=trust_remote_code)
    if report is not None and report.head_kind != CAUSAL_LM:
        raise HeadkitError(
            f"{name} ({report.architecture}) has no causal-LM head, so it cannot generate text; "
            "use a decoder checkpoint (e.g. smollm2), or fill-mask for masked-LM models"
        )
    path = saved / "backbone" if saved else _local_path(name)
    weights = base_checkpoint(saved) if saved else path  # a LoRA save's backbone/ may name its base instead
    model = quietly_from_pretrained(AutoModelForCausalLM, weights, trust_remote_code=trust_remote_code).eval()
    if saved is not None and (saved / "adapter").is_dir():
        # A LoRA-pretrained run: its adapter was trained on the backbone, whose module names differ
        # from the causal-LM class, so merge it there and copy the result in (a tied lm_head follows).
        from headkit.backbone import load_backbone

        merged = load_backbone(saved, trust_remote_code=trust_remote_code)
        getattr(model, model.base_model_prefix).load_state_dict(merged.state_dict())
    if saved is not None:
        use_saved_lm_head(model, saved)
    return place(model, device, dtype), AutoTokenizer.from_pretrained(path)


def use_saved_lm_head(model: Any, saved: Path) -> None:
    """Put a headkit save's causal-LM head into the transformers model that generates with it.

    backbone/ holds the base model only: a tied head is its input embeddings (already in place),
    but an untied one (Llama-3, Mistral, Qwen2-7B, Pythia) lives in the head's own weights, and
    the causal-LM class would otherwise generate through a freshly initialised lm_head."""
    from headkit.ship.load import head_tensors

    manifest = read_manifest(saved)
    name = next((n for n, c in manifest["heads"].items() if c.get("type") == CAUSAL_LM), None)
    decoder = "decoder.weight"
    state = head_tensors(saved, manifest, name) if name else {}
    if decoder not in state:
        return  # tied to the input embeddings, which backbone/ holds
    output = model.get_output_embeddings()
    if output.weight is model.get_input_embeddings().weight:  # the class tied them: untie first
        model.config.tie_word_embeddings = False
        output.weight = torch.nn.Parameter(output.weight.detach().clone())
    with torch.no_grad():
        output.weight.copy_(state[decoder])


def chat_prompts(tokenizer: Any, prompts: list[str], chat: bool = True) -> list[str]:
    """Each prompt as a user turn of the tokenizer's chat template, ready for the reply (as they
    were in instruction tuning); as given when `chat` is off or the tokenizer has no template."""
    if not (chat and getattr(tokenizer, "chat_template", None)):
        return list(prompts)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
    ]


def check_context(model: Any, prompt_tokens: int, max_new_tokens: int) -> None:
    """A prompt plus the new tokens must fit the model's positions, else a DataError (not torch's)."""
    context = getattr(model.config, "max_position_embeddings", None)
    if context and prompt_tokens + max_new_tokens > context:
        raise DataError(
            f"the prompt is {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: "
            f"{prompt_tokens + max_new_tokens} exceeds this model's context of {context} tokens; shorten the "
            "prompt or ask for fewer new tokens"
        )


@torch.no_grad()
def generate(
    name: str,
    prompt: str,
    max_new_tokens: int = 64,
    sample: bool = False,
    temperature: float = 0.7,
    top_p: float = 0.9,
    chat: bool = True,
    stream: bool = False,
    seed: int = 0,
    trust_remote_code: bool = False,
    device: str = "cpu",
    dtype: str = "auto",
) -> str:
    """Continue `prompt` with the causal-LM head: greedy by default, or sampling; returns the new text."""
    from transformers import TextStreamer

    model, tokenizer = load_causal_lm(name, trust_remote_code, device, dtype)
    enc = tokenizer(chat_prompts(tokenizer, [prompt], chat), return_tensors="pt", add_special_tokens=not chat)
    n = enc["input_ids"].shape[1]
    check_context(model, n, max_new_tokens)
    torch.manual_seed(seed)
    options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": sample}
    if sample:
        options.update(temperature=temperature, top_p=top_p)
    if tokenizer.pad_token_id is None:
        options["pad_token_id"] = tokenizer.eos_token_id
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    output = model.generate(**_on(enc, model.device), streamer=streamer, **options)
    return tokenizer.decode(output[0, n:], skip_special_tokens=True)


def writing_heads(name: str) -> list[str]:
    """The heads of a headkit save that write text (seq2seq); [] for anything else."""
    saved = find_save(name)
    if saved is None:
        return []
    return [h for h, c in read_manifest(saved)["heads"].items() if head_class(c["type"]).view.writes_text]


def is_causal_lm_save(name: str | os.PathLike) -> bool:
    """A headkit save whose heads a causal-LM model holds (pretrain --objective clm, sft): it answers
    by generating with that model, not through its heads' forward."""
    saved = find_save(name)
    if saved is None:
        return False
    heads = read_manifest(saved)["heads"].values()
    return bool(heads) and all(head_class(c["type"]).export.target == "AutoModelForCausalLM" for c in heads)


@torch.no_grad()
def generate_heads(
    name: str,
    texts: list[str],
    max_new_tokens: int | None = None,
    num_beams: int | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> list[dict[str, Any]]:
    """Each text through a save's text-writing heads: {head: generated text} per text (one backbone pass each batch)."""
    from headkit.ship.predict import load_for_inference, predict_texts

    heads = writing_heads(name)
    if not heads:
        raise HeadkitError(f"{name} has no head that writes text (a seq2seq head); use `headkit predict` for it")
    model, tokenizer = load_for_inference(name, engine="torch", device=device, dtype=dtype)  # generation loops
    for head in heads:
        model.heads[head].set_generation(max_new_tokens=max_new_tokens, num_beams=num_beams)
    return predict_texts(model, tokenizer, texts, heads=heads)


@torch.no_grad()
def generate_replies(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 64) -> list[str]:
    """Greedy replies of a causal LM to several prompts at once (chat template when it has one,
    left padding so every prompt ends where its reply starts)."""
    templated = bool(getattr(tokenizer, "chat_template", None))  # the template brings its own special tokens
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        texts = chat_prompts(tokenizer, prompts)
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not templated)
    finally:
        tokenizer.padding_side = side
    n = enc["input_ids"].shape[1]
    check_context(model, n, max_new_tokens)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    output = model.generate(**_on(enc, model.device), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
    return [tokenizer.decode(row[n:], skip_special_tokens=True).strip() for row in output]
