"""The cost model (orchestrator/cost.py): its FLOP count against torch's own count of every matmul a model
runs, its shapes against the prunable counts the pruning tests establish, the paper's one measured point,
and `lnsub plan --device`."""

from __future__ import annotations

import importlib.util
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from lnsub.orchestrator import cost, makespan
from lnsub.orchestrator.cli import main
from lnsub.orchestrator.grid import plan, validate_grid
from lnsub.trainables.checkpointing import DEFAULT_CHECKPOINT_EVERY
from lnsub.trainables.spec import make_spec
from lnsub.trainables.tasks.mlm import predict_masked_only

TINY_BERT = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 64, "vocab_size": 101}
TINY_MT5 = {"model_type": "mt5", "d_model": 32, "d_ff": 48, "d_kv": 8, "num_heads": 4, "num_layers": 2,
            "num_decoder_layers": 3, "vocab_size": 97, "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}
ROOT = Path(__file__).resolve().parents[2]
PAPER_HOURS = {"mlm": 15.0, "ner": 4.5, "xnli": 45.0}  # IMP discovery per language, one Quadro RTX 8000


def _counted(model, **inputs) -> int:
    """Every matmul FLOP of one forward and backward, as torch's FlopCounterMode counts them."""
    with FlopCounterMode(display=False) as counter:
        model(**inputs).loss.backward()
    return counter.get_total_flops()


def _bert(auto: str, config: dict, **extra):
    import transformers

    fields = {k: v for k, v in config.items() if k != "model_type"}
    return getattr(transformers, auto)(transformers.BertConfig(**fields, **extra, attn_implementation="eager"))


@pytest.mark.parametrize("auto, task, labels", [
    ("BertForMaskedLM", "mlm", lambda ids: ids.clone()),
    ("BertForTokenClassification", "ner", lambda ids: torch.randint(0, 7, ids.shape)),
    ("BertForSequenceClassification", "xnli", lambda ids: torch.randint(0, 3, (ids.shape[0],))),
])
def test_bert_flops_match_torchs_count(auto, task, labels):
    torch.manual_seed(0)
    model = _bert(auto, TINY_BERT, num_labels={"ner": 7, "xnli": 3}.get(task, 2))
    ids = torch.randint(5, 100, (3, 10))
    counted = _counted(model, input_ids=ids, labels=labels(ids))
    predicted = cost.train_flops(cost.shape_from_config(TINY_BERT), task, cost.Widths(10, 100, predicted=10))
    assert counted == 3 * predicted


def test_masked_only_head_flops_match_torchs_count():
    torch.manual_seed(0)
    model = _bert("BertForMaskedLM", TINY_BERT)
    assert predict_masked_only(model)
    ids = torch.randint(5, 100, (4, 16))
    labels = torch.full_like(ids, -100)
    labels[torch.rand(ids.shape) < 0.15] = 7
    masked = int((labels != -100).sum())
    assert 0 < masked < ids.numel()
    counted = _counted(model, input_ids=ids, labels=labels)
    shape = cost.shape_from_config(TINY_BERT)
    assert counted == pytest.approx(4 * cost.train_flops(shape, "mlm", cost.Widths(16, 256, predicted=masked / 4)))
    full = 4 * cost.train_flops(shape, "mlm", cost.Widths(16, 256, predicted=16))
    assert counted < full  # the vocabulary projection of 85% of the positions is gone


def test_mt5_flops_match_torchs_count():
    import transformers

    torch.manual_seed(0)
    fields = {k: v for k, v in TINY_MT5.items() if k != "model_type"}
    model = transformers.MT5ForConditionalGeneration(transformers.MT5Config(**fields, attn_implementation="eager"))
    counted = _counted(model, input_ids=torch.randint(5, 90, (2, 12)), labels=torch.randint(5, 90, (2, 3)))
    predicted = cost.train_flops(cost.shape_from_config(TINY_MT5), "xnli", cost.Widths(12, 144, target=3))
    assert counted == 2 * predicted


def test_mbert_flops_at_full_size_match_torchs_count():
    """mBERT's published shape, built on the meta device (no weights), one batch of 2 x 24 positions."""
    with torch.device("meta"):
        model = _bert("BertForMaskedLM", cost.HUB_CONFIGS["bert-base-multilingual-cased"])
        ids = torch.randint(5, 100, (2, 24))
        counted = _counted(model, input_ids=ids, labels=ids)
    shape = cost.model_shape("bert-base-multilingual-cased")
    assert counted == 2 * cost.train_flops(shape, "mlm", cost.Widths(24, 576, predicted=24))


def test_shapes_hold_the_prunable_counts_the_pruning_tests_establish():
    """84,934,656 encoder weights in mBERT and in mt5-base's encoder, 113,246,208 in its decoder (README)."""
    mbert, mt5 = cost.model_shape("bert-base-multilingual-cased"), cost.model_shape("google/mt5-base")
    assert mbert.layers * mbert.encoder_layer_weights == 84_934_656
    assert mt5.layers * mt5.encoder_layer_weights == 84_934_656
    assert mt5.decoder_layers * mt5.decoder_layer_weights == 113_246_208
    assert not mt5.tied_head and mt5.parameters - 2 * 250_112 * 768 == 84_934_656 + 113_246_208


def test_widths_follow_the_padding_policy():
    spec = make_spec("xnli", "en", model="bert-base-multilingual-cased", group_by_length=True)
    shape = cost.model_shape(spec.model)
    padded, per_batch, grouped = (cost.example_widths(spec, shape, p, "masked") for p in cost.POLICIES)
    assert (padded.mean, padded.mean_square) == (128.0, 128.0 ** 2)
    assert grouped.mean < per_batch.mean < padded.mean
    for w in (per_batch, grouped):
        assert w.mean_square >= w.mean ** 2  # E[s^2] >= E[s]^2: attention is costed per example, not on the mean
    mlm = make_spec("mlm", "en", model="bert-base-multilingual-cased")
    masked, full = (cost.example_widths(mlm, shape, "batch", head) for head in ("masked", "full"))
    assert masked.mean == full.mean == full.predicted == 512 and masked.predicted == pytest.approx(0.15 * 510)


def test_a_language_without_a_length_model_gets_the_mean_of_those_with_one():
    zh = make_spec("xnli", "zh", model="bert-base-multilingual-cased", group_by_length=True)
    shape = cost.model_shape(zh.model)
    assert cost.length_source(zh, "grouped").startswith("no length model for zh")
    known = ("en", "fr", "es", "de", "ru", "ar", "ur", "hi", "sw")
    means = [cost.example_widths(make_spec("xnli", lang, model=zh.model, group_by_length=True), shape, "grouped",
                                 "masked").mean for lang in known]
    assert cost.example_widths(zh, shape, "grouped", "masked").mean == pytest.approx(statistics.mean(means))


def test_mfus_derive_from_the_published_throughputs():
    for (family, kind), measured in cost.MEASUREMENTS.items():
        assert 0.1 < measured.mfu < 0.7, (family, kind)
    per_sequence = 6 * 301_989_888 * 384 + 12 * 24 * 1024 * 384 ** 2 + 6 * 1024 * 2 * 384  # BERT-large, by hand
    assert cost.MEASUREMENTS[("ampere", "tensor16")].mfu == pytest.approx(110.5 * per_sequence / 312e12)


def test_a_checkpoint_costs_its_copy_and_what_its_write_overruns_by_hand():
    """Closed forms: 2.1 GB of mBERT state, a copy over half an A100's 32 GB/s link, a write at 1 GB/s."""
    shape, a100 = cost.model_shape("bert-base-multilingual-cased"), cost.get_device("a100")
    size = 12 * shape.parameters
    copy, write = size / 16e9, size / 1e9
    behind = cost.Policy("t", "batch", "masked", None, checkpoint_every=100)
    in_the_way = cost.Policy("t", "batch", "masked", None, checkpoint_every=100, behind=False)
    # 1,001 steps: checkpoints at 100, 200, ..., 1,000 (none at the round's last step)
    assert cost.checkpoint_seconds(1_001, 0.1, shape, a100, behind) == pytest.approx(10 * copy)  # 10 s > write
    assert cost.checkpoint_seconds(1_001, 0.01, shape, a100, behind) == pytest.approx(10 * (copy + write - 1.0))
    assert cost.checkpoint_seconds(1_001, 0.1, shape, a100, in_the_way) == pytest.approx(10 * write)
    none = cost.Policy("t", "batch", "masked", None, checkpoint_every=0)
    assert cost.checkpoint_seconds(1_001, 0.1, shape, a100, none) == 0.0


@pytest.fixture(scope="module")
def authors_on_rtx8000() -> dict[str, float]:
    """Hours per cell, mean over each task's cells, of `full` in the authors' configuration on the RTX 8000."""
    costs = cost.predict(plan("full"), cost.get_device("rtx8000"), lambda spec: cost.AUTHORS)
    return {task: statistics.mean(c.hours for c in costs if c.spec.task == task) for task in PAPER_HOURS}


def test_the_model_meets_the_papers_xnli_hours_within_half(authors_on_rtx8000):
    """The one measured point: XNLI (two thirds of the paper's GPU time) within 50% of its 45 hours."""
    assert 0.5 <= authors_on_rtx8000["xnli"] / PAPER_HOURS["xnli"] <= 1.5


def test_the_model_meets_the_papers_seed_total_within_half(authors_on_rtx8000):
    cells = {"mlm": 11, "ner": 9, "xnli": 10}
    predicted = sum(cells[t] * authors_on_rtx8000[t] for t in cells)
    assert 0.5 <= predicted / sum(cells[t] * PAPER_HOURS[t] for t in cells) <= 1.5


@pytest.mark.xfail(strict=True, reason="the paper's MLM (15 h) and NER (4.5 h) are not within 50% of this model: "
                                       "MLM's FLOPs in 15 h need 18 TFLOP/s, above the RTX 8000's fp32 peak; NER's "
                                       "in 4.5 h run at about half the FLOP/s of XNLI's in 45 h (README, 'The cost "
                                       "model')")
@pytest.mark.parametrize("task", ["mlm", "ner"])
def test_the_model_meets_the_papers_mlm_and_ner_hours_within_half(authors_on_rtx8000, task):
    assert 0.5 <= authors_on_rtx8000[task] / PAPER_HOURS[task] <= 1.5


def test_the_papers_mlm_hours_are_below_what_fp32_allows_at_full_peak():
    """Why MLM misses: 10 rounds of 10k steps of 16 blocks of 512 with the full head, at 100% of 16.3 TFLOP/s."""
    spec = next(c.spec for c in plan("full").cells if c.spec.task == "mlm")
    shape = cost.spec_shape(spec)
    examples, _ = cost.round_size(spec)
    flops = (spec.levels + 1) * examples * cost.train_flops(shape, "mlm", cost.example_widths(spec, shape, "max_length",
                                                                                               "full"))
    assert flops / cost.DEVICES["rtx8000"].fp32 / 3600 > PAPER_HOURS["mlm"]


def _plan_output(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["lnsub", "plan", *args])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out + captured.err


def test_plan_prints_the_predicted_table_and_its_makespan(monkeypatch, capsys):
    code, out = _plan_output(monkeypatch, capsys, "--grid", "full", "--device", "a100", "--gpus", "8")
    assert code == 0, out
    costs = cost.predict(plan("full"), cost.get_device("a100"), lambda spec: cost.lnsub_policy(spec, DEFAULT_CHECKPOINT_EVERY))
    for row in cost.task_rows(costs):
        cells = (row.task, row.cells, f"{row.examples:,.0f}", f"{row.tokens:,.1f}", f"{row.tflops:,.0f}",
                 f"{row.hours_per_cell:,.2f}", f"{row.hours:,.1f}")
        assert re.search(r"\s*│\s*".join(map(re.escape, map(str, cells))), out), row
    total = sum(c.hours for c in costs)
    assert f"total predicted: {total:,.1f} A100 SXM4 80GB hours" in " ".join(out.split())
    schedule = makespan.simulate([c.hours for c in costs], 8)
    assert f"makespan {schedule.makespan:,.1f} h" in out


def test_plan_refuses_an_unknown_device_in_one_line(monkeypatch, capsys):
    code, out = _plan_output(monkeypatch, capsys, "--grid", "full", "--device", "tpu")
    assert code == 2 and len(out.strip().splitlines()) == 1
    assert "'--device'" in out and "'a100', 'h100', 'rtx8000'" in out


def _bench(name: str):
    """A bench/ script as a module (a script, not a package)."""
    spec = importlib.util.spec_from_file_location(f"lnsub_bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_check():
    """bench/gpu_check.py, the GPU check's Python side."""
    return _bench("gpu_check")


def test_the_kernels_a_step_launches_are_what_the_host_cost_assumes():
    """KERNELS_PER_STEP is a count of lnsub's own train step (bench/cost.py --count-ops): it must stay one."""
    ops, kernels = _bench("cost").count_ops()
    assert kernels == cost.KERNELS_PER_STEP and ops > kernels


@pytest.mark.parametrize("task", ["mlm", "xnli"])
def test_the_throughput_comparison_runs_both_sides(task):
    """bench/throughput.py's two sides (which bench/gpu_check.sh runs on a GPU) on a 1-layer model of mBERT's
    vocabulary: each trains and is timed, on CPU, so that a change of lnsub's API cannot first break them there."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    bench = _bench("throughput")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=bench.MBERT_VOCAB, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, num_labels=3)
    model = (BertForMaskedLM if task == "mlm" else BertForSequenceClassification)(config)
    data = bench.build_data(task, "en", 12)
    lnsub = bench.run_lnsub(model, task, data, 4, 2, "en")
    authors = bench.run_trainer(model, task, data, 4, 2)
    assert lnsub > 0 and authors > 0


def test_gpu_checks_cell_is_one_valid_bf16_xnli_cell():
    data = yaml.safe_load(_gpu_check().CELL_GRID)
    validate_grid(data, "cell.yaml")
    assert data["languages"] == ["en"] and list(data["tasks"]) == ["xnli"] and data["seeds"] == [0]
    assert data["tasks"]["xnli"]["mixed_precision"] == "bf16" and data["resources"]["gpus_per_worker"] == 1


def test_gpu_checks_report_line_against_a_hand_computation(monkeypatch, capsys):
    module = _gpu_check()
    w = cost.Widths(40.0, 1700.0)
    flops = cost.train_flops(cost.model_shape("bert-base-multilingual-cased"), "xnli", w)
    monkeypatch.setattr(module, "this_device", lambda: None)
    module.report("xnli", "lnsub", 2.0, 32, 10, w, "tensor16")  # 320 examples in 2 s
    assert f"{160.0:8.1f} examples/s, {160 * flops / 1e12:7.1f} TFLOP/s" in capsys.readouterr().out
    h100 = cost.DEVICES["h100"]
    monkeypatch.setattr(module, "this_device", lambda: h100)
    module.report("xnli", "lnsub", 2.0, 32, 10, w, "tensor16")
    out = capsys.readouterr().out
    gpu = 32 * flops / (h100.tensor16 * cost.MEASUREMENTS[("ampere", "tensor16")].mfu)
    gpu += cost.model_shape("bert-base-multilingual-cased").parameters * 48 / h100.bandwidth
    step = max(gpu, cost.KERNELS_PER_STEP * 10e-6)
    assert f"MFU {160 * flops / h100.tensor16:.3f}" in out and f"predicts {32 / step:8.1f} examples/s" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the check would run")
def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_2():
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 and "no CUDA device visible to torch" in run.stderr


@pytest.mark.slow
def test_gpu_check_dry_run_prints_its_stages_and_the_prediction():
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("would run:") == 4 and "H100 SXM5 hours" in " ".join(run.stdout.split())
    for command in ("gpu_check.py throughput", "lnsub rehearsal", "lnsub sweep --grid", "gpu_check.py cell"):
        assert command in run.stdout
