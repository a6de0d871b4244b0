"""A cell has one id however its numbers are spelt, and make_spec refuses what cannot run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lnsub.trainables.errors import LnsubError
from lnsub.trainables.spec import CellSpec, make_spec

# Literal ids: a change of identity (a new default, a new field, another canonical form) must fail here
# loudly and come with a SCHEMA bump in trainables/spec.py, since stored cells are found by these ids.
# (Testbed cells also change with the tiny model, whose config hash is their model_revision, and with the testbed's
# data, whose config hash, generate.SCHEMA included, is their data_revision.)
PINNED = [
    (("ner", "syn-en"), {"steps": 20, "lr": 1.0e-3, "batch_size": 32, "max_length": 32, "levels": 3},
     "ner-syn-en-099c71e9ef9701fe"),
    (("xnli", "fr"), {"model": "bert-base-multilingual-cased"}, "xnli-fr-4ce9cdeabf9173ab"),
    (("mlm", "syn-ur"), {"steps": 20, "seed": 1}, "mlm-syn-ur-a4d03156c8051922"),
    (("clm", "en"), {"model": "Qwen/Qwen2.5-0.5B", "method": "wanda", "sparsity_pattern": "2:4", "levels": 1,
                     "prune_fraction": 0.5}, "clm-en-017706c896890d83"),
]


@pytest.mark.parametrize("cell,overrides,expected", PINNED, ids=[p[2] for p in PINNED])
def test_pinned_ids(cell, overrides, expected):
    assert make_spec(*cell, **overrides).id == expected


def test_a_testbed_cell_names_its_data_and_a_new_generator_gives_it_a_new_id(monkeypatch):
    from lnsub.trainables.testbed import generate

    before = make_spec("ner", "syn-en", steps=20)
    assert before.data_revision == generate.TestbedConfig().id and before.data_revision.startswith("testbed-")
    assert make_spec("ner", "en", steps=20).data_revision == ""  # the Hub's data: no revision of ours
    monkeypatch.setattr(generate, "SCHEMA", generate.SCHEMA + 1)  # the generator writes other data
    after = make_spec("ner", "syn-en", steps=20)
    assert after.model_revision == before.model_revision  # the tiny model is the same
    assert after.data_revision != before.data_revision and after.id != before.id


SPELLINGS = [
    ({"epochs": 3, "lr": 1.0e-3}, {"epochs": 3.0, "lr": 0.001}),
    ({"steps": 20, "seed": 0}, {"steps": 20.0, "seed": 0.0}),
    ({"steps": 20, "weight_decay": 0.0, "levels": 3}, {"steps": np.int64(20), "weight_decay": -0.0,
                                                       "levels": np.int32(3)}),
    ({"steps": 20, "max_grad_norm": 1}, {"steps": 20, "max_grad_norm": 1.0}),
]


@pytest.mark.parametrize("a,b", SPELLINGS)
def test_one_id_however_numbers_are_spelt(a, b):
    sa, sb = make_spec("ner", "syn-en", **a), make_spec("ner", "syn-en", **b)
    assert sa.id == sb.id and sa == sb
    assert json.dumps(sa.to_dict()) == json.dumps(sb.to_dict())


def test_values_take_their_field_type():
    spec = make_spec("ner", "syn-en", epochs=3, steps=None, levels=3.0, train_size=100.0, lr=1)
    assert type(spec.epochs) is float and type(spec.levels) is int and type(spec.train_size) is int
    assert type(spec.lr) is float and type(spec.prune_fraction) is float


def test_from_dict_canonicalises_and_round_trips():
    spec = make_spec("ner", "syn-en", epochs=3)
    again = CellSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.id == spec.id
    loose = {**spec.to_dict(), "epochs": 3, "seed": 0.0}
    assert CellSpec.from_dict(loose).id == spec.id
    with pytest.raises(LnsubError, match="unknown field"):
        CellSpec.from_dict({**spec.to_dict(), "colour": "blue"})


REFUSED = [
    ({"steps": 3.5}, "steps: must be int or null, got float 3.5"),
    ({"levels": True}, "levels: must be int, got bool True"),
    ({"lr": True}, "lr: must be float, got bool True"),
    ({"seed": False}, "seed: must be int, got bool False"),
    ({"lr": "1e-3"}, "lr: must be float, got str '1e-3'"),
    ({"lr": math.nan}, "lr: must be a finite number, got nan"),
    ({"epochs": math.inf, "steps": None}, "epochs: must be a finite number, got inf"),
    ({"prune_fraction": math.nan}, "prune_fraction: must be a finite number"),
    ({"levels": math.inf}, "levels: must be int, got float inf"),
    ({"levels": 10, "prune_fraction": 0.1}, "levels: levels x prune_fraction (the final sparsity) must stay below 1"),
    ({"levels": 5, "prune_fraction": 0.2}, "levels: levels x prune_fraction"),
    ({"levels": 3, "prune_fraction": 0.34}, "levels: levels x prune_fraction"),
    ({"levels": 10 ** 400}, "levels: levels x prune_fraction"),
    ({"levels": -1}, "levels: levels must be >= 0"),
    ({"steps": 0}, "steps: steps must be positive, got 0"),
    ({"steps": 5, "epochs": 1}, "steps/epochs: must give exactly one of the two"),
    ({"testbed_noise": 1.0}, "testbed_noise: must lie in [0, 1)"),
    ({"testbed_pretrain_steps": 0}, "testbed_pretrain_steps: testbed_pretrain_steps must be positive, got 0"),
    ({"learning_rate": 1e-3}, "learning_rate: unknown field"),
]


@pytest.mark.parametrize("overrides,message", REFUSED, ids=[m for _, m in REFUSED])
def test_refused_values(overrides, message):
    with pytest.raises(LnsubError) as e:
        make_spec("ner", "syn-en", **overrides)
    assert str(e.value).startswith("cell ner/syn-en: ") and message in str(e.value), str(e.value)


def test_nine_levels_of_ten_percent_are_fine():
    assert make_spec("ner", "syn-en", levels=9, prune_fraction=0.1).sparsities[-1] == pytest.approx(0.9)
    assert make_spec("ner", "syn-en", levels=3, prune_fraction=0.33).levels == 3


def test_mlm_validation_rule_is_part_of_the_id():
    real, twin = make_spec("mlm", "en"), make_spec("mlm", "syn-en")
    assert real.valid_documents == 0.02  # Wikipedia has only train: 2% of its documents are held out
    assert twin.valid_documents is None  # the testbed's own validation split, as is
    assert make_spec("mlm", "en", valid_documents=0.05).id != real.id
    with pytest.raises(LnsubError, match="valid_documents"):
        make_spec("ner", "en", valid_documents=0.1)
    with pytest.raises(LnsubError, match="valid_documents"):
        make_spec("mlm", "en", valid_documents=1.0)


def test_testbed_pretrain_steps_names_the_model_it_pretrains():
    from lnsub.trainables.testbed.tinybert import TinyBertConfig
    from lnsub.trainables.testbed.tinymt5 import TinyMT5Config

    default = make_spec("ner", "syn-en", steps=20)
    quick = make_spec("ner", "syn-en", steps=20, testbed_pretrain_steps=300)
    assert default.model_revision == TinyBertConfig().id
    assert quick.model_revision == TinyBertConfig(steps=300).id != default.model_revision
    assert quick.id != default.id
    mt5 = make_spec("xnli", "syn-en", model="testbed-mt5", steps=20, testbed_pretrain_steps=300)
    assert mt5.model_revision == TinyMT5Config(steps=300).id != TinyMT5Config().id


ONESHOT = {"model": "testbed-decoder", "levels": 1, "prune_fraction": 0.5}
ONESHOT_REFUSED = [
    ("clm", {"method": "imp", "steps": 20}, "method: task clm is scored without training"),
    ("ner", {"method": "wanda", "steps": 20, "model": "testbed"}, "method: one-shot wanda needs a task scored"),
    ("clm", {"method": "wanda", "steps": 20}, "steps/epochs: one-shot wanda trains nothing"),
    ("clm", {"method": "obs"}, "method: must be imp, magnitude, wanda, sparsegpt"),
    ("clm", {"method": "wanda", "sparsity_pattern": "2:4", "prune_fraction": 0.4}, "2:4 is 0.5 sparsity"),
    ("clm", {"method": "wanda", "sparsity_pattern": "4:2"}, "must be unstructured or N:M"),
    ("clm", {"method": "magnitude", "calibration_samples": 8}, "calibration_samples: wanda and sparsegpt read"),
    ("clm", {"method": "sparsegpt", "calibration_samples": 0}, "calibration_samples must be positive"),
    ("clm", {"method": "wanda", "levels": 0}, "levels: one-shot wanda prunes at levels 1..levels"),
]


@pytest.mark.parametrize("task,overrides,message", ONESHOT_REFUSED, ids=[m for _, _, m in ONESHOT_REFUSED])
def test_discovery_fields_refuse_what_cannot_run(task, overrides, message):
    with pytest.raises(LnsubError) as e:
        make_spec(task, "syn-en", **{**ONESHOT, **overrides})
    assert message in str(e.value), str(e.value)


def test_discovery_fields_are_part_of_the_id_and_resolved():
    wanda = make_spec("clm", "syn-en", method="wanda", **ONESHOT)
    assert wanda.calibration_samples == 128  # resolved, so a changed default changes the id
    assert make_spec("clm", "syn-en", method="wanda", calibration_samples=128, **ONESHOT).id == wanda.id
    others = [make_spec("clm", "syn-en", method="sparsegpt", **ONESHOT),
              make_spec("clm", "syn-en", method="wanda", sparsity_pattern="2:4", **ONESHOT),
              make_spec("clm", "syn-en", method="wanda", calibration_samples=64, **ONESHOT),
              make_spec("clm", "syn-en", method="magnitude", **ONESHOT)]
    assert len({wanda.id, *(s.id for s in others)}) == 5
    assert others[-1].calibration_samples is None  # magnitude reads no data
    imp = make_spec("ner", "syn-en", steps=20)
    assert (imp.method, imp.sparsity_pattern, imp.calibration_samples) == ("imp", "unstructured", None)
    assert make_spec("clm", "en", method="wanda", **ONESHOT).valid_documents == 0.02  # the MLM carve
