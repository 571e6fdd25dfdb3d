"""`gpulab cost`: price tables in both formats, the owning model, units of work, and the command
end to end on hand-written bench results with hand-computed figures."""

import json
import shutil
from pathlib import Path

import pytest

from gpulab.cost.onprem import DEFAULT_SERVERS, OwnedServer, load_onprem
from gpulab.cost.prices import SHIPPED, load_prices
from gpulab.cost.results import NO_ENERGY, read_bench
from gpulab.cost.run import bench_cost_line, cost_result
from gpulab.runtime.errors import GpulabError

DATA = Path(__file__).parent / "data" / "cost"
ENERGY, OLD = DATA / "bench_energy", DATA / "bench_old"
PRICES, SKYPILOT, ONPREM = (
    DATA / "prices.csv",
    DATA / "skypilot" / "aws" / "vms.csv",
    DATA / "onprem.toml",
)


def options(result: dict, **match) -> list[dict]:
    return [o for o in result["options"] if all(o[k] == v for k, v in match.items())]


def one(result: dict, **match) -> dict:
    found = options(result, **match)
    assert len(found) == 1, found
    return found[0]


# -- prices ---------------------------------------------------------------------------------------


def test_the_shipped_table_loads_and_every_row_has_a_source_and_a_date():
    table = load_prices()
    assert table.path == SHIPPED and table.format == "gpulab" and table.currency == "USD"
    assert {r.family for r in table.rows} >= {"H100", "H200", "A100", "L4", "T4", ""}
    assert {r.provider for r in table.rows} == {"aws", "gcp", "azure"}
    assert all(r.source and r.date for r in table.rows)
    # a CPU-only instance on every cloud
    assert {r.provider for r in table.rows if r.cpu_only} == {"aws", "gcp", "azure"}
    assert "prices.csv" in Path(__file__).parents[1].joinpath("pyproject.toml").read_text()


def test_a_skypilot_catalog_keeps_the_cheapest_region_with_a_price_and_its_lowest_zone_spot():
    table = load_prices(SKYPILOT)
    assert table.format == "skypilot"
    rows = {r.instance_type: r for r in table.rows}
    assert set(rows) == {"c.8x", "p5.48xlarge"}  # the GPU-only row without an instance is left out
    assert (rows["c.8x"].region, rows["c.8x"].on_demand_per_h, rows["c.8x"].spot_per_h) == (
        "us-east-1", 0.8, 0.2,
    )  # fmt: skip
    # ap-south-1 has only a spot price (5): not a candidate
    assert (rows["p5.48xlarge"].region, rows["p5.48xlarge"].spot_per_h) == ("us-east-1", 20)
    assert rows["p5.48xlarge"].provider == "aws" and rows["p5.48xlarge"].accelerator_count == 8
    assert any("1 rows without an instance type" in n for n in table.notes)


def test_both_formats_give_the_same_cost():
    ours = cost_result([ENERGY], PRICES, ONPREM)
    theirs = cost_result([ENERGY], SKYPILOT, ONPREM)
    keys = ("workload", "device", "option", "instance_type", "price_per_h", "money_per_unit")
    assert [[o[k] for k in keys] for o in ours["options"]] == [
        [o[k] for k in keys] for o in theirs["options"]
    ]
    assert ours["break_even"] == theirs["break_even"]


# -- arithmetic -----------------------------------------------------------------------------------


def test_per_gpu_division_cpu_threads_spot_and_units_against_hand_computed_values():
    r = cost_result([ENERGY], PRICES, ONPREM)
    # stocks: 327,680 samples; H100 at 32,768/s = 10 s; $80/h over 8 GPUs = $10 a GPU-hour
    gpu = one(r, workload="stocks", option="rent on-demand", device="NVIDIA H100 80GB HBM3")
    assert gpu["hours_per_unit"] == pytest.approx(10 / 3600)
    assert gpu["price_per_h"] == pytest.approx(10.0)
    assert gpu["money_per_unit"] == pytest.approx(10 / 360)
    assert gpu["price_basis"] == "$80/h ÷ 8 GPUs" and gpu["basis"] == "extrapolated"
    spot = one(r, workload="stocks", option="rent spot", device="NVIDIA H100 80GB HBM3")
    assert spot["money_per_unit"] == pytest.approx(2.5 / 360)
    # the CPU at 327.68/s = 1,000 s; $0.8/h over 8 vCPUs x 2 threads = $0.2/h
    cpu = one(r, workload="stocks", option="rent on-demand", device="Test CPU, 2 threads")
    assert cpu["hours_per_unit"] == pytest.approx(1000 / 3600)
    assert cpu["money_per_unit"] == pytest.approx(0.2 * 1000 / 3600)
    # the cheapest stocks option is the owned H100: ($350 / 365 h + $0.035) an hour for 10 s
    own_per_h = 350 / (0.5 * 730) + 0.035
    assert cpu["relative_to_cheapest"] == pytest.approx((0.2 * 1000) / (own_per_h * 10))
    # energy: 0.5 J/sample x 327,680 samples; none measured on the CPU, with the reason
    assert gpu["energy_kwh_per_unit"] == pytest.approx(0.5 * 327_680 / 3.6e6)
    assert cpu["energy_kwh_per_unit"] is None
    assert "RAPL counters are not readable" in cpu["energy_text"]
    # digits: time to quality is measured (36 s), energy = 200 W x 36 s
    digits = one(r, workload="digits", option="rent on-demand")
    assert digits["basis"] == "measured" and digits["hours_per_unit"] == pytest.approx(0.01)
    assert digits["money_per_unit"] == pytest.approx(0.1)
    assert digits["energy_kwh_per_unit"] == pytest.approx(200 * 36 / 3.6e6)
    assert not options(r, workload="cnn")  # every cnn repeat failed


def test_owning_per_device_hour_and_break_even_against_hand_computed_values():
    r = cost_result([ENERGY], PRICES, ONPREM)
    # $96,000 / 8 GPUs / 48 months = $250 + 10 %/year ops $100 = $350 a GPU-month; the measured
    # 350 W (not the file's 1,000 W datasheet figure) x PUE 1 x $0.1/kWh = $0.035 an hour
    own = one(r, workload="stocks", option="own", device="NVIDIA H100 80GB HBM3")
    assert own["price_per_h"] == pytest.approx(350 / (0.5 * 730) + 0.035)
    assert "measured (GPU) watts" in own["price_basis"]
    even = [b for b in r["break_even"] if b["family"] == "H100"][0]
    assert even["own_fixed_per_device_month"] == pytest.approx(350)
    assert even["break_even_on_demand_h"] == pytest.approx(350 / (10 - 0.035))
    assert even["break_even_spot_h"] == pytest.approx(350 / (2.5 - 0.035))


def test_owned_server_formulas_and_utilisation():
    s = OwnedServer(purchase_usd=120_000, devices=8, device_watts=500, host_watts=800,
                    lifetime_years=5, utilisation=0.25, electricity_usd_per_kwh=0.2, pue=1.5,
                    ops_share_per_year=0.08)  # fmt: skip
    fixed = 120_000 / 8 / 60 + 120_000 * 0.08 / 8 / 12  # 250 + 100
    energy = (500 + 800 / 8) / 1000 * 1.5 * 0.2  # 0.18 $/h
    assert s.fixed_per_device_month == pytest.approx(fixed)
    assert s.energy_per_device_hour() == pytest.approx(energy)
    assert s.cost_per_device_hour() == pytest.approx(fixed / (0.25 * 730) + energy)
    assert s.monthly_cost(100) == pytest.approx(fixed + 100 * energy)
    assert s.break_even_hours(2.0) == pytest.approx(fixed / (2.0 - energy))
    assert s.break_even_hours(0.1) is None  # renting costs less than the electricity: never


def test_defaults_say_where_each_figure_comes_from():
    for family, server in DEFAULT_SERVERS.items():
        sources = dict(server.sources)
        for key in ("purchase_usd", "device_watts", "electricity_usd_per_kwh", "pue"):
            assert sources.get(key), (family or "cpu", key)


def test_onprem_file_and_flags_override_and_refuse_unknown_keys_and_bad_types(tmp_path):
    servers = load_onprem(ONPREM, ["pue=1.2"])
    assert servers["H100"].purchase_usd == 96_000 and servers["A100"].pue == 1.2
    assert dict(servers["H100"].sources)["pue"] == "set by --own"
    bad = tmp_path / "bad.toml"
    for text, message in (
        ("wattage = 3", "unknown key 'wattage'"),
        ('pue = "low"', "pue = 'low' is not a number"),
        ("[B300]\npue = 1.1", "[B300]: no such server"),
        ("utilisation = 2", "utilisation must lie in (0, 1]"),
    ):
        bad.write_text(text)
        with pytest.raises(GpulabError, match=message.replace("(", r"\(").replace("[", r"\[")):
            load_onprem(bad)


# -- results, matching ----------------------------------------------------------------------------


def test_an_old_result_without_energy_says_so_and_a_cpu_run_keeps_its_threads():
    _, rows = read_bench(OLD)
    assert rows[0].energy.reason == NO_ENERGY and rows[0].threads == 4
    r = cost_result([OLD])
    assert all(o["energy_kwh_per_unit"] is None for o in r["options"])
    assert any(o["energy_text"] == f"not measured ({NO_ENERGY})" for o in r["options"])
    # a --quick cnn rate is not the unit's ResNet-50 at 224 px: every cnn option says so
    assert all("ResNet-18 at 64 px" in o["caveat"] for o in options(r, workload="cnn"))


def test_the_quick_caveats_follow_the_bench_settings():
    from gpulab.bench.suite import QUICK
    from gpulab.cost.units import UNITS

    assert "debug" in QUICK["cnn"][0] and "ResNet-18" in UNITS["cnn"].quick_caveat
    assert "size=128" in QUICK["style"][0] and "128 px" in UNITS["style"].quick_caveat


def test_the_study_is_restated_with_todays_prices_beside_gpulabs_hours():
    r = cost_result([OLD], PRICES)
    s = r["study"]
    assert s["cpu_vm"]["money"] == pytest.approx(500 * 0.8)
    assert s["gpu_vm"] is None  # no single-GPU instance in this table
    assert s["gpulab_hours"]["Test CPU, 4 threads"]["hours"] == pytest.approx(10_000 / 2.5 / 3600)


def test_a_device_without_a_price_row_names_close_matches_and_map_prices_it(tmp_path):
    prices = tmp_path / "p.csv"
    prices.write_text(PRICES.read_text().replace("H100", "A100"))
    with pytest.raises(
        GpulabError, match="NVIDIA H100 80GB HBM3.*--map cuda=INSTANCE.*close matches"
    ):
        cost_result([ENERGY], prices)
    r = cost_result([ENERGY], prices, maps=["cuda=p5.48xlarge"])
    assert one(r, workload="stocks", option="rent on-demand", instance_type="p5.48xlarge")
    with pytest.raises(GpulabError, match="no instance 'p5.48xlarg'.*close matches: p5.48xlarge"):
        cost_result([ENERGY], prices, maps=["cuda=p5.48xlarg"])


def test_bench_prints_a_cost_line_only_when_a_price_row_matches(tmp_path):
    assert "cheapest option" in bench_cost_line(ENERGY)
    other = tmp_path / "b"
    other.mkdir()
    doc = json.loads((ENERGY / "results.json").read_text())
    doc["rows"] = [
        dict(row, device="cuda", device_name="Unknown Accelerator X") for row in doc["rows"]
    ]
    (other / "results.json").write_text(json.dumps(doc))
    assert bench_cost_line(other) is None


# -- the command ----------------------------------------------------------------------------------


def test_gpulab_cost_end_to_end_writes_reports_and_ends_with_json(run_cli, tmp_path):
    out = tmp_path / "cost"
    r = run_cli("cost", ENERGY, OLD, "--prices", PRICES, "--onprem", ONPREM, "--out", out)
    assert r.code == 0, r.err
    last = json.loads(r.out.strip().splitlines()[-1])
    assert last["method_version"] == 1 and last["cost"] == str(out)
    stocks = next(w for w in last["workloads"] if w["workload"] == "stocks")
    assert stocks["money_per_unit"] == pytest.approx((350 / 365 + 0.035) * 10 / 3600)  # owned H100
    assert stocks["cheapest"] == "own H100 server"
    assert "gpulab cost: stocks" in r.out and "owning vs renting" in r.out
    assert "assumption: a CPU thread costs one vCPU" in r.out
    saved = json.loads((out / "results.json").read_text())
    assert saved["method_version"] == 1 and len(saved["inputs"]) == 2
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page
    assert 'src="' not in page.replace('src="data:image/png;base64,', "")
    md = (out / "report.md").read_text()
    assert "## stocks" in md and "## Owning or renting" in md and "500 h vs 11 h" in md


def test_the_plot_marks_where_owning_meets_renting():
    from matplotlib.figure import Figure

    from gpulab.cost.report import _draw

    r = cost_result([ENERGY], PRICES, ONPREM)
    b = [b for b in r["break_even"] if b["family"] == "H100"][0]
    fig = Figure()
    _draw(fig, b, 730)
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert labels == ["own = on-demand at 35 h", "own = spot at 142 h"]


BAD_PRICES = {
    "missing": ("provider,instance_type\naws,x\n", "line 1: missing column 'accelerator'"),
    "not a number": (None, "line 2, column on_demand_per_h: 'ten' is not a number"),
    "negative": (None, "line 3, column spot_per_h: '-1' must be 0 or more"),
    "duplicate": (None, "line 4, column on_demand_per_h: c.8x in us-east-1 already has other prices on line 3"),
    "empty": ("", "empty file"),
    "currency": (None, "line 3, column currency: EUR in a table of USD"),
}  # fmt: skip


def _bad_table(kind: str) -> str:
    text, _ = BAD_PRICES[kind]
    if text is not None:
        return text
    head, gpu, cpu = PRICES.read_text().splitlines()
    if kind == "not a number":
        return "\n".join([head, gpu.replace(",80,", ",ten,"), cpu])
    if kind == "negative":
        return "\n".join([head, gpu, cpu.replace(",0.2,", ",-1,")])
    if kind == "duplicate":
        return "\n".join([head, gpu, cpu, cpu.replace(",0.8,", ",0.9,")])
    return "\n".join([head, gpu, cpu.replace(",USD,", ",EUR,")])


@pytest.mark.parametrize("kind", list(BAD_PRICES))
def test_bad_price_tables_end_in_one_line_and_no_report(run_cli, tmp_path, kind):
    prices = tmp_path / "prices.csv"
    prices.write_text(_bad_table(kind))
    out = tmp_path / "out"
    r = run_cli("cost", ENERGY, "--prices", prices, "--out", out)
    assert r.code == 2
    assert r.err.strip().count("\n") == 0 and "Traceback" not in r.err
    assert str(prices) in r.err and BAD_PRICES[kind][1] in r.err
    assert not out.exists()


def test_a_folder_that_is_not_a_bench_result_is_refused(run_cli, tmp_path):
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "results.json").write_text(json.dumps({"jobs": [], "set": {}}))
    for folder, message in ((tmp_path / "share", "not a bench result (no bench rows)"),
                            (tmp_path / "nothing", "not a bench result (no results.json)")):  # fmt: skip
        r = run_cli("cost", folder, "--out", tmp_path / "out")
        assert r.code == 2 and message in r.err and "Traceback" not in r.err
    assert not (tmp_path / "out").exists()


def test_an_existing_report_folder_is_not_overwritten(run_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("cost", ENERGY, "--prices", PRICES, "--out", out)
    assert r.code == 2 and "exists and is not empty" in r.err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_cost_help(run_cli):
    r = run_cli("cost", "--help")
    assert r.code == 0 and "--prices" in r.out and "--map" in r.out and "--onprem" in r.out


def test_the_fixture_tree_is_left_unchanged(tmp_path):
    """The command reads result folders and never writes into them."""
    copy = tmp_path / "bench"
    shutil.copytree(ENERGY, copy)
    cost_result([copy], PRICES)
    assert sorted(p.name for p in copy.iterdir()) == ["results.json"]
