"""tests/prebuild.py, which tests/conftest.py runs beside the quick tests: each build runs (a failure there is only
logged, and the slow test that needs the model would then pretrain it in the foreground) and builds what its test
loads."""

from __future__ import annotations

import pytest
import prebuild

from lnsub.orchestrator.grid import plan
from lnsub.trainables import providers
from lnsub.trainables.testbed import tinybert


def test_the_mt5_build_prepares_the_model_the_end_to_end_test_sweeps(tmp_path, monkeypatch):
    prepared = []
    monkeypatch.setattr(providers, "prepare", lambda specs: prepared.extend(specs))
    prebuild.build("tinymt5")
    swept = plan(str(prebuild.write_smoke_mt5_test_grid(tmp_path))).cells
    assert len(prepared) == 1 and {c.spec.model_revision for c in swept} == {prepared[0].model_revision}
    assert prepared[0].model == "testbed-mt5" and prepared[0].testbed_pretrain_steps == 100


def test_the_bert_build_is_the_tiny_model_fixtures(monkeypatch):
    built = []
    monkeypatch.setattr(tinybert, "ensure_tiny_model", lambda *a, **k: built.append((a, k)))
    prebuild.build("tinybert")
    assert built == [((), {})]  # what the tiny_model fixture calls


def test_an_unknown_model_is_refused():
    with pytest.raises(SystemExit, match="no model 'gpt'"):
        prebuild.build("gpt")
