"""The model answers for itself: `model.predict(inputs)` and `model.evaluate(dataset)`.

    model.predict("A gripping thriller.")         # {"sentiment": {"label": "fresh", "score": 0.93}, ...}
    model.predict([("A man sleeps.", "A person rests.")])   # sentence pairs, as NLI / STS heads read them
    model.predict(Image.open("cat.jpg"))          # an image model: PIL images (or image file paths)
    model.evaluate(data["test"])                  # {"sentiment": {"accuracy": ...}, ...}; .losses per head
    model.encode(["A text.", "Another."])         # an embedding head's vectors, (2, D)
    model.rank("The cat", ["sat on the mat.", "flew."])    # candidates best first, by a scoring head

A mixin, as ship/pretrained.py is for saving and loading, so that model.py keeps to the model.
It needs of the class only `heads`, `_processor()`, `max_length`, `device`, `columns` (optional)
and a forward call, and imports nothing of headkit.model at import time (model.py imports it).
The work is done by ship/predict_batches.py (one backbone pass per batch for every head) and
training/evaluate.py (the same scoring as `headkit evaluate`), so the CLI, the server,
`headkit.pipeline` and these methods give the same answers for the same inputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from headkit.data import MAX_TOKENS
from headkit.errors import DataError, HeadkitError

if TYPE_CHECKING:
    from headkit.heads.base import HeadModules

HeadColumns = Mapping[str, str | Mapping[str, str | None]]


class Metrics(dict):
    """`model.evaluate`'s answer: head -> metric -> value (as the `heads` of a run's metrics.json),
    with what does not fit that shape as attributes:

    - `losses`: head -> mean validation loss over the labelled examples (metrics.json's `val_losses`);
    - `per_class`: head -> class -> {precision, recall, f1-score, support}, for heads that decide classes;
    - `num_examples`: how many examples were scored;
    - `unseen`: head -> labels of the data that training never had (scored as misses).

    The losses stay out of the dict so that every key is a head (a head may be named `loss`)."""

    def __init__(
        self,
        scores: Mapping[str, Mapping[str, float]],
        losses: Mapping[str, float] | None = None,
        per_class: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
        num_examples: int = 0,
        unseen: Mapping[str, list[str]] | None = None,
    ):
        super().__init__({head: dict(values) for head, values in scores.items()})
        self.losses = dict(losses or {})
        self.per_class = {head: dict(report) for head, report in (per_class or {}).items()}
        self.num_examples = num_examples
        self.unseen = {head: list(names) for head, names in (unseen or {}).items()}

    def to_json(self) -> dict[str, Any]:
        """What `headkit evaluate --output` writes: {"scores", "losses", "per_class"}, and "unseen"
        when the data had labels training never had."""
        unseen = {"unseen": self.unseen} if self.unseen else {}
        return {"scores": dict(self), "losses": self.losses, "per_class": self.per_class, **unseen}


class InferenceMixin:
    """`predict` and `evaluate` for a model with heads, a processor and a forward pass."""

    if TYPE_CHECKING:  # what the model class (MultiHeadModel) provides
        heads: HeadModules
        max_length: int | None

        def _processor(self) -> Any: ...

    def predict(
        self,
        inputs: Any,
        batch_size: int = 32,
        heads: list[str] | None = None,
        max_length: int | None = None,
        progress: bool = False,
        max_tokens: int | None = MAX_TOKENS,
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """Every head's answer (or the named `heads`') for each input, from one backbone pass per batch.

        `inputs`: a text, a list of texts, a list of `(text, text_pair)` tuples (a single tuple of
        two texts, or `{"text": ..., "text_pair": ...}`, is one pair), a PIL image or a list of them
        (an image model also takes image file paths). A single input gives one dict; a list gives
        a list with one dict per input, in order. Each head answers as transformers pipelines do
        for its task (`head.view.pipeline_output`): text classification {"label", "score"},
        token classification entity spans with character offsets, and so on; an input longer than
        `max_length` tokens (default: the limit the model was trained with) is predicted on its
        start and its dict says `"truncated": True`.

        Texts are batched by length: a forward pass reads at most `batch_size` texts and at most
        `max_tokens` padded tokens (texts x the longest one's length; None: count only), so long
        texts go in small batches and short ones in big ones; answers do not depend on the batch.

        Pairs: heads trained on preference pairs (reward heads) score a (prompt, response) as the
        one text training joined; any other model reads `tokenizer(text, text_pair)`, as training
        with a `text_pair` column encodes it (with BERT-style segment ids).

        The model runs in eval mode (dropout off) and is put back in training mode afterwards if
        it was in it, so predicting in the middle of training is safe.
        """
        return answer(self, self._processor(), inputs, batch_size, heads, max_length, progress, max_tokens)

    def encode(
        self, texts: str | Sequence[str], head: str | None = None, batch_size: int = 32, progress: bool = False
    ) -> Any:
        """The embedding head's vectors for `texts`: a (N, D) float32 numpy array (a single text:
        (D,)), as `SentenceTransformer.encode` gives them. `head`: which embedding head (needed
        when the model has several); the model's other heads are not computed."""
        import numpy as np

        name = head_that_gives(
            self.heads, "gives_vectors", head, "embedding", "encode needs the embedding head to read"
        )
        single = isinstance(texts, str)
        inputs = [texts] if single else list(texts)
        answers = self.predict(inputs, batch_size=batch_size, heads=[name], progress=progress)
        assert isinstance(answers, list)  # a list of inputs gives a list of answers
        vectors = np.array([a[name] for a in answers], dtype=np.float32)
        return vectors[0] if single else vectors

    def rank(
        self, query: str, candidates: Sequence[str], head: str | None = None, batch_size: int = 32
    ) -> list[dict[str, Any]]:
        """`candidates` best first, as a head that scores one (query, candidate) pair per input
        orders them: a cross-encoder head (a query and its documents), a multiple-choice head (the
        query is the context, the candidates its choices) or a reward head (a prompt and its
        responses). Each is {"index" (its place in
        `candidates`), "text", "score", "probability" (a multiple-choice or reward head's: softmax
        over the candidates' scores; a cross-encoder's: each pair's own probability of relevance,
        the sigmoid of its score)}, and "truncated": True where the pair
        was longer than the model reads. `head`: which scoring head (needed when the model has
        several)."""
        return score_choices(self, self._processor(), [(query, candidates)], head, batch_size)[0].ranked()

    def evaluate(
        self,
        dataset: Any,
        heads: Sequence[str] | HeadColumns | None = None,
        batch_size: int = 64,
        progress: bool = False,
    ) -> Metrics:
        """Every head's metrics on labelled `dataset`, as `headkit evaluate` scores the same rows.

        `dataset`: a `datasets.Dataset` (or `DatasetDict`: its test split, else its validation split), a
        pandas DataFrame, a dict of lists, a list of dicts, a file or a built-in dataset name. `heads`:
        the heads to score (default: every head), as names or as a dict head -> label column (or ->
        {"label", "text", "text_pair"}). A head reads the columns it trained on (`model.columns`) where
        the data has them, else the CLI's defaults: a label column named like the head ('label' for a
        lone head), text in `text`. Labels a head never saw in training count as misses (it cannot
        predict them), with one warning naming them (`.unseen`).

        Returns a `Metrics`: head -> metric -> value, with `.losses` (head -> mean loss),
        `.per_class` and `.num_examples`.
        """
        from headkit.training.evaluate import evaluate_dataset

        dataset = held_out_split(dataset)
        processor = _require_processor(self, self._processor())
        if heads is None or isinstance(heads, Mapping):
            columns = dict(heads or {})
        elif isinstance(heads, str):
            raise HeadkitError(f"heads={heads!r}: give a list of head names, e.g. heads=[{heads!r}]")
        else:
            columns = {name: {} for name in heads}
        evaluation, count = evaluate_dataset(
            self, processor, dataset, columns, max_length=self.max_length, batch_size=batch_size, progress=progress
        )
        return Metrics(evaluation.scores, evaluation.losses, evaluation.reports, count, evaluation.unseen)

    def encode_dataset(self, dataset: Any, heads: HeadColumns | None = None, max_length: int | None = None) -> Any:
        """Labelled `dataset` tokenized for this model's heads, with their label maps: a torch
        Dataset for `transformers.Trainer` (with `data_collator()`), or for a loop of your own.
        `dataset` and `heads` (head -> label column or {"label", "text", "text_pair"}; default:
        every head, reading the columns `evaluate` reads) as in `evaluate`."""
        from headkit.training.evaluate import encode_dataset

        processor = _require_processor(self, self._processor())
        return encode_dataset(self, processor, dataset, dict(heads or {}), max_length=max_length or self.max_length)

    def data_collator(self) -> Any:
        """Pads a list of `encode_dataset` examples into one batch for this model (the tokenizer's pad
        id, each head's labels stacked or padded): `transformers.Trainer(data_collator=...)`."""
        import functools

        from headkit.data.batching import collate

        processor = self._processor()
        pad_id = getattr(processor, "pad_token_id", None) or 0  # image processors have none
        head_types = {name: head.config.type for name, head in self.heads.items()}
        widths = {name: len(head.config.labels) for name, head in self.heads.items()}
        return functools.partial(collate, pad_id=pad_id, head_types=head_types, widths=widths)


def held_out_split(dataset: Any) -> Any:
    """A DatasetDict's split to score: test, else validation (never train: scores on the training rows
    would look better than the model is); any other dataset as it is."""
    from headkit.data.readers import is_split_dict

    if not is_split_dict(dataset):
        return dataset
    splits = list(dataset.keys())
    found = next((s for s in ("test", "validation") if s in splits), None)
    if found is None:
        raise DataError(f"evaluate: the dataset has the splits {splits} and no 'test' or 'validation'; pass one split")
    return dataset[found]


def head_that_gives(
    heads: Any, flag: str, head: str | None, noun: str, need: str, how: str = "head=...",
    error: type[HeadkitError] = HeadkitError,
) -> str:  # fmt: skip
    """The head whose view has `flag` (gives_vectors, gives_scores): `head` when it is one, else
    the only one the model has; `error` says which there are (`need`: what asks for one; `how`:
    how to name one)."""
    offering = [name for name, h in heads.items() if getattr(h.view, flag)]
    if head is not None:
        if head not in offering:
            raise error(f"no {noun} head named '{head}'; this model's {noun} heads: {offering}")
        return head
    if not offering:
        raise error(f"{need}; this model has none (heads: {list(heads)})")
    if len(offering) > 1:
        raise error(f"{need}; this model has {offering}: name one with {how}")
    return offering[0]


@dataclass(frozen=True)
class ScoredChoices:
    """One query's candidates as a scoring head scored them, in the order given."""

    texts: list[str]
    scores: list[float]
    truncated: list[bool]
    probabilities: list[float]  # as the head reads its scores (ScoreView.probabilities)

    def entry(self, i: int) -> dict[str, Any]:
        """Candidate i as `model.rank` gives it."""
        cut = {"truncated": True} if self.truncated[i] else {}
        return {"index": i, "text": self.texts[i], "score": self.scores[i], "probability": self.probabilities[i], **cut}

    def ranked(self) -> list[dict[str, Any]]:
        """The candidates best first, as `model.rank` gives them."""
        return [self.entry(i) for i in sorted(range(len(self.texts)), key=lambda i: -self.scores[i])]

    def choice(self) -> dict[str, Any]:
        """The best candidate and every candidate's score and probability, in the order given (a
        multiple-choice file's prediction)."""
        best = max(range(len(self.scores)), key=lambda i: self.scores[i])
        return {"choice": best, "text": self.texts[best], "probabilities": self.probabilities, "scores": self.scores}


def score_choices(
    model: Any, processor: Any, items: Sequence[tuple[str, Sequence[str]]], head: str | None, batch_size: int = 32,
    progress: bool = False, max_length: int | None = None, max_tokens: int | None = MAX_TOKENS, how: str = "head=...",
) -> list[ScoredChoices]:  # fmt: skip
    """Every (query, candidate) pair of `items` scored by the model's scoring head (`head`, or its
    only one), all in one batched pass (`answer`, so an ONNX engine ranks as torch does)."""
    name = head_that_gives(
        model.heads, "gives_scores", head, "scoring", "ranking needs the head that scores pairs", how
    )
    for number, (query, candidates) in enumerate(items, start=1):
        texts = [query, *candidates] if not isinstance(candidates, str) else []
        if len(texts) < 2 or not all(isinstance(t, str) and t.strip() for t in texts):
            raise DataError(f"item {number}: ranking takes a query and a list of at least one candidate, all texts")
    pairs = [(query, text) for query, candidates in items for text in candidates]
    answers = answer(model, processor, pairs, batch_size, [name], max_length, progress, max_tokens)
    assert isinstance(answers, list)  # a list of inputs gives a list of answers
    scored, start = [], 0
    for _, candidates in items:
        mine = answers[start : start + len(candidates)]
        start += len(candidates)
        scores = [float(a[name]["score"]) for a in mine]
        cut = [bool(a.get("truncated")) for a in mine]
        scored.append(ScoredChoices(list(candidates), scores, cut, model.heads[name].view.probabilities(scores)))
    return scored


def answer(
    model: Any,
    processor: Any,
    inputs: Any,
    batch_size: int = 32,
    heads: list[str] | None = None,
    max_length: int | None = None,
    progress: bool = False,
    max_tokens: int | None = MAX_TOKENS,
) -> dict[str, Any] | list[dict[str, Any]]:
    """`predict`'s work for any model the predict functions run (a `MultiHeadModel` or an ONNX
    engine): what `model.predict` and `headkit.pipeline` both answer with."""
    from headkit.data.images import is_image_processor
    from headkit.ship.predict_batches import predict_images, predict_texts

    processor = _require_processor(model, processor)
    items, single = as_items(inputs)
    if heads is not None:
        unknown = [h for h in heads if h not in model.heads]
        if unknown:
            raise HeadkitError(f"unknown head(s) {unknown}; this model has {list(model.heads)}")
    reads_images = is_image_processor(processor)
    training = bool(getattr(model, "training", False))  # an ONNX engine has no training mode
    if training:
        model.eval()
    try:
        if reads_images:
            images = open_images(items)
            predictions = predict_images(model, processor, images, batch_size, progress, heads)
        else:
            check_texts(items, processor)
            predictions = predict_texts(model, processor, items, batch_size, max_length, heads, progress, max_tokens)
    finally:
        if training:
            model.train(True)
    answers = [pipeline_form(model, p) for p in predictions]
    return answers[0] if single else answers


def pipeline_form(model: Any, prediction: dict[str, Any]) -> dict[str, Any]:
    """One input's predictions with each head's answer as transformers pipelines give it (other
    keys, such as "truncated", as they are)."""
    return {h: model.heads[h].view.pipeline_output(v) if h in model.heads else v for h, v in prediction.items()}


def as_items(inputs: Any) -> tuple[list[Any], bool]:
    """(the inputs as a list, whether one input was given rather than a list of them)."""
    if isinstance(inputs, str) or _is_image(inputs) or isinstance(inputs, os.PathLike):
        return [inputs], True
    if isinstance(inputs, Mapping):
        return [_pair_of(inputs, "inputs")], True
    if isinstance(inputs, tuple) and len(inputs) == 2 and all(isinstance(t, str) for t in inputs):
        return [inputs], True  # one (text, text_pair); several pairs come as a list of tuples
    if inputs is None or isinstance(inputs, bytes | int | float) or not hasattr(inputs, "__iter__"):
        raise DataError(
            f"predict got {type(inputs).__name__}: give a text, a list of texts, a list of (text, text_pair) "
            "tuples, or PIL images"
        )
    items = list(inputs)
    return [_pair_of(item, f"item {i}") if isinstance(item, Mapping) else item for i, item in enumerate(items)], False


def _pair_of(item: Mapping, where: str) -> Any:
    """{"text": ..., "text_pair": ...} (transformers' text-classification pipeline's form) or
    {"question": ..., "context": ...} (its question-answering pipeline's) -> a tuple."""
    if set(item) == {"text", "text_pair"}:
        return (item["text"], item["text_pair"])
    if set(item) == {"question", "context"}:
        return (item["question"], item["context"])
    if set(item) == {"text"}:
        return item["text"]
    raise DataError(
        f"{where} is a dict with keys {sorted(item)}; a text pair is {{'text': ..., 'text_pair': ...}} "
        "(a question: {'question': ..., 'context': ...})"
    )


def check_texts(items: list[Any], processor: Any) -> None:
    """Refuse images given to a text model, and a model that reads neither text nor images (a
    speech model's feature extractor); predict_texts names any other bad item."""
    from transformers import PreTrainedTokenizerBase

    if not isinstance(processor, PreTrainedTokenizerBase):
        raise HeadkitError(
            f"predict reads text and images; this model's processor is a {type(processor).__name__} "
            "(audio?), which neither tokenizes text nor reads images"
        )
    for i, item in enumerate(items):
        if _is_image(item):
            raise DataError(f"item {i} is an image, but this model reads text (its processor is a tokenizer)")


def open_images(items: list[Any]) -> list[Any]:
    """PIL images as they are, image file paths opened (RGB); anything else a DataError naming it."""
    from headkit.ship.predict_batches import describe

    images = []
    for i, item in enumerate(items):
        if _is_image(item):
            images.append(item if item.mode == "RGB" else item.convert("RGB"))
            continue
        if not isinstance(item, str | os.PathLike):
            raise DataError(f"item {i} is {describe(item)}, but this model reads images: give PIL images or paths")
        images.append(_open(item, i))
    return images


def _open(path: str | os.PathLike, index: int) -> Any:
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        text = str(path)
        shown = text if len(text) < 60 else text[:57] + "..."
        raise DataError(f"item {index} is text ({shown!r}), but this model reads images, and it is no image file")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"item {index}: {path} is not an image PIL can read ({e})") from e


def _is_image(item: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow comes with the vision extras
        return False
    return isinstance(item, Image.Image)


def _require_processor(model: Any, processor: Any) -> Any:
    if processor is None:
        raise HeadkitError(
            "this model has no tokenizer or image processor (none was given, and none is saved beside its "
            "backbone): call model.set_processor(headkit.load_processor(CHECKPOINT)) first"
        )
    return processor
