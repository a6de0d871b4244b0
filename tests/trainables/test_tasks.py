"""The real task loaders, run on local copies laid out and typed as the hub datasets are (tests/hub_fixtures.py)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hub_fixtures import LANGUAGES, SIZES, vocabulary, wikipedia_rows

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.loading import load_round_data
from lnsub.trainables.spec import make_spec
from lnsub.trainables.tasks import TASKS, get_task
from lnsub.trainables.tasks import mlm as mlm_module
from lnsub.trainables.tasks.mlm import held_out
from lnsub.trainables.tasks.ner import WIKIANN_LABELS, align_labels
from lnsub.trainables.tasks.xnli import XNLI_LABELS

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "jo", "##hn", "smith", "lives", "in", "par", "##is",
         "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "to", "##s"]


@pytest.fixture()
def tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    return BertTokenizerFast(vocab={t: i for i, t in enumerate(VOCAB)}, do_lower_case=False)


def word_tokenizer(language: str):
    """A WordPiece tokenizer knowing every word of a language's fixtures: one token per word or full stop."""
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", *vocabulary(language)]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(words)}, do_lower_case=False)


def _write(folder, rows_by_split):
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in rows_by_split.items():
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_registry_knows_the_paper_availability():
    assert set(TASKS) == {"mlm", "ner", "xnli", "clm", "xnli-zeroshot"}
    assert {t for t in TASKS if not TASKS[t].trainable} == {"clm", "xnli-zeroshot"}  # a decoder's, scored as is
    assert TASKS["clm"].languages == TASKS["mlm"].languages and TASKS["xnli-zeroshot"].languages == TASKS["xnli"].languages
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
    from datasets import Dataset, DatasetDict

    task = get_task("ner")
    ds = DatasetDict({s: Dataset.from_list([row], features=task.features()) for s in ("train", "validation")})
    enc = task.preprocess(ds, tokenizer, max_length=32)["train"][0]
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    assert tokens == ["[CLS]", "jo", "##hn", "smith", "lives", "in", "par", "##is", "[SEP]"]
    b_per, i_per, b_loc = (WIKIANN_LABELS.index(t) for t in ("B-PER", "I-PER", "B-LOC"))
    assert enc["labels"] == [-100, b_per, -100, i_per, 0, 0, b_loc, -100, -100]


def test_align_labels_handles_truncation_and_specials():
    assert align_labels([None, 0, 0, 1, None], [3, 4]) == [-100, 3, -100, 4, -100]
    assert align_labels([None, 0, 1, 1, 1], [1, 2, 9]) == [-100, 1, 2, -100, -100]


def test_hub_fixtures_have_the_hubs_layout(hub_data):
    """The fixtures every real-language loader test reads: the hub's splits, columns and label names."""
    # the decoder tasks read these folders too (clm: mlm's Wikipedia, xnli-zeroshot: xnli's)
    assert TASKS["clm"].local_dir("en", hub_data) == hub_data / "mlm" / "en"
    assert TASKS["xnli-zeroshot"].local_dir("en", hub_data) == hub_data / "xnli" / "en"
    for task, language in [(t, lang) for t in TASKS if TASKS[t].trainable for lang in LANGUAGES]:
        folder = hub_data / task / language
        assert folder.is_dir() == TASKS[task].has_language(language), (task, language)
        if folder.is_dir():
            assert sorted(p.stem for p in folder.iterdir()) == sorted(SIZES[task])  # wikipedia: train only
    wiki = json.loads((hub_data / "mlm" / "hi" / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert list(wiki) == ["id", "url", "title", "text"] and all(isinstance(v, str) for v in wiki.values())
    assert wiki["text"].count("\n\n") >= 2 and wiki["text"].count(".") >= 9  # paragraphs of sentences
    ner = get_task("ner").load("fa", data_dir=hub_data)
    assert ner["validation"].features["ner_tags"].feature.names == list(WIKIANN_LABELS)
    assert all(s.split(": ")[0] in ("PER", "ORG", "LOC") for s in ner["train"][0]["spans"])
    xnli = get_task("xnli").load("sw", data_dir=hub_data)
    valid = xnli["validation"]
    assert len(valid) == 3 * SIZES["xnli"]["validation"]
    for i in range(0, len(valid), 3):  # each premise three times in a row, once per label
        assert len(set(valid["premise"][i:i + 3])) == 1 and sorted(valid["label"][i:i + 3]) == [0, 1, 2]


def test_xnli_keeps_hub_label_ids(hub_data, tokenizer):
    task = get_task("xnli")
    ds = task.load("fr", data_dir=hub_data)
    assert ds["train"].features["label"].names == list(XNLI_LABELS) == ["entailment", "neutral", "contradiction"]
    raw = [json.loads(line)["label"] for line in (hub_data / "xnli" / "fr" / "train.jsonl").read_text().splitlines()]
    enc = task.preprocess(ds, word_tokenizer("fr"), max_length=16)
    assert enc["train"]["labels"] == raw
    first = enc["train"][0]
    assert first["input_ids"][0] == tokenizer.cls_token_id and first["token_type_ids"][-1] == 1


@pytest.mark.parametrize("language", ["ar", "hi"])
def test_sizes_select_before_tokenising(hub_data, language):
    ds = get_task("xnli").load(language, data_dir=hub_data, sizes=(4, 2))
    assert (len(ds["train"]), len(ds["validation"])) == (4, 2)
    enc = get_task("xnli").prepare(language, hub_data, word_tokenizer(language), 32, sizes=(5, 3))
    assert (len(enc["train"]), len(enc["validation"])) == (5, 3)


BLOCK = 64  # tokens per MLM block in these tests


def _expected_blocks(language: str, held: bool | None, fraction: float, n: int) -> list[list[int]]:
    """The first n blocks cut from the fixture's documents (those held out, or the others) in dump order."""
    tok = word_tokenizer(language)
    docs = [r["text"] for r in wikipedia_rows(language, SIZES["mlm"]["train"])
            if held is None or held_out(r["id"], fraction) == held]
    flat = [t for ids in tok(docs, add_special_tokens=False)["input_ids"] for t in ids]
    body = BLOCK - 2
    return [[tok.cls_token_id, *flat[i * body:(i + 1) * body], tok.sep_token_id] for i in range(n)]


def _unmasked(valid) -> list[list[int]]:
    return [[lab if lab != -100 else t for t, lab in zip(ids, labels)]
            for ids, labels in zip(valid["input_ids"], valid["labels"])]


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    """A datasets cache of this test's own, so MLM blocks are built here, not read back from another test."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    return tmp_path / "hf-datasets"


class _OneProcess:
    main_process_first = staticmethod(contextlib.nullcontext)


def test_mlm_cell_carves_validation_from_wikipedias_only_split(hub_data, fresh_cache):
    """Defect (a): Wikipedia has no validation split; the cell holds out documents by a hash of their id."""
    assert not list((hub_data / "mlm" / "en").glob("validation.*"))
    spec = make_spec("mlm", "en", model="bert-base-multilingual-cased", data_dir=str(hub_data), steps=1,
                     max_length=BLOCK, train_size=30, valid_size=8, valid_documents=0.25)
    assert make_spec("mlm", "en").valid_documents == 0.02 and make_spec("mlm", "syn-en").valid_documents is None
    data = load_round_data(spec, word_tokenizer("en"), _OneProcess())
    assert data.train["input_ids"] == _expected_blocks("en", False, 0.25, 30)
    assert _unmasked(data.valid) == _expected_blocks("en", True, 0.25, 8)
    rows = wikipedia_rows("en", SIZES["mlm"]["train"])
    held = {r["id"] for r in rows if held_out(r["id"], 0.25)}
    assert 0 < len(held) < len(rows) // 2  # both sides have documents, and no document is on both


def test_mlm_blocks_and_masking_rate(hub_data, fresh_cache):
    task, tok = get_task("mlm"), word_tokenizer("fr")
    enc = task.prepare("fr", hub_data, tok, BLOCK, sizes=(None, None), valid_documents=0.2)
    train = enc["train"]
    assert all(len(ids) == BLOCK and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
               for ids in train["input_ids"])
    assert train["input_ids"] == _expected_blocks("fr", False, 0.2, len(train))  # every train document, in order
    torch.manual_seed(0)
    batch = task.collator(tok, train=True)([train[i] for i in range(len(train))])
    for inputs, labels in ((batch["input_ids"], batch["labels"]),
                           (torch.tensor(enc["validation"]["input_ids"]), torch.tensor(enc["validation"]["labels"]))):
        original = torch.where(labels != -100, labels, inputs)[:, 1:-1]
        masked = labels[:, 1:-1] != -100
        assert 0.12 < masked.float().mean().item() < 0.18  # 15% of the non-special tokens
        assert (labels[:, [0, -1]] == -100).all()  # [CLS]/[SEP] never masked
        replaced = inputs[:, 1:-1][masked]
        share_mask = (replaced == tok.mask_token_id).float().mean().item()
        share_kept = (replaced == original[masked]).float().mean().item()
        assert 0.72 < share_mask < 0.88 and 0.04 < share_kept < 0.17  # 80/10/10


def test_mlm_tokenises_only_the_documents_it_needs(hub_data, fresh_cache, monkeypatch):
    """Defect (b): documents are selected before tokenising; a cell never tokenises a whole dump."""
    seen: list[str] = []
    real = mlm_module.tokenize_texts
    monkeypatch.setattr(mlm_module, "tokenize_texts", lambda tok, texts: (seen.extend(texts), real(tok, texts))[1])
    monkeypatch.setattr(mlm_module, "DOC_CHUNK", 1)
    tok = word_tokenizer("sw")
    enc = get_task("mlm").prepare("sw", hub_data, tok, BLOCK, sizes=(12, 4), valid_documents=0.25)
    assert (len(enc["train"]), len(enc["validation"])) == (12, 4)

    def needed(held: bool, blocks: int) -> int:  # the fewest documents that give `blocks` blocks
        docs = [r["text"] for r in wikipedia_rows("sw", SIZES["mlm"]["train"]) if held_out(r["id"], 0.25) == held]
        total = 0
        for k, ids in enumerate(tok(docs, add_special_tokens=False)["input_ids"], 1):
            total += len(ids)
            if total >= blocks * (BLOCK - 2):
                return k
        raise AssertionError("the fixture is too small")

    assert len(seen) == needed(False, 12) + needed(True, 4) < SIZES["mlm"]["train"] // 2


MASK_SCRIPT = """
import hashlib, sys, torch
from lnsub.trainables.tasks import get_task
from test_tasks import word_tokenizer
torch.manual_seed(int(sys.argv[2])); torch.rand(int(sys.argv[2]) + 1)  # a global RNG state of its own
enc = get_task("mlm").prepare("ar", sys.argv[1], word_tokenizer("ar"), 64, seed=3, sizes=(2, 6),
                              valid_documents=0.25)
valid = enc["validation"]
print(hashlib.sha256(repr((valid["input_ids"], valid["labels"])).encode()).hexdigest())
"""


def test_validation_masks_are_a_function_of_the_seed_alone(hub_data, tmp_path):
    """Defect (c): two processes with different global RNG states (and caches) mask validation alike."""
    here = Path(__file__).parent
    procs = []
    for i, rng_seed in enumerate((1, 987)):  # both at once: they share nothing but the input files
        env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / f"cache-{i}"),
               "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, "-c", MASK_SCRIPT, str(hub_data), str(rng_seed)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    digests = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-2000:]
        digests.append(stdout.strip().splitlines()[-1])
    assert digests[0] == digests[1]
    torch.manual_seed(5)
    valid = get_task("mlm").prepare("ar", hub_data, word_tokenizer("ar"), 64, seed=3, sizes=(2, 6),
                                    valid_documents=0.25)["validation"]
    here_digest = hashlib.sha256(repr((valid["input_ids"], valid["labels"])).encode()).hexdigest()
    assert here_digest == digests[0]
    other = get_task("mlm").prepare("ar", hub_data, word_tokenizer("ar"), 64, seed=4, sizes=(2, 6),
                                    valid_documents=0.25)["validation"]
    assert other["labels"] != valid["labels"]  # another seed, other masks


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
