"""The real task loaders, run on fixture files in the hub datasets' own schemas."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.tasks import TASKS, get_task
from lnsub.trainables.tasks.ner import WIKIANN_LABELS, align_labels
from lnsub.trainables.tasks.xnli import XNLI_LABELS

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "jo", "##hn", "smith", "lives", "in", "par", "##is",
         "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "##s"]


@pytest.fixture()
def tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=False)


def _write(folder, rows_by_split):
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_registry_knows_the_paper_availability():
    assert set(TASKS) == {"mlm", "ner", "xnli"}
    assert len(TASKS["mlm"].languages) == 11
    assert not TASKS["ner"].has_language("sw") and not TASKS["ner"].has_language("hi")
    assert not TASKS["xnli"].has_language("fa") and TASKS["xnli"].has_language("syn-sw")
    assert not TASKS["ner"].has_language("syn-hi")  # twins follow their real language
    assert "no fa" in TASKS["xnli"].missing_reason("syn-fa")
    with pytest.raises(LnsubError, match="unknown task"):
        get_task("pos")


def test_ner_labels_only_the_first_subword_token_by_token(tmp_path, tokenizer):
    tags = [WIKIANN_LABELS.index(t) for t in ("B-PER", "I-PER", "O", "O", "B-LOC")]
    row = {"tokens": ["john", "smith", "lives", "in", "paris"], "ner_tags": tags, "langs": ["en"] * 5,
           "spans": ["PER: john smith", "LOC: paris"]}
    _write(tmp_path / "ner" / "en", {"train": [row], "validation": [row]})
    task = get_task("ner")
    ds = task.load("en", data_dir=tmp_path)
    assert ds["train"].features["ner_tags"].feature.names == list(WIKIANN_LABELS)
    enc = task.preprocess(ds, tokenizer, max_length=32)["train"][0]
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "jo", "##hn", "smith", "lives", "in", "par", "##is", "[SEP]"]
    b_per, i_per, b_loc = (WIKIANN_LABELS.index(t) for t in ("B-PER", "I-PER", "B-LOC"))
    assert enc["labels"] == [-100, b_per, -100, i_per, 0, 0, b_loc, -100, -100]


def test_align_labels_handles_truncation_and_specials():
    assert align_labels([None, 0, 0, 1, None], [3, 4]) == [-100, 3, -100, 4, -100]
    assert align_labels([None, 0, 1, 1, 1], [1, 2, 9]) == [-100, 1, 2, -100, -100]


def test_xnli_keeps_hub_label_ids(tmp_path, tokenizer):
    rows = [{"premise": "the cat sat", "hypothesis": "a cat sat", "label": i} for i in (0, 1, 2)]
    _write(tmp_path / "xnli" / "fr", {"train": rows, "validation": rows[:2]})
    task = get_task("xnli")
    ds = task.load("fr", data_dir=tmp_path)
    assert ds["train"].features["label"].names == list(XNLI_LABELS) == ["entailment", "neutral", "contradiction"]
    enc = task.preprocess(ds, tokenizer, max_length=16)
    assert enc["train"]["labels"] == [0, 1, 2]
    first = enc["train"][0]
    assert first["input_ids"][0] == tokenizer.cls_token_id and first["token_type_ids"][-1] == 1


def test_local_sizes_subsample(tmp_path):
    rows = [{"premise": "the cat", "hypothesis": "a dog", "label": i % 3} for i in range(10)]
    _write(tmp_path / "xnli" / "en", {"train": rows, "validation": rows})
    ds = get_task("xnli").load("en", data_dir=tmp_path, sizes=(4, 2))
    assert (len(ds["train"]), len(ds["validation"])) == (4, 2)


def test_mlm_blocks_and_masking_rate(tmp_path, tokenizer):
    text = " ".join(["the cat sat on the mat a dog ran to paris"] * 60)
    rows = [{"id": str(i), "url": "u", "title": "t", "text": text} for i in range(20)]
    _write(tmp_path / "mlm" / "en", {"train": rows, "validation": rows[:4]})
    task = get_task("mlm")
    enc = task.preprocess(task.load("en", data_dir=tmp_path), tokenizer, max_length=32)
    train = enc["train"]
    assert all(len(ids) == 32 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
               for ids in train["input_ids"])
    torch.manual_seed(0)
    batch = task.collator(tokenizer, train=True)([train[i] for i in range(len(train))])
    inner = batch["labels"][:, 1:-1]
    masked = inner != -100
    rate = masked.float().mean().item()
    assert 0.13 < rate < 0.17, rate  # 15% of the non-special tokens
    assert (batch["labels"][:, [0, -1]] == -100).all()  # [CLS]/[SEP] never masked
    replaced = batch["input_ids"][:, 1:-1][masked]
    share_mask = (replaced == tokenizer.mask_token_id).float().mean().item()
    share_kept = (replaced == inner[masked]).float().mean().item()
    assert 0.75 < share_mask < 0.85 and 0.05 < share_kept < 0.16  # 80/10/10
    valid_again = task.preprocess(task.load("en", data_dir=tmp_path), tokenizer, max_length=32)["validation"]
    assert enc["validation"]["labels"] == valid_again["labels"]  # validation masks are fixed
    assert any(label != -100 for row in enc["validation"]["labels"] for label in row)


def test_missing_local_file_is_one_clear_line(tmp_path):
    _write(tmp_path / "ner" / "de", {"train": [{"tokens": ["a"], "ner_tags": [0], "langs": ["de"], "spans": []}]})
    with pytest.raises(LnsubError, match="no validation file for ner/de"):
        get_task("ner").load("de", data_dir=tmp_path)


def test_malformed_local_file_is_one_clear_line(tmp_path):
    folder = tmp_path / "xnli" / "en"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": "maybe"}\n')
    (folder / "validation.jsonl").write_text('{"premise": "a", "hypothesis": "b", "label": 0}\n')
    with pytest.raises(LnsubError, match="cannot read xnli/en"):
        get_task("xnli").load("en", data_dir=tmp_path)


def test_offline_hub_dataset_and_model_give_one_line():
    with pytest.raises(LnsubError, match=r"cannot load dataset facebook/xnli \(sw\).*--data-dir"):
        get_task("xnli").load("sw")
    with pytest.raises(LnsubError, match="cannot load model 'bert-base-multilingual-cased'.*hf download"):
        get_task("ner").load_model("bert-base-multilingual-cased")


def test_cli_reports_bad_input_in_one_line():
    out = subprocess.run([sys.executable, "-m", "lnsub.orchestrator.cli", "testbed", "--noise", "1.5"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["lnsub: error: --anchor-fraction and --noise must lie in [0, 1)"]
