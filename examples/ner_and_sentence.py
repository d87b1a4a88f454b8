"""Named entities and a sentence label from one backbone pass: a token-classification head and a
sentence classification head trained together on the shipped MiniLM.

The two heads learn from different data, as they usually do: `entities` tags the words of English
tweets (the built-in `tweet_ner`: BIO tags over 10 entity types, given as a `datasets` split with
`tokens` / `tags` columns), `sentiment` classifies Rotten Tomatoes review snippets (a
`headkit.TaskSpec` naming the built-in `rotten_tomatoes` dataset as its own data). One backbone pass
then answers both for any text: entity spans with character offsets, and a label.

Run: python examples/ner_and_sentence.py   (about 40 s on a shared 2-core CPU; examples/README.md)

To stay well under a minute in CI it trains the heads of a frozen backbone on 600 tweets and 600
reviews for 10 epochs at 64 tokens. A real run uses every tweet and a few thousand reviews, and
`strategy="full"` (or "lora"), because tagging gains much more than sentence classification from
training the backbone: a frozen MiniLM finds few of these rare entity types.
"""

import headkit

tweets = headkit.builtin_dataset("tweet_ner")  # a datasets.DatasetDict: train / test, columns tokens, tags
heads = {
    # a dict of TaskSpec fields: the labels are the per-word `tags` of the trainer's train_dataset
    "entities": {"label": "tags", "type": "token-classification"},
    # a TaskSpec with data of its own: a seeded sample of 600 rows of the built-in review snippets
    "sentiment": headkit.TaskSpec("sentiment", data="rotten_tomatoes", label="label", limit=600),
}
result = headkit.train(
    "minilm",
    heads,
    train_dataset=tweets["train"].shuffle(seed=0).select(range(600)),
    eval_dataset=tweets["test"].select(range(150)),
    strategy="frozen",
    epochs=10,
    max_length=64,
    progress=False,
)
print("entities:", {k: round(v, 3) for k, v in result.metrics["heads"]["entities"].items()})
print("sentiment:", {k: round(v, 3) for k, v in result.metrics["heads"]["sentiment"].items()})

model = result.model
texts = [
    "Watching the Lakers game in Los Angeles with Kobe tonight",
    "A dull, lifeless film that wastes a fine cast.",
]
for text, prediction in zip(texts, model.predict(texts), strict=True):
    print(text)
    print(f"  sentiment: {prediction['sentiment']['label']} ({prediction['sentiment']['score']:.2f})")
    spans = [f"{e['word']!r} {e['entity_group']} [{e['start']}:{e['end']}]" for e in prediction["entities"]]
    print("  entities:", ", ".join(spans) or "(none)")
