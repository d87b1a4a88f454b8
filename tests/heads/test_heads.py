import math

import pytest
import torch
import transformers

from headkit import HeadConfigError, UnknownHeadTypeError, build_head, head_config
from headkit.heads import IGNORE_INDEX, REGISTRY, config_from_dict, head_class
from headkit.heads.box import iou_and_giou
from headkit.heads.pooling import pool
from headkit.heads.span import overlap_f1

B, T, H = 4, 6, 16
NAN = float("nan")


def mask() -> torch.Tensor:
    m = torch.ones(B, T, dtype=torch.long)
    m[-1, -2:] = 0
    return m


def labels_for(head_type: str) -> torch.Tensor:
    """Labels for a batch of B, with example 1 missing."""
    if head_type == "classification":
        return torch.tensor([0, IGNORE_INDEX, 2, 1])
    if head_type == "multilabel":
        return torch.tensor([[1.0, 0, 1], [NAN, NAN, NAN], [0, 0, 1], [1, 1, 0]])
    if head_type == "regression":
        return torch.tensor([[0.5, 1.0], [NAN, NAN], [-1.0, 2.0], [0.0, 0.0]])
    if head_type in ("token-classification", "masked-lm", "causal-lm"):
        y = torch.randint(0, 3, (B, T))
        y[1] = IGNORE_INDEX
        y[-1, -2:] = IGNORE_INDEX
        return y
    if head_type == "span":
        return torch.tensor([[1, 2], [IGNORE_INDEX, IGNORE_INDEX], [0, 0], [2, 3]])
    if head_type == "ctc":
        return torch.tensor([[1, 2, IGNORE_INDEX], [IGNORE_INDEX] * 3, [2, 2, 1], [1, IGNORE_INDEX, IGNORE_INDEX]])
    if head_type == "box":
        return torch.tensor([[0.1, 0.1, 0.5, 0.5], [NAN] * 4, [0.2, 0.3, 0.9, 0.8], [0.0, 0.0, 1.0, 1.0]])
    if head_type == "cross-encoder":  # a relevance in [0, 1] per (query, document)
        return torch.tensor([[1.0], [NAN], [0.0], [0.5]])
    if head_type == "multiple-choice":  # the right choice's position among 3
        return torch.tensor([2, IGNORE_INDEX, 0, 1])
    if head_type in ("reward", "embedding"):  # B pairs (preference pairs; anchors and positives: partner ids)
        return torch.tensor([[1.0], [NAN], [2.0], [3.0]])
    if head_type == "seq2seq":  # [start, tokens .., end], padded to the longest target
        return torch.tensor(
            [[1, 5, 6, 2], [IGNORE_INDEX] * 4, [1, 7, 2, IGNORE_INDEX], [1, 2, IGNORE_INDEX, IGNORE_INDEX]]
        )
    raise ValueError(head_type)


def rows(head) -> int:
    """Scored rows for B labelled examples: a pairs head scores the chosen and the rejected text, a
    multiple-choice head each of 3 choices."""
    return {"pairs": 2 * B, "choices": 3 * B}.get(head.codec.inputs, B)


def make(head_type: str):
    fields = {"input_size": H}
    if not head_class(head_type).per_token:  # a head on its own names its pooling (auto needs a backbone)
        fields["pooling"] = "cls"
    if head_type in ("classification", "multilabel", "token-classification", "ctc"):
        fields["labels"] = ["O", "B-X", "I-X"] if head_type == "token-classification" else ["a", "b", "c"]
    if head_type == "regression":
        fields["labels"] = ["x", "y"]
    if head_type in ("masked-lm", "causal-lm"):
        fields.update(vocab_size=10, tie_embeddings=False)
    if head_type == "seq2seq":
        decoder = transformers.BertConfig(
            vocab_size=10, hidden_size=H, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        fields.update(start_token_id=1, end_token_id=2, pad_token_id=0, max_new_tokens=4)
        fields["decoder"] = {**decoder.to_dict(), "is_decoder": True, "add_cross_attention": True}
    return build_head(head_config(head_type, **fields))


@pytest.mark.parametrize("head_type", sorted(REGISTRY))
def test_forward_loss_backward_decode_score(head_type):
    torch.manual_seed(0)
    head = make(head_type)
    hidden = torch.randn(rows(head), T, H, requires_grad=True)
    out = head(hidden, mask().repeat(rows(head) // B, 1))
    y = labels_for(head_type)
    loss, n = head.loss(out, y, mask())
    assert n == 3  # example 1 is missing
    assert torch.isfinite(loss) and loss.ndim == 0
    loss.backward()
    assert hidden.grad is not None and torch.isfinite(hidden.grad).all()
    assert all(p.grad is not None for p in head.parameters() if p.requires_grad)
    # the references read the rows' mask, as evaluation gives them the batch's (out.mask)
    preds, refs = head.decode(out.detach(), mask()), head.codec.references(y, mask().repeat(rows(head) // B, 1))
    assert len(preds) == len(refs) == rows(head) and refs[1] is None
    scores = head.scoring.score(preds, refs)
    assert head.scoring.primary in scores and all(math.isfinite(v) for v in scores.values())
    assert set(scores) <= set(head.scoring.metrics)  # every metric it reports has a known direction


@pytest.mark.parametrize("head_type", sorted(REGISTRY))
def test_all_labels_missing_gives_zero_loss_not_nan(head_type):
    head = make(head_type)
    hidden = torch.randn(rows(head), T, H, requires_grad=True)
    out = head(hidden, mask().repeat(rows(head) // B, 1))
    y = labels_for(head_type)
    y = torch.full_like(y, NAN) if y.is_floating_point() else torch.full_like(y, IGNORE_INDEX)
    loss, n = head.loss(out, y, mask())
    assert n == 0 and loss.item() == 0.0
    loss.backward()  # still differentiable
    refs = head.codec.references(y, mask().repeat(rows(head) // B, 1))
    assert head.scoring.score(head.decode(out.detach(), mask()), refs) == {}


def test_missing_example_does_not_change_the_loss():
    torch.manual_seed(0)
    head = make("classification").eval()
    hidden = torch.randn(B, T, H)
    y = labels_for("classification")
    full, _ = head.loss(head(hidden, mask()), y)
    keep = torch.tensor([0, 2, 3])
    subset, _ = head.loss(head(hidden[keep], mask()[keep]), y[keep])
    assert torch.allclose(full, subset)


def test_pooling_ignores_padding_and_finds_last_token():
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)  # values 0..7
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    assert pool(hidden, right, "cls").flatten().tolist() == [0, 4]
    assert pool(hidden, right, "mean").flatten().tolist() == [1.0, 5.5]
    assert pool(hidden, right, "max").flatten().tolist() == [2, 7]
    assert pool(hidden, right, "last").flatten().tolist() == [2, 7]
    assert pool(hidden, left, "last").flatten().tolist() == [3, 7]
    assert pool(hidden, left, "mean").flatten().tolist() == [2.0, 5.5]
    with pytest.raises(HeadConfigError, match=r"unknown pooling 'median'"):
        pool(hidden, right, "median")


def test_giou_matches_hand_computed_values():
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.4, 0.4]])
    target = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.8, 0.8, 1.0, 1.0], [0.1, 0.1, 0.4, 0.4]])
    iou, giou = iou_and_giou(pred, target)
    # 1: overlap 0.25^2 = 0.0625, union 0.25 + 0.25 - 0.0625 = 0.4375, hull 0.75^2 = 0.5625
    assert iou[0].item() == pytest.approx(0.0625 / 0.4375)
    assert giou[0].item() == pytest.approx(0.0625 / 0.4375 - (0.5625 - 0.4375) / 0.5625)
    # 2: disjoint: iou 0, union 0.08, hull 1.0 -> giou = -(1 - 0.08)
    assert iou[1].item() == 0.0 and giou[1].item() == pytest.approx(-0.92)
    # 3: identical boxes
    assert iou[2].item() == pytest.approx(1.0) and giou[2].item() == pytest.approx(1.0)


def test_box_head_outputs_valid_boxes_in_unit_square():
    head = make("box")
    out = head(torch.randn(64, T, H) * 50, torch.ones(64, T))
    assert out.min() >= 0 and out.max() <= 1
    assert (out[:, 2] >= out[:, 0]).all() and (out[:, 3] >= out[:, 1]).all()


def test_box_loss_is_l1_plus_giou_weighted():
    head = make("box")
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    target = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    loss, _ = head.loss(pred, target)
    _, giou = iou_and_giou(pred, target)
    assert loss.item() == pytest.approx(5.0 * 0.25 + 2.0 * (1 - giou.item()))


def test_span_decoding_respects_order_and_padding():
    head = make("span")
    logits = torch.full((1, T, 2), -10.0)
    logits[0, 3, 0] = 10  # start at 3
    logits[0, 1, 1] = 9  # best end is *before* the start: not allowed
    logits[0, 4, 1] = 8
    (pred,) = head.decode(logits, torch.ones(1, T))
    assert (pred["start"], pred["end"]) == (3, 4)
    assert overlap_f1((3, 4), (3, 4)) == 1.0 and overlap_f1((0, 1), (2, 3)) == 0.0
    assert overlap_f1((0, 3), (2, 3)) == pytest.approx(2 * 0.5 * 1 / 1.5)


def test_ctc_greedy_decoding_merges_repeats_and_drops_blanks():
    head = make("ctc")  # vocabulary a(blank) b c
    ids = torch.tensor([[1, 1, 0, 1, 2, 2, 0]])
    logits = torch.nn.functional.one_hot(ids, 3).float()
    assert head.decode(logits, torch.ones(1, 7)) == ["bbc"]
    assert head.scoring.score(["bbc"], ["bc"]) == {"cer": 0.5}


def test_token_classification_uses_seqeval_for_bio_tags():
    head = make("token-classification")
    scores = head.scoring.score([["B-X", "I-X", "O"]], [["B-X", "O", "O"]])
    assert scores["f1"] == 0.0 and scores["accuracy"] == pytest.approx(2 / 3)


def test_causal_lm_loss_shifts_labels():
    head = make("causal-lm")
    logits = torch.full((1, 3, 10), -20.0)
    logits[0, 0, 7] = 20  # position 0 predicts token at position 1
    logits[0, 1, 8] = 20
    loss, n = head.loss(logits, torch.tensor([[5, 7, 8]]))
    assert n == 1 and loss.item() < 1e-6


def test_unknown_head_type_and_fields_are_clear_errors():
    with pytest.raises(UnknownHeadTypeError, match=r"unknown head type 'classifier'.*known types"):
        head_config("classifier")
    with pytest.raises(HeadConfigError, match=r"unknown field\(s\) \['colour'\]"):
        head_config("classification", labels=["a", "b"], colour="red")
    with pytest.raises(HeadConfigError, match=r"at least 2 label"):
        build_head(head_config("classification", input_size=8, labels=["only"]))
    with pytest.raises(HeadConfigError, match=r"duplicate label"):
        build_head(head_config("classification", input_size=8, labels=["a", "a"]))
    with pytest.raises(HeadConfigError, match=r"needs input_size"):
        build_head(head_config("classification", labels=["a", "b"]))
    with pytest.raises(HeadConfigError, match=r"without a 'type'"):
        config_from_dict({"labels": ["a"]})


def test_config_round_trips_through_dict():
    config = head_config("multilabel", input_size=8, labels=["a", "b"], pooling="mean", threshold=0.3)
    assert config_from_dict(config.to_dict()) == config
