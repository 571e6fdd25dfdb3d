"""The typed run record: one writer, one reader, old records, bad records, the field docs."""

import dataclasses
import json
import re
import types
import typing
from pathlib import Path

import pytest

from gpulab.runtime import records
from gpulab.runtime.errors import GpulabError
from gpulab.runtime.records import RunRecord

DOCS = Path(__file__).parents[1] / "docs" / "record.md"


def _training_record() -> RunRecord:
    """A record with every training section set, quality reached, CUDA memory."""
    return RunRecord(
        workload="digits",
        status="reached quality",
        created_utc="2026-12-03T13:54:35+00:00",
        command=["gpulab", "train", "digits"],
        config={"epochs": 3, "hidden": [64, 32]},
        options=records.Options(
            device="cuda:0",
            precision="bf16",
            compile=True,
            cuda_graph=False,
            world_size=2,
            backend="nccl",
            max_steps=None,
            resumed_from_step=40,
        ),
        environment=records.Environment(
            gpulab_version="0.1.0",
            git_sha=None,
            python_version="3.11.7",
            torch_version="2.14.1",
            cuda_version="13.0",
            cudnn_version=91000,
            hostname="vm",
            cpu_model="Xeon",
            cpu_logical_cores=16,
            cpu_physical_cores=8,
            cpu_usable_cores=16,
            torch_threads=8,
            memory_bytes=2**37,
            device={"type": "cuda", "name": "NVIDIA H200", "index": 0, "sm_count": 132},
        ),
        pretrained=None,
        position=records.Position(epoch=3, step=0, global_step=84),
        timing=records.Timing(
            setup_s=3.5,
            train_s=5.0,
            eval_and_checkpoint_s=2.0,
            data_wait_s=0.5,
            data_wait_fraction=0.1,
            warmup_steps_excluded=5,
            timed_steps=79,
            samples_per_s=841.0,
            samples_per_s_per_rank=420.5,
            global_batch=50,
            per_rank_batch=25,
            step_median_s=0.058,
            step_iqr_s=0.04,
            step_p10_s=0.026,
            step_p90_s=0.097,
            clock="cuda events",
            step_s=[0.03, 0.027],
        ),
        memory=records.Memory(peak_allocated_bytes=2**30, peak_reserved_bytes=2**31, kind="cuda"),
        efficiency=records.Efficiency(
            forward_flops_per_sample=2.7e7,
            train_flops_per_sample=8.2e7,
            achieved_tflops=0.069,
            peak_column="bf16",
            datasheet_peak_tflops=989.0,
            mfu=7e-5,
            measured_peak_tflops=None,
            mfu_of_measured=None,
            peak_source="datasheet",
            probe=None,
        ),
        metrics={"test_accuracy": 0.97, "confusion": [[1, 0], [0, 1]]},
        key_metric=records.KeyMetric(name="test_accuracy", value=0.97, higher_is_better=True),
        verdict=None,
        quality=records.Quality(
            metric="test_accuracy",
            target=0.97,
            higher_is_better=True,
            reached=True,
            step=80,
            time_to_quality_s=8.25,
        ),
        history=[{"step": 80, "test_accuracy": 0.97, "train_loss": 0.1, "time_s": 8.25}],
        artifacts=["checkpoint.pt", "confusion.png"],
    )


def test_a_training_record_written_reads_back_equal(tmp_path):
    record = _training_record()
    path = records.write_record(tmp_path, record)
    assert path == tmp_path / "record.json"
    assert records.read_record(tmp_path) == record


def test_a_stylize_record_written_reads_back_equal_without_training_sections(tmp_path, old_record):
    record = records.record_from_json(old_record("stylize"), Path("record.json"))
    record = dataclasses.replace(
        record, inputs=records.Inputs(content="a.jpg", style="b.jpg", output="c.png")
    )
    records.write_record(tmp_path, record)
    written = json.loads((tmp_path / "record.json").read_text())
    assert records.read_record(tmp_path) == record
    assert written["inputs"]["output"] == "c.png" and written["mode"] == "optimize"
    assert not {"position", "memory", "efficiency", "verdict", "quality"} & set(written)
    assert set(written["options"]) == {"device", "precision"}


@pytest.mark.parametrize("kind", ["training_digits", "training_stocks", "stylize"])
def test_schema_1_records_load_and_write_back_unchanged(tmp_path, old_record, kind):
    """The fixtures are records gpulab wrote at schema 1, before the record was typed."""
    path = Path(__file__).parent / "data" / "records" / f"v1_{kind}.json"
    (tmp_path / "record.json").write_text(path.read_text())
    record = records.read_record(tmp_path)
    if kind == "stylize":
        assert isinstance(record.timing, records.StylizeTiming) and record.mode == "optimize"
        assert record.inputs.content == "bundled:china.jpg" and record.timing.steps == 3
    else:
        assert isinstance(record.timing, records.Timing) and record.mode is None
        assert record.timing.timed_steps > 0 and record.memory.kind == "host"
        assert record.device_name == "Intel(R) Xeon(R) Processor"
    out = tmp_path / "again"
    out.mkdir()
    records.write_record(out, record)
    # same keys, same order, same values: readers of the JSON see no change
    assert (out / "record.json").read_text() == json.dumps(old_record(kind), indent=2) + "\n"


def test_records_written_before_later_fields_existed_load_with_nulls(tmp_path, old_record):
    data = old_record("training_stocks")
    del data["environment"]["cpu_usable_cores"], data["options"]["resumed_from_step"]
    for key in ("eval_and_checkpoint_s", "samples_per_s_per_rank", "global_batch"):
        del data["timing"][key]
    del data["efficiency"]
    (tmp_path / "record.json").write_text(json.dumps(data))
    record = records.read_record(tmp_path)
    assert record.environment.cpu_usable_cores is None and record.efficiency is None
    assert record.timing.global_batch is None and record.options.resumed_from_step is None
    assert record.timing.samples_per_s == data["timing"]["samples_per_s"]


def test_a_newer_schema_is_one_line_exit_2_through_the_cli(
    run_cli, tmp_path, write_record_json, tiny_csv
):
    run_dir = tmp_path / "stocks" / "run"
    write_record_json(run_dir, schema_version=records.SCHEMA_VERSION + 1)
    r = run_cli("predict", "stocks", "--run", run_dir, "--data", tiny_csv, "-o", tmp_path / "p")
    assert r.code == 2 and r.out == "" and len(r.err.strip().splitlines()) == 1
    assert f"was written by a newer gpulab (schema {records.SCHEMA_VERSION + 1})" in r.err
    assert "upgrade gpulab" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    "garble, message",
    [
        (lambda d: "{not json", "is not a readable run record (Expecting property name"),
        (lambda d: {**d, "timing": "fast"}, 'timing is "fast", not an object'),
        (
            lambda d: {**d, "timing": {**d["timing"], "samples_per_s": "841"}},
            'timing.samples_per_s is "841", not float',
        ),
        (lambda d: {k: v for k, v in d.items() if k != "workload"}, "it has no workload"),
        (lambda d: {**d, "schema_version": "1"}, 'schema_version is "1", not a version number'),
        (lambda d: [d], "the record is [{"),
        (lambda d: {**d, "mode": "paint"}, 'mode is "paint", not one of None, optimize'),
    ],
)
def test_a_garbled_record_is_one_line_exit_2_through_the_cli(
    run_cli, tmp_path, old_record, tiny_csv, garble, message
):
    run_dir = tmp_path / "stocks" / "run"
    run_dir.mkdir(parents=True)
    bad = garble(old_record("training_stocks"))
    (run_dir / "record.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
    r = run_cli("predict", "stocks", "--run", run_dir, "--data", tiny_csv, "-o", tmp_path / "p")
    assert r.code == 2 and len(r.err.strip().splitlines()) == 1, r.err
    assert f"{run_dir / 'record.json'} is not a readable run record" in r.err
    assert message in r.err and "pass another run" in r.err


def test_list_runs_reads_records_and_skips_unreadable_ones(tmp_path, write_record_json):
    write_record_json(tmp_path / "stocks" / "a", created_utc="2026-12-03T10:00:00+00:00")
    write_record_json(tmp_path / "style" / "b", "stylize", created_utc="2026-12-02T10:00:00+00:00")
    write_record_json(tmp_path / "stocks" / "c", schema_version=99)
    (tmp_path / "stocks" / "d").mkdir()
    (tmp_path / "stocks" / "d" / "record.json").write_text("{")
    found = records.list_runs(tmp_path)
    assert [(r.run_dir.name, r.mode) for r in found] == [("b", "optimize"), ("a", None)]
    stocks = found[1]
    assert (
        stocks.samples_per_s == pytest.approx(7583.191573480751) and found[0].samples_per_s is None
    )
    assert (
        stocks.key_metric == "test_mse=0.0178581" and stocks.device == "Intel(R) Xeon(R) Processor"
    )


# -- docs/record.md names every field of the dataclasses, and no other ----------------------


def _field_paths(cls: type, prefix: str = "") -> tuple[set[str], set[str]]:
    """(leaf fields, sections) of a record dataclass as dotted paths; unions give both sides."""
    leaves, sections = set(), set()
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        parts = typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else (hint,)
        nested = [p for p in parts if dataclasses.is_dataclass(p)]
        if not nested:
            leaves.add(prefix + f.name)
            continue
        sections.add(prefix + f.name)
        for part in nested:
            more_leaves, more_sections = _field_paths(part, f"{prefix}{f.name}.")
            leaves |= more_leaves
            sections |= more_sections
    return leaves, sections


def _documented_fields(text: str) -> set[str]:
    """Back-quoted names in the first column of the tables of the 'Fields' section."""
    section = text.split("## Fields of `record.json`", 1)[1].split("\n## ", 1)[0]
    names = set()
    for line in section.splitlines():
        cells = line.split("|")
        if line.startswith("|") and len(cells) > 2 and not set(cells[1].strip()) <= {"-"}:
            names |= set(re.findall(r"`([\w.]+)`", cells[1]))
    return names - {"field"}


def test_docs_name_every_record_field_and_no_other():
    leaves, sections = _field_paths(RunRecord)
    documented = _documented_fields(DOCS.read_text())
    assert leaves - documented == set(), "fields missing from docs/record.md"
    assert documented - leaves - sections == set(), "docs/record.md names fields that do not exist"


def test_the_docs_check_sees_a_field_added_without_docs():
    @dataclasses.dataclass(kw_only=True)
    class Wider(RunRecord):
        joules: float | None = None

    assert "joules" in _field_paths(Wider)[0] - _documented_fields(DOCS.read_text())


def test_only_run_wants_exactly_one_run(tmp_path, write_record_json):
    with pytest.raises(GpulabError, match="expected one run record under .*, found 0"):
        records.only_run(tmp_path)
    write_record_json(tmp_path / "stocks" / "a")
    assert records.only_run(tmp_path) == tmp_path / "stocks" / "a"
    write_record_json(tmp_path / "stocks" / "b")
    with pytest.raises(GpulabError, match="found 2"):
        records.only_run(tmp_path)
