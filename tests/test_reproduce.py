"""One command, on the micro zoo, builds every study table and figure from the presets' sweeps."""

import os
import subprocess
import sys

import pytest

from glue_bench.figures import TABLE_FIGURES
from glue_bench.findings import FINDINGS_TABLE
from glue_bench.reproduce import QUICK_HEATMAP_ZOO
from glue_bench.study import TABLES
from glue_bench.tables import FORMATS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_HUB = {"single_models_reference"}   # measured values need which-zoo runs (hub + GPU)


@pytest.mark.slow
def test_reproduce_quick_builds_every_table_and_figure(micro_cache, tmp_path):
    env = {**os.environ, "GLUE_BENCH_CACHE": str(micro_cache), "GLUE_BENCH_MINI_SIZE": "micro", "HYDRA_FULL_ERROR": "0"}
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "glue_bench.reproduce", "--quick", "--results",
                           str(tmp_path / "store.sqlite"), "--out", str(out), "--hydra-dir", str(tmp_path / "runs")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    missing = [f"{t.name}.{fmt}" for t in [*TABLES, FINDINGS_TABLE] if t.name not in NEEDS_HUB for fmt in FORMATS
               if not (out / "tables" / f"{t.name}.{fmt}").is_file()]
    assert not missing, f"tables not written: {missing}"
    recipe = (out / "tables" / "recipe.md").read_text()
    assert "glue_recipe(linear, prompt)" in recipe and "| 5.61 |" in recipe
    assert "not run" not in (out / "tables" / "findings.md").read_text()  # every finding's preset ran
    figures = {p.name for p in (out / "figures").glob("*.png")}
    expected = {f"{name}.png" for name in TABLE_FIGURES} | {"convergence.png", f"similarity_{QUICK_HEATMAP_ZOO}.png"}
    assert expected <= figures, f"figures not drawn: {sorted(expected - figures)}"


def test_replicates_sweep_every_preset_over_the_replicate_zoos(monkeypatch, tmp_path):
    from glue_bench import reproduce

    calls = []
    monkeypatch.setattr(reproduce, "run_preset", lambda preset, overrides, results, sweeper, hydra_dir, bar=None:
                        calls.append((preset, overrides)))
    monkeypatch.setattr("glue_bench.tables.main", lambda argv: None)
    reproduce.main(["--replicates", "3", "--presets", "mixture_levels", "recipe", "--no-figures", "--lanes", "1",
                    "--results", str(tmp_path / "s.sqlite")])
    assert calls == [("mixture_levels", ["zoo.replicate=0,1,2"]), ("recipe", ["zoo.replicate=0,1,2"])]
    calls.clear()
    monkeypatch.setattr(reproduce, "usable_cores", lambda: 1)  # the default: one lane on one core, two on two or more
    reproduce.main(["--presets", "mixture_levels", "--no-figures", "--results", str(tmp_path / "s.sqlite")])
    assert calls == [("mixture_levels", [])]  # replicate 0 alone: the sweep as it always was
    for argv, swept in ((["--first-replicate", "5"], "5"), (["--replicates", "2", "--first-replicate", "5"], "5,6")):
        calls.clear()  # replicates added later, elsewhere: numbered after the ones that exist
        reproduce.main([*argv, "--presets", "mixture_levels", "--no-figures", "--results", str(tmp_path / "s.sqlite")])
        assert calls == [("mixture_levels", [f"zoo.replicate={swept}"])]
    monkeypatch.setattr(reproduce, "usable_cores", lambda: 2)
    calls.clear()
    reproduce.main(["--presets", "mixture_levels", "--no-figures", "--results", str(tmp_path / "s.sqlite")])
    assert calls == [("mixture_levels", ["eval.threads=1"])]  # two lanes, a core each less the sandbox's: 1
    for bad in (["--replicates", "0"], ["--first-replicate", "-1"]):
        with pytest.raises(SystemExit):
            reproduce.main(bad)


def test_lanes_take_the_queue_in_order_and_start_nothing_after_a_failure(monkeypatch, tmp_path):
    import time

    from glue_bench import reproduce

    started = []

    def run_preset(preset, overrides, results, sweeper, hydra_dir, bar=None):
        started.append(preset)
        if preset == "b":
            raise SystemExit("reproduce: preset b failed")
        time.sleep(0.3)  # a: still running when b fails

    monkeypatch.setattr(reproduce, "run_preset", run_preset)
    reproduce._run_lanes([(p, []) for p in "acd"], [None, None], tmp_path, None, None)
    assert sorted(started) == ["a", "c", "d"] and started[:2] in (["a", "c"], ["c", "a"])
    started.clear()
    with pytest.raises(SystemExit, match="preset b failed"):
        reproduce._run_lanes([(p, []) for p in "abcd"], [None, None], tmp_path, None, None)
    assert started == ["a", "b"]  # a's lane, once a ends, finds the failure and takes no more
