"""Run configurations: every field is a CLI flag and a YAML key (the CLI is generated from them).

TrainConfig, and the configs of continued pretraining and instruction tuning that extend it. Only
light modules are imported here (the option types, TaskSpec, the strategies' defaults): `headkit
--help` builds its flags from these classes, and must not wait for torch to load.
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from jsonargparse.typing import restricted_string_type

from headkit.choices import Pooling, Weighting
from headkit.data.taskspec import TaskSpec, head_options, parse_task
from headkit.errors import DataOptionError, UsageError
from headkit.training.strategy_defaults import FixedStrategy, strategy_defaults

# `partial:K` is the one strategy with a number in it: a pattern, so --help lists it with the rest
PartialStrategy = restricted_string_type("partial:K", r"^partial:[0-9]+$")
FewshotRecipe = Literal["all-pairs", "setfit"]
MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
# accelerate's trackers (accelerate.utils.LoggerType): each needs its own package installed
Tracker = Literal["none", "tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "all"]
ClassWeights = Literal["none", "auto"] | dict[str, float]

# option -> (valid?, what is expected); checked before any model or data is loaded
RANGES: dict[str, tuple[Any, str]] = {
    "epochs": (lambda v: v >= 1, "at least 1"),
    "max_steps": (lambda v: v >= 1, "at least 1"),
    "min_steps": (lambda v: v >= 0, "0 or more"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "grad_accum": (lambda v: v >= 1, "at least 1"),
    "max_length": (lambda v: v >= 1, "at least 1"),
    "lr": (lambda v: v > 0, "above 0"),
    "backbone_lr": (lambda v: v > 0, "above 0"),
    "lora_lr": (lambda v: v > 0, "above 0"),
    "weight_decay": (lambda v: v >= 0, "0 or more"),
    "warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "val_fraction": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "mlm_probability": (lambda v: 0 < v < 1, "in (0, 1)"),
    "patience": (lambda v: v >= 0, "0 or more"),
    "save_every": (lambda v: v >= 0, "0 or more"),
    "lora_r": (lambda v: v >= 1, "at least 1"),
    "lp_epochs": (lambda v: v >= 0, "0 or more"),
    "fewshot_iterations": (lambda v: v >= 0, "0 or more"),
    "fewshot_steps": (lambda v: v == "auto" or (isinstance(v, int) and v >= 0), "0 or more, or auto"),
    "fewshot_tuned_layers": (lambda v: v >= 1, "1 or more"),
    "max_grad_norm": (lambda v: v >= 0, "0 (no clipping) or more"),
}


def check_ranges(config: Any) -> None:
    """Refuse numeric options no run can use (a zero batch size, a negative learning rate) up front,
    instead of failing minutes later deep inside the loop."""
    for name, (valid, expected) in RANGES.items():
        value = getattr(config, name, None)
        if value is not None and not valid(value):
            raise UsageError(f"--{name} must be {expected}, got {value}")


@dataclass
class TrainConfig:
    """Everything a training run depends on; the CLI flags and the YAML config are generated from it.

    Attributes:
        model: backbone checkpoint directory, alias (minilm, smollm2, efficientnet-lite0) or timm:NAME[:WEIGHTS].
        tasks: heads and their data (YAML); or use data/text/head below for one file.
        data: shorthand: one data file or built-in dataset shared by every --head.
        text_column: shorthand: the text column of --data (old spelling: --text).
        text_pair: shorthand: the column of each row's second text for the --head heads (sentence
            pairs: NLI, paraphrase, STS, reranking; read as `tokenizer(text, text_pair)`).
        eval_data: shorthand: validate the --head heads on this file or dataset instead of holding
            out --val_fraction of --data (data sources as for --data).
        head: shorthand: NAME:COLUMN[:TYPE] per head, e.g. sentiment:label.
        option: shorthand: a setting of the --head heads' type (as a task's `options`):
            HEAD.KEY=VALUE for one head, KEY=VALUE for every --head head; e.g. a span head's
            answer.doc_stride=64 (the overlap of a long context's windows) or max_answer_tokens=50.
        pooling: shorthand: pooling of the --head heads: auto (the checkpoint's own sentence
            pooling, else its family's: cls for BERT-style encoders and ViT, last for decoders,
            mean for CNNs, speech and encoder-decoders), mean, cls, max, last, or pooler (the
            backbone's own pooler, which BERT's *ForSequenceClassification uses: needed to export
            a classification head as a plain transformers model).
        layer: shorthand: the hidden state the --head heads read (-1: the last; 0: the embeddings;
            k: layer k; negative: counted from the top).
        output_dir: the run directory.
        strategy: frozen, partial:K, full, lora, lp-ft or fewshot.
        weighting: static (each head's loss_weight) or uncertainty (learned).
        epochs: training epochs (lp-ft: of the fine-tuning phase; fewshot: unused, heads are solved).
            Default by strategy: frozen 30, else 3.
        max_steps: optimizer steps to train for; overrides epochs for the phases that read the data
            (transformers' max_steps). Needed to train on a stream (datasets.IterableDataset,
            hf:...?streaming), which has no length to count epochs by, except by a frozen run (one
            pass over the stream caches it, then epochs run over the cache); given, it sets the
            cached epochs' steps there too.
        min_steps: optimizer steps the main phase trains at least, early stopping or not: on small
            data its epochs grow until they reach them (100 examples at batch 32 are 3 steps an
            epoch, so 3 epochs would be 9 steps); large data keeps its epochs. 0: epochs alone.
            Default by strategy: full, partial and lora 250, else 0; with --epochs given and no
            --min_steps, 0 (the epochs you ask for are what trains).
        batch_size: examples per optimizer micro-step (fewshot: examples per contrastive step;
            its setfit recipe: pairs). Default 32.
        lr: learning rate of the heads. Default by strategy: frozen and lora 0.01, else 0.001 (a
            strategy's rate is for new layers: heads built from pretrained modules, lm and seq2seq,
            train at 0.001 unless lr is set by hand). A head type may scale it: embedding heads
            train at 0.01 x lr (they start from the backbone's own embeddings, which frozen's 0.01
            undid in an epoch).
        backbone_lr: learning rate of trainable backbone weights (full, partial, lp-ft, fewshot).
            Default by strategy: full and partial 1e-4, fewshot 2e-4, else 3e-5.
        lora_lr: learning rate of LoRA adapter weights (default: 0.001 for lora, 0.0005 otherwise).
        weight_decay: AdamW weight decay (matrices only).
        max_grad_norm: clip the gradients' global norm to this before each optimizer step (0: no clipping).
        warmup_ratio: share of steps with linear warm-up, then linear decay to 0.
        grad_accum: micro-steps per optimizer step.
        max_length: token limit; longer inputs are truncated.
        group_by_length: batch training examples of similar length (less padding, faster); off:
            plainly shuffled batches of mixed lengths.
        val_fraction: share of each dataset held out for validation (seeded split). Default by
            strategy: fewshot 0 (every labelled example trains), else 0.1.
        seed: seed for initialisation, split, batch order and dropout.
        patience: stop after this many epochs without validation improvement (0: never). Default
            by strategy: frozen 0, else 3.
        metric_for_best_model: what picks the best epoch and early stopping: HEAD/METRIC (e.g.
            topic/f1_macro), METRIC (its mean over the heads that report it), or loss / HEAD/loss;
            default: the mean of each head's primary metric, except for several heads on a
            frozen backbone, where each head keeps its own best epoch (training/head_best.py).
        class_weights: loss weights for imbalanced labels: none, auto (inverse label frequency in
            the training split; multi-label: negatives/positives per label), or {label: weight}
            (unlisted labels weigh 1), for every classification, multi-label and tagging head.
        tune_thresholds: multi-label heads: tune one decision threshold per label on the validation
            split (best F1), saved with the head; off: 0.5 for every label. Question-answering
            heads: tune the null threshold (the official SQuAD 2.0 best-F1 one) the same way; off: 0.
        temperature_scaling: classification heads: fit one softmax temperature on the validation
            split (the least negative log-likelihood; decisions unchanged), folded into the head's
            weights, so predicted and served probabilities are calibrated; kept at 1 when it does
            not lower the validation NLL, or with fewer than 50 labelled validation examples.
        save_every: also checkpoint every N optimizer steps (0: only at epoch ends).
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling alpha.
        lora_dropout: dropout on the LoRA path (default 0, peft's: a dropout copies each adapted
            layer's input, 15% more training memory and 20% more time for no accuracy here).
        lora_targets: module names to adapt, or all-linear: every linear layer of the backbone
            (strategy lora's default; unset elsewhere: peft's choice for the model type).
        lp_epochs: lp-ft: epochs of head-only training on cached features before fine-tuning.
        fewshot_recipe: fewshot's contrastive phase. all-pairs (default): each step embeds a batch of
            `batch_size` labelled examples once and trains on every pair among them (token tags:
            the setfit pairs); setfit: SetFit's own, `fewshot_iterations` x 2 pairs per example,
            `batch_size` pairs a step.
        fewshot_steps: fewshot all-pairs: contrastive steps; auto (default): one per 4 labelled
            examples, 10 to 40; 0 skips the contrastive phase (heads solved on the pretrained features).
        fewshot_iterations: fewshot setfit recipe (and token tags): pairs per labelled example = 2 x this
            (SetFit's num_iterations; default 20); 0 skips those pairs.
        fewshot_tuned_layers: fewshot all-pairs: the top layers the pairs tune (default: the top two thirds;
            the layers below stay as pretrained, so the backward pass stops there).
        feature_cache: frozen / lp-ft: compute backbone features once and train heads on the cache
            (off: the frozen backbone runs every epoch, as a baseline for benchmarks).
        mixed_precision: auto (bf16 on GPUs that have it), no, bf16 or fp16.
        gradient_checkpointing: recompute the backbone's activations in the backward pass: less
            memory for a trained backbone (full, partial, lora, lp-ft), about a third more time.
        report_to: also log losses, learning rate, gradient norm and validation metrics to an
            experiment tracker through accelerate (tensorboard: RUN/logs/; needs the tracker's package).
        resume: continue the run in output_dir from its last checkpoint.
        overwrite: replace an existing run in output_dir.
        trust_remote_code: allow checkpoints that need their own Python code.
        progress: show progress bars.
    """

    model: str = "minilm"
    tasks: list[TaskSpec] = field(default_factory=list)
    data: str | None = None
    eval_data: str | None = None
    text_column: str = "text"
    text_pair: str | None = None
    head: list[str] = field(default_factory=list)
    option: list[str] = field(default_factory=list)
    pooling: Pooling = "auto"
    layer: int = -1
    output_dir: str = "runs/latest"
    strategy: FixedStrategy | PartialStrategy = "frozen"  # type: ignore[valid-type]  # a pattern type made at runtime
    weighting: Weighting = "static"
    epochs: int | None = None
    max_steps: int | None = None
    min_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    backbone_lr: float | None = None
    lora_lr: float | None = None
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    warmup_ratio: float = 0.06
    grad_accum: int = 1
    max_length: int = 128
    group_by_length: bool = True
    val_fraction: float | None = None
    seed: int = 0
    patience: int | None = None
    metric_for_best_model: str | None = None
    class_weights: ClassWeights = "none"
    tune_thresholds: bool = True
    temperature_scaling: bool = True
    save_every: int = 0
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float | None = None
    lora_targets: list[str] | None = None
    lp_epochs: int = 10
    fewshot_recipe: FewshotRecipe | None = None
    fewshot_steps: int | Literal["auto"] | None = None
    fewshot_iterations: int | None = None
    fewshot_tuned_layers: int | None = None
    feature_cache: bool = True
    mixed_precision: MixedPrecision = "auto"
    gradient_checkpointing: bool = False
    report_to: Tracker = "none"
    resume: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    progress: bool = True

    # Whether the end of the run writes the model, metrics.json and plots into output_dir. Not a
    # field (no flag, not in the run's identity): `headkit.Trainer` without an output_dir trains in
    # a scratch directory that is deleted afterwards, and sets it False on its config so that
    # nothing is written there for nothing (a large model's copy would fill a small /tmp).
    keep_files: ClassVar[bool] = True
    # Whether the end of the run prints its summary table. The CLI always does (it is the command's
    # output); `headkit.Trainer` does when its progress bars are on, so `progress=False` is silent.
    print_summary: ClassVar[bool] = True

    def __post_init__(self) -> None:
        self.strategy = str(self.strategy)  # type: ignore[assignment]  # the CLI's pattern type is a str subclass YAML cannot write
        if self.epochs is not None and self.min_steps is None:
            self.min_steps = 0  # epochs of the user's own: the run's length is theirs, not the recipe's
        filled = {}
        for name, value in strategy_defaults(self.strategy).items():  # what the strategy's recipe sets
            if getattr(self, name) is None:
                setattr(self, name, value)
                filled[name] = value
        _STRATEGY_FILLED[id(self)] = filled
        weakref.finalize(self, _STRATEGY_FILLED.pop, id(self), None)

    def all_tasks(self) -> list[TaskSpec]:
        tasks = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in self.tasks]
        shorthand = [
            parse_task(spec, self.data, self.text_column, self.pooling, self.layer, self.eval_data, self.text_pair)
            for spec in self.head
        ]
        if (self.option or self.text_pair) and not shorthand:
            raise DataOptionError(
                "--option and --text_pair (option= / text_pair= in Python) set the --head heads' settings; "
                "tasks given as `tasks:` (TaskSpecs, head dicts) take their own `options` and `text_pair`"
            )
        options = head_options(self.option, [t.name for t in shorthand])
        return tasks + [dataclasses.replace(t, options=options[t.name]) for t in shorthand]

    def identity(self) -> dict[str, Any]:
        """The fields that define a run: a resumed run must match them exactly."""
        data = dataclasses.asdict(self)
        data["tasks"] = [dataclasses.asdict(t) for t in self.all_tasks()]
        for task in data["tasks"]:
            if task["layer"] == -1:
                del task["layer"]  # the default: runs saved before heads had layers still resume
            for key in ("eval_data", "text_pair", "options"):  # unset: runs saved before the option still resume
                if not task[key]:
                    del task[key]
        ignored = ("resume", "overwrite", "progress", "report_to", "gradient_checkpointing", "output_dir")
        for key in (*ignored, "head", "option", "data", "eval_data", "text_column", "text_pair", "pooling", "layer"):
            data.pop(key)
        for key, default in LEFT_OUT.items():
            if data[key] == default:
                del data[key]  # runs saved before the option existed still resume
        return data


def identity_value(identity: dict[str, Any], key: str) -> Any:
    """A setting as an `identity()` holds it: the value a key left out stands for (its default)."""
    return identity[key] if key in identity else LEFT_OUT.get(key)


# config id -> the values its strategy filled in when it was made, which another strategy fills
# anew (headkit.Trainer's overrides) while they are left as filled. Kept beside the config, not on
# it: not a field (not saved, not in a run's identity), and `TrainConfig(**vars(config))` copies it.
_STRATEGY_FILLED: dict[int, dict[str, Any]] = {}


def strategy_filled(config: TrainConfig) -> dict[str, Any]:
    """The fields `config`'s strategy filled when it was made, with the values it gave them."""
    return _STRATEGY_FILLED.get(id(config), {})


# Options added after runs were first saved: at their default they are left out of a run's
# identity, so that --resume of an older run still matches.
NEW_DEFAULTS: dict[str, Any] = {
    "metric_for_best_model": None,
    "class_weights": "none",
    "tune_thresholds": True,
    "temperature_scaling": True,
    "group_by_length": True,
    "fewshot_recipe": "all-pairs",
    "fewshot_steps": "auto",
    "fewshot_tuned_layers": None,
    "max_steps": None,
}
# What a run's identity leaves out where it holds this value: the options above, and min_steps 0,
# where the strategy trains by epochs alone (runs saved before min_steps still resume).
LEFT_OUT: dict[str, Any] = {**NEW_DEFAULTS, "min_steps": 0}


@dataclass
class PretrainConfig(TrainConfig):
    """Continued pretraining; the other fields are those of `headkit train`.

    Attributes:
        objective: mlm (masked-LM, encoders like BERT) or clm (causal-LM, decoders like GPT/Llama).
        corpus: text files (one document per line), CSV/JSONL files (with --text_column) or
            built-in datasets (e.g. rotten_tomatoes_plots).
        mlm_probability: share of tokens selected for masking.
    """

    objective: Literal["mlm", "clm"] = "mlm"
    corpus: list[str] = field(default_factory=list)
    mlm_probability: float = 0.15
    strategy: FixedStrategy | PartialStrategy = "full"  # type: ignore[valid-type]  # a pattern type made at runtime
    output_dir: str = "runs/pretrain"
    epochs: int = 1
    min_steps: int = 0  # a pass over the corpus, whatever its size
    batch_size: int = 16
    lr: float = 1e-4
    backbone_lr: float = 5e-5
    val_fraction: float = 0.05
    patience: int = 0


@dataclass
class SFTConfig(TrainConfig):
    """Instruction tuning; the other fields are those of `headkit train`.

    Attributes:
        data: a CSV/JSONL/Parquet file, built-in dataset (chatterbot_english) or hf:NAME with
            prompt/response columns or a column of chat `messages` lists ({"role", "content"}).
        eval_data: held-out data in the same form (default: --val_fraction of --data).
        prompt_column: the column holding the instruction or user message.
        response_column: the column holding the wanted reply.
        messages_column: the column holding whole conversations (used when present).
        system_prompt: a system message put before every conversation that has none.
        packing: pack whole examples into max_length blocks (less padding, faster on short texts).
    """

    model: str = "smollm2"
    prompt_column: str = "prompt"
    response_column: str = "response"
    messages_column: str = "messages"
    system_prompt: str | None = None
    packing: bool = False
    strategy: Literal["full", "lora"] = "lora"
    output_dir: str = "runs/sft"
    epochs: int = 1
    min_steps: int = 0
    batch_size: int = 8
    lr: float = 1e-4
    backbone_lr: float = 2e-5
    max_length: int = 512
    # Plainly shuffled batches: on chatterbot-corpus (benchmarks/sft.py, 100 LoRA steps) length
    # grouping was 1.5x faster but ended 0.044 higher in held-out reply loss.
    group_by_length: bool = False
    val_fraction: float = 0.1
    patience: int = 0

    def identity(self) -> dict[str, Any]:
        data = super().identity()
        data.update(data=self.data, eval_data=self.eval_data)  # the training rows are what SFT is about
        return data
