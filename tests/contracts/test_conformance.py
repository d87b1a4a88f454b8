"""The conformance suite: every model family headkit claims, crossed with every head type that
applies, padding sides, dtypes and strategies, held to the same invariants (the pattern of
transformers' ModelTesterMixin and PEFT's testing_common.py). The families are tiny random
checkpoints saved as users meet them (tests/contracts/model_zoo.py); a cell that is refused
must be refused with one clear line.

  save -> load        the same outputs and the same buffers, every module in eval mode
  padding             a padded batch predicts what each example predicts alone, on both sides
  bf16                loads and runs in bf16, and agrees with fp32 on at least 95% of decisions
  resume              a killed and resumed run ends identical to an uninterrupted one (buffers too)
  pretraining head    an imported MLM / CLM head, tied or untied, gives the checkpoint's own logits
  export              the transformers and ONNX exports compute what the heads compute
  changed backbone    a head-only save of a changed backbone is refused on other weights
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from model_zoo import (
    BY_NAME,
    FAMILIES,
    HEADS,
    STRATEGIES,
    TEXTS,
    WORDS,
    Family,
    images,
    many_texts,
    move_batchnorm_statistics,
    save_checkpoint,
    waveforms,
)

import headkit
from headkit import HeadkitError, MultiHeadModel, head_config
from headkit.data.images import is_image_processor
from headkit.errors import FingerprintMismatchError
from headkit.ship.predict import predict_images, predict_texts

TMP = Path(__import__("tempfile").mkdtemp(prefix="headkit-conformance-"))
__import__("atexit").register(__import__("shutil").rmtree, TMP, ignore_errors=True)  # at the process's end


def cells(*, side: bool = False, lm: bool = False, export: bool = False) -> list:
    """(family, head) cells, with padding sides for text families."""
    found = []
    for family in FAMILIES:
        for head in family.heads:
            if lm and head not in ("masked-lm", "causal-lm"):
                continue
            if export and headkit.heads.head_class(head).export.target is None:
                continue
            sides = ["left", "right"] if side and family.text else ["-"]
            found += [pytest.param(family.name, head, s, id=f"{family.name}-{head}-{s}") for s in sides]
    return found


# ----------------------------------------------------------------------------- the models under test


@cache
def checkpoint(name: str) -> Path:
    return save_checkpoint(BY_NAME[name], TMP / "checkpoints" / name)


def head_name(head_type: str) -> str:
    return head_type.replace("-", "_")


@cache
def zoo_model(name: str) -> tuple[MultiHeadModel, Any, Path]:
    """Every head of the family on one backbone, with weights large enough that decisions are
    clear (not ties at the level of bf16 rounding), BatchNorm statistics moved off their
    defaults, saved (full save with its processor); returns (model, processor, saved directory)."""
    family = BY_NAME[name]
    torch.manual_seed(1)
    heads = {head_name(h): head_config(h, **HEADS[h]) for h in family.heads}
    model = MultiHeadModel.from_pretrained(checkpoint(name), heads=heads)
    with torch.no_grad():
        for param_name, p in model.heads.named_parameters():
            if p.dim() > 1 and param_name not in {f"{n}.{k}" for n, k in _tied(model)}:
                torch.nn.init.normal_(p, std=0.5)
    move_batchnorm_statistics(model.backbone)
    processor = headkit.load_processor(checkpoint(name))
    saved = headkit.save(model, TMP / "saved" / name, processor=processor)
    return model.eval(), processor, saved


def _tied(model: MultiHeadModel) -> set[tuple[str, str]]:
    return {tuple(n.split(".", 1)) for n in model.tied_parameter_names()}


def examples(family: Family, many: bool = False) -> list:
    """What the family reads: texts, images of varied sizes or audio clips (`many`: enough for a
    share of agreeing decisions to mean something)."""
    if family.text:
        return many_texts() if many else TEXTS
    if family.kind == "vision":
        return images(40 if many else 6)
    return waveforms()


def predict(model, processor, family: Family, batch: list, side: str = "right") -> list[dict]:
    """Every head's prediction for each example, through the path a user predicts with."""
    if family.text:
        processor.padding_side = side
        return predict_texts(model, processor, list(batch), batch_size=len(batch))
    if family.kind == "vision":
        return predict_images(model, processor, list(batch), batch_size=len(batch))
    inputs = processor(list(batch), sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_values=inputs["input_values"].to(model.dtype), attention_mask=inputs["attention_mask"])
    decoded = {h: model.heads[h].decode(o, out.mask) for h, o in out.outputs.items()}
    return [{h: v[i] for h, v in decoded.items()} for i in range(len(batch))]


def same(a: Any, b: Any, tol: float = 1e-4) -> bool:
    """Equal predictions: structure and labels exactly, numbers within a relative tolerance."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


def decisions(head_type: str, prediction: Any) -> list:
    """What a prediction decides, as a list of comparable items (agreement is counted per item)."""
    if head_type == "classification":
        return [prediction["label"]]
    if head_type == "multilabel":
        return [tuple(prediction["labels"])]
    if head_type == "token-classification":
        return [w["tag"] if isinstance(w, dict) else w for w in prediction]
    if head_type == "span":
        return [(prediction["start"], prediction["end"])]
    if head_type in ("masked-lm", "causal-lm"):
        return list(prediction)
    if head_type in ("ctc", "seq2seq"):
        return [prediction]
    return []  # numbers: compared with a tolerance in `agreement`


def agreement(head_type: str, ours: list, theirs: list) -> float:
    """The share of decisions two runs agree on; numeric heads agree within 5% of the value's scale,
    embeddings when they point the same way (cosine similarity 0.99 or more)."""
    if head_type == "embedding":
        pairs = [(np.asarray(a["embedding"]), np.asarray(b["embedding"])) for a, b in zip(ours, theirs, strict=True)]
        return float(np.mean([u @ v >= 0.99 * np.linalg.norm(u) * np.linalg.norm(v) for u, v in pairs]))
    if head_type in ("regression", "reward", "box", "multiple-choice", "cross-encoder"):

        def numbers(p: Any) -> list[float]:
            values = p.values() if isinstance(p, dict) else p
            return [float(v) for v in (values if isinstance(values, list | tuple) else list(values))]

        pairs = [(x, y) for a, b in zip(ours, theirs, strict=True) for x, y in zip(numbers(a), numbers(b), strict=True)]
        scale = max(1.0, max(abs(x) for x, _ in pairs))
        return float(np.mean([abs(x - y) <= 0.05 * scale for x, y in pairs]))
    pairs = [
        (x, y)
        for a, b in zip(ours, theirs, strict=True)
        for x, y in zip(decisions(head_type, a), decisions(head_type, b), strict=True)
    ]
    return float(np.mean([x == y for x, y in pairs]))


# ----------------------------------------------------------------------------- save -> load


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_save_load_gives_the_same_outputs_buffers_and_eval_mode(family):
    model, processor, saved = zoo_model(family)
    loaded = headkit.load(saved)
    assert [n for n, m in loaded.named_modules() if m.training] == []
    assert json.loads((saved / "heads.json").read_text())["heads"].keys() == model.heads.keys()
    expected = model.state_dict()
    for key, tensor in loaded.state_dict().items():  # parameters and buffers (BatchNorm statistics)
        assert torch.equal(tensor, expected[key]), key
    f = BY_NAME[family]
    assert same(predict(loaded, processor, f, examples(f)), predict(model, processor, f, examples(f)), tol=1e-6)
    pooled = {n: h.config.pooling for n, h in loaded.heads.items() if not h.per_token}
    assert "auto" not in pooled.values(), pooled  # heads.json records the resolved pooling


# ----------------------------------------------------------------------------- padding


@pytest.mark.parametrize(("family", "head", "side"), cells(side=True))
def test_a_padded_batch_predicts_what_each_example_predicts_alone(family, head, side):
    model, processor, _ = zoo_model(family)
    f = BY_NAME[family]
    batch = predict(model, processor, f, examples(f), side)
    alone = [predict(model, processor, f, [x], side)[0] for x in examples(f)]
    name = head_name(head)
    for i, (together, single) in enumerate(zip(batch, alone, strict=True)):
        assert same(together[name], single[name], tol=1e-4), (i, together[name], single[name])


# ----------------------------------------------------------------------------- bf16


@cache
def bf16_models(family: str) -> tuple:
    model, processor, saved = zoo_model(family)
    half = headkit.load(saved, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    return model, half, processor


@cache
def bf16_predictions(family: str) -> tuple[list, list]:
    model, half, processor = bf16_models(family)
    f = BY_NAME[family]
    batch = examples(f, many=True)
    return predict(model, processor, f, batch), predict(half, processor, f, batch)


@torch.no_grad()
def next_token_choices(family: str, name: str) -> tuple[list[int], list[int]]:
    """A text-writing head's decisions are its next-token choices: fp32's greedy texts, each step
    chosen again by fp32 and by bf16 on the same prefix (teacher forcing). Whole generated texts
    are no fair count: one near-tie early sends the rest of a text elsewhere, and a random tiny
    decoder is full of near-ties whose side depends on the CPU's bf16 kernels."""
    model, half, processor = bf16_models(family)
    enc = dict(processor(list(examples(BY_NAME[family], many=True)), padding=True, return_tensors="pt"))
    ours, theirs = model(heads=[name], **enc), half(heads=[name], **enc)
    head, end = model.heads[name], model.heads[name].token_ids["end_token_id"]
    ids = head.generate(ours.outputs[name], ours.mask)  # (B, L): the start token, then the text
    steps, every = ids[:, :-1], torch.ones_like(ids[:, :-1])  # causal: later positions change nothing
    choices = [
        m.heads[name]._logits(steps, every, out.outputs[name], out.mask).argmax(-1)
        for m, out in ((model, ours), (half, theirs))
    ]
    fp32, bf16 = [], []
    for row, text in enumerate(ids[:, 1:].tolist()):
        length = text.index(end) + 1 if end in text else len(text)  # up to the choice of the end token
        assert choices[0][row, :length].tolist() == text[:length]  # teacher forcing retraces the greedy text
        fp32 += choices[0][row, :length].tolist()
        bf16 += choices[1][row, :length].tolist()
    return fp32, bf16


@pytest.mark.parametrize(("family", "head", "side"), cells())
def test_bf16_runs_and_agrees_with_fp32(family, head, side):
    fp32, bf16 = bf16_predictions(family)
    name = head_name(head)
    if head == "seq2seq":  # bf16 must write a text for every example; its choices are counted step by step
        assert all(isinstance(p[name], str) for p in bf16)
        share = float(np.mean(np.equal(*next_token_choices(family, name))))
    else:
        share = agreement(head, [p[name] for p in fp32], [p[name] for p in bf16])
    assert share >= 0.95, f"{family} {head}: bf16 agrees with fp32 on {share:.0%} of decisions"


# ----------------------------------------------------------------------------- imported pretraining heads


@pytest.mark.parametrize(("family", "head", "side"), cells(lm=True))
def test_an_imported_pretraining_head_gives_the_checkpoints_own_logits(family, head, side):
    from headkit.training.pretrain import import_pretraining_head

    f = BY_NAME[family]
    model = MultiHeadModel.from_pretrained(checkpoint(family), heads={"lm": head_config(head)})
    embeddings = model.backbone.get_input_embeddings().weight.detach().clone()
    imported = import_pretraining_head(str(checkpoint(family)), model.heads["lm"])
    assert torch.equal(model.backbone.get_input_embeddings().weight, embeddings)  # never written over
    if not f.lm_import:
        assert not imported  # a head of another shape (ELECTRA's generator) is not imported, and says so
        return
    assert imported
    reference = getattr(transformers, f.architecture).from_pretrained(checkpoint(family)).eval()
    processor = headkit.load_processor(checkpoint(family))
    inputs = processor(TEXTS[:6], padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(**inputs).outputs["lm"]
        theirs = reference(**inputs).logits
    real = inputs["attention_mask"].bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5), float((ours[real] - theirs[real]).abs().max())
    tied = reference.get_output_embeddings().weight is reference.get_input_embeddings().weight
    assert bool(model.tied_parameter_names()) == tied  # tied exactly where the checkpoint ties


# ----------------------------------------------------------------------------- export


@pytest.mark.parametrize(("family", "head", "side"), cells(export=True))
def test_a_transformers_export_computes_what_the_head_computes_or_is_refused(family, head, side, tmp_path):
    from headkit.errors import ExportError
    from headkit.ship.export import export_transformers

    model, processor, _ = zoo_model(family)
    single = MultiHeadModel(model.backbone, {}).eval()
    name = head_name(head)
    single.heads[name] = model.heads[name]
    single.weighting.add_head(name)
    saved = headkit.save(single, tmp_path / "single", processor=processor)
    f = BY_NAME[family]
    try:
        result = export_transformers(saved, tmp_path / "export", head=name)
    except ExportError as e:
        assert head not in f.exports, f"model_zoo says {family} {head} exports exactly, but: {e}"
        assert "\n" not in str(e) and len(str(e)) < 600  # refused in one clear line
        return
    assert head in f.exports, f"{family} {head} now exports exactly: add it to its exports in model_zoo"
    auto = getattr(transformers, model.heads[name].export.target)
    exported = auto.from_pretrained(result.path).eval()
    inputs = _model_inputs(f, processor)
    with torch.no_grad():
        ours = single(**inputs)
        export = single.heads[name].export  # the exported model's inputs (choices: one per example)
        theirs = export.output(exported(**export.inputs(inputs))).float()
    mine = ours.outputs[name].float()
    if single.heads[name].per_token:
        real = ours.mask.bool()
        mine, theirs = mine[real], theirs[real]
    assert torch.allclose(mine, theirs, atol=1e-4), float((mine - theirs).abs().max())


def _model_inputs(family: Family, processor) -> dict[str, torch.Tensor]:
    if family.text:
        processor.padding_side = "right"
        return dict(processor(TEXTS[:6], padding=True, return_tensors="pt"))
    if family.kind == "vision":
        return {"pixel_values": processor(images(), return_tensors="pt")["pixel_values"]}
    inputs = processor(waveforms(), sampling_rate=16000, padding=True, return_tensors="pt")
    return {"input_values": inputs["input_values"], "attention_mask": inputs["attention_mask"]}


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_an_onnx_export_answers_every_head_as_torch_does(family, tmp_path):
    from headkit.errors import ExportError
    from headkit.ship.export import export_onnx
    from headkit.ship.onnx_engine import OnnxModel

    model, processor, saved = zoo_model(family)
    writers = [name for name, head in model.heads.items() if head.view.writes_text]
    if writers:  # a decoding loop is not one forward graph: refused in one line, the other heads export
        with pytest.raises(ExportError, match="decoding loop") as refused:
            export_onnx(saved, tmp_path / "refused", optimize=False)
        assert "\n" not in str(refused.value)
        model = MultiHeadModel(model.backbone, {n: c for n, c in model.head_configs.items() if n not in writers})
        model.heads.load_state_dict(zoo_model(family)[0].heads.state_dict(), strict=False)
        saved = headkit.save(model.eval(), tmp_path / "forward-heads", processor=processor)
    export_onnx(saved, tmp_path / "onnx", optimize=False)
    engine = OnnxModel(tmp_path / "onnx")
    f = BY_NAME[family]
    inputs = _model_inputs(f, processor)
    with torch.no_grad():
        ours = model(**inputs)
    theirs = engine(**inputs)
    for name, output in ours.outputs.items():
        a, b = output.float(), theirs.outputs[name].float()
        if model.heads[name].per_token:
            a, b = a[ours.mask.bool()], b[ours.mask.bool()]
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (name, float((a - b).abs().max()))


# ----------------------------------------------------------------------------- a changed backbone


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_head_only_saves_of_a_changed_backbone_are_refused_on_other_weights(family, tmp_path, caplog):
    zoo, _, _ = zoo_model(family)
    pristine = headkit.load_backbone(checkpoint(family))
    model = MultiHeadModel(headkit.load_backbone(checkpoint(family)), zoo.head_configs)  # another load, same weights
    headkit.save_heads(model, tmp_path / "same")
    assert headkit.load_heads(tmp_path / "same", pristine).heads.keys() == model.heads.keys()
    tuned = headkit.load_backbone(checkpoint(family))
    with torch.no_grad():  # what fine-tuning does: small moves of every weight
        for p in tuned.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    on_tuned = MultiHeadModel(tuned, model.head_configs)
    headkit.save_heads(on_tuned, tmp_path / "tuned")
    with pytest.raises(FingerprintMismatchError, match="other weights"):
        headkit.load_heads(tmp_path / "tuned", headkit.load_backbone(checkpoint(family)))
    with caplog.at_level("WARNING", logger="headkit"):
        forced = headkit.load_heads(tmp_path / "tuned", pristine, allow_other_weights=True)
    assert forced.heads.keys() == model.heads.keys() and "other weights" in caplog.text
    # the same backbone in bf16 is the same backbone
    assert headkit.load_heads(tmp_path / "same", headkit.load_backbone(checkpoint(family), dtype=torch.bfloat16))


# ----------------------------------------------------------------------------- training: resume, strategies


def _training_data(family: Family, directory: Path) -> tuple[str, str]:
    """A small labelled file for one classification head (text column, or image files)."""
    import csv

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(16):
        label = ["neg", "pos"][i % 2]
        if family.kind == "vision":
            image = images(1, seed=i)[0]
            image.save(directory / f"{i}.png")
            rows.append({"text": f"{i}.png", "label": label})
        else:
            rows.append(
                {"text": " ".join(rng.choice(WORDS, 5)) + (" good" if label == "pos" else " bad"), "label": label}
            )
    path = directory / "data.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return str(path), "text"


TRAINED = [f for f in FAMILIES if f.kind != "speech"]  # training from files reads text and image files


def strategy_cells() -> list:
    return [pytest.param(f.name, s, id=f"{f.name}-{s}") for f in TRAINED for s in STRATEGIES]


@pytest.mark.parametrize(("family", "strategy"), strategy_cells())
def test_a_killed_run_resumes_to_the_uninterrupted_result(family, strategy, tmp_path, monkeypatch):
    from headkit.data.tasks import TaskSpec
    from headkit.training.recipe import TrainConfig, train

    f = BY_NAME[family]
    data, text = _training_data(f, tmp_path / "data")

    def config(out: Path) -> TrainConfig:
        return TrainConfig(
            model=str(checkpoint(family)),
            tasks=[TaskSpec("label", data, text=text)],
            output_dir=str(out),
            strategy=strategy,
            epochs=2,
            batch_size=4,
            lr=1e-2,
            backbone_lr=1e-3,
            lora_lr=1e-2,
            lora_r=2,
            val_fraction=0.25,
            patience=0,
            save_every=2,
            progress=False,
            feature_cache=False,
            max_length=16,
        )

    if strategy in f.refused:
        with pytest.raises(HeadkitError, match=f.refused[strategy]) as refused:
            train(config(tmp_path / "refused"))
        assert "\n" not in str(refused.value)
        return
    uninterrupted = train(config(tmp_path / "a"))
    steps = {"n": 0}
    original = MultiHeadModel.forward_heads

    def crash_after_five(self, *args, **kwargs):
        steps["n"] += self.training
        if steps["n"] == 5 and self.training:  # mid-epoch 2, one step after the checkpoint at step 4
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MultiHeadModel, "forward_heads", crash_after_five)
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path / "b"))
    monkeypatch.setattr(MultiHeadModel, "forward_heads", original)
    resumed = train(config(tmp_path / "b").__class__(**{**config(tmp_path / "b").__dict__, "resume": True}))
    expected = uninterrupted.model.state_dict()
    got = resumed.model.state_dict()
    assert got.keys() == expected.keys()
    for key, tensor in got.items():  # parameters and buffers, bit for bit
        assert torch.equal(tensor, expected[key]), key
    if strategy != "frozen":  # heads of a changed backbone refuse the pristine one
        headkit.save_heads(resumed.model, tmp_path / "heads")
        with pytest.raises(FingerprintMismatchError):
            headkit.load_heads(tmp_path / "heads", headkit.load_backbone(checkpoint(family)))


def test_the_zoo_covers_the_families_the_issue_names():
    kinds = {f.kind for f in FAMILIES}
    assert len(FAMILIES) >= 16 and kinds == {"encoder", "decoder", "encoder-decoder", "vision", "speech"}
    assert {"llama-tied", "llama-untied"} <= set(BY_NAME)
    assert not is_image_processor(headkit.load_processor(checkpoint("bert")))


def test_the_readme_table_is_rendered_from_this_matrix():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    check = subprocess.run(
        [sys.executable, "scripts/supported_models.py", "--check"], cwd=root, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr + " (run: python scripts/supported_models.py)"
