"""A reward model from preference pairs: which reply answers this prompt?

Preference data in TRL's layout (`prompt`, `chosen`, `rejected`) is built from the built-in
`chatterbot_english` dialogs: for each prompt the chosen response is its true reply, the rejected
one a reply drawn (seeded) from another conversation. A `reward` head on the shipped MiniLM learns
a score per (prompt, response) with the Bradley–Terry loss, -log sigmoid(r_chosen - r_rejected),
and is measured by the share of held-out pairs it ranks right (`pair_accuracy`). `model.predict`
scores (prompt, response) tuples, joined as training joined them.

Run: python examples/reward_model.py   (about 30 s on a shared 2-core CPU; examples/README.md)

For CI it trains the head of a frozen MiniLM (features cached once) for 10 epochs on 600 pairs at
64 tokens; it ranks about 0.9 of 200 held-out pairs right (fine-tuning the whole MiniLM for 2
epochs reached 0.95, in 3 minutes). A real reward model sits on the LLM it will judge, with LoRA
(`headkit.train("smollm2", ..., strategy="lora")`), on every pair (or on human preference data),
with negatives harder than a random reply.
"""

import random

import headkit

dialogs = headkit.builtin_dataset("chatterbot_english")  # DatasetDict train / test: prompt, response, label


tokenizer = headkit.load_processor("minilm")


def preference_pairs(split, seed: int) -> list[dict[str, str]]:
    """Each prompt with its true reply (chosen) and the reply of another prompt (rejected). Replies
    over 48 tokens (code, long answers) are left out: a response must fit in max_length=64 on its
    own (a longer prompt loses its start, as the reward tokenizer truncates on the left)."""
    rng = random.Random(seed)
    short = [row for row in split if len(tokenizer(row["response"])["input_ids"]) <= 48]
    prompts, replies = [row["prompt"] for row in short], [row["response"] for row in short]
    pairs = []
    for i, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        other = rng.randrange(len(replies))
        while other == i or replies[other].strip() == reply.strip() or prompts[other] == prompt:
            other = rng.randrange(len(replies))
        pairs.append({"prompt": prompt, "chosen": reply, "rejected": replies[other]})
    return pairs


train = preference_pairs(dialogs["train"], seed=0)[:600]
test = preference_pairs(dialogs["test"], seed=1)[:200]
print("a pair:", train[0])

result = headkit.train(
    "minilm",
    # the reward head reads the two responses from `chosen` and `rejected`, the prompt from `prompt`
    {"reward": {"type": "reward", "label": "chosen,rejected", "text": "prompt"}},
    train_dataset=train,  # a list of row dicts
    eval_dataset=test,
    strategy="frozen",
    epochs=10,
    batch_size=16,
    max_length=64,
    progress=False,
)
print("held-out pair accuracy:", round(result.metrics["heads"]["reward"]["pair_accuracy"], 3))

model = result.model
prompt = test[0]["prompt"]
for response in (test[0]["chosen"], test[0]["rejected"]):
    score = model.predict((prompt, response))["reward"]["score"]
    print(f"score {score:+.2f}  {prompt!r} -> {response!r}")
