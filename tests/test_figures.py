"""The study's figures: each drawing function on hand-made data, `draw_all` on a tiny store, and
the notebook run headless (slow)."""

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from glue_bench import figures
from glue_bench.results import ResultStore

REPO = Path(__file__).resolve().parents[1]
FINAL = "final items: test minus proxy (20/task, seed 0, test)"
TABLE_PNGS = {f"{name}.png" for name in figures.TABLE_FIGURES}


def _job(candidate: str, arc: float, mmlu: float, items: str | None = None, **meta) -> list[dict]:
    """One job's rows on two tasks (their primary metrics), mini2 unless said otherwise."""
    meta = {"zoo": "mini2", "method": "none", "strategy": "none", "mixture": "none", "router": "none", **meta}
    return [dict(candidate=candidate, task=task, metric=metric, value=value, items=items, **meta)
            for task, metric, value in (("mini_arc", "acc_norm", arc), ("mini_mmlu", "acc", mmlu))]


def _mixture(level: str, arc: float, **mixture) -> list[dict]:
    return _job(f"mixture({level})", arc, 0.5, method="linear", strategy="all", mixture=level, router="prompt",
                config=json.dumps({"mixture": {"level": level, **mixture}}))


def tiny_store(path: Path) -> Path:
    """Rows for every table figure on zoo mini2 (chat_a, chat_b): singles, a merge, mixtures, a
    heuristic and a CMA-ES search, and the recipe, on the whole split and on final items."""
    store = ResultStore(path)
    jobs = [_job("chat_a", 0.4, 0.5), _job("chat_b", 0.5, 0.4),
            _job("linear(mini2)", 0.45, 0.5, method="linear", strategy="all", config="{}"),
            _mixture("ffn", 0.6), _mixture("model", 0.55), _mixture("ffn", 0.5, dense_layers=1),
            _mixture("block", 0.5, routing="sample"),
            _job("chat_a", 0.3, 0.5, FINAL), _job("chat_b", 0.4, 0.4, FINAL),
            _job("linear(mini2)", 0.42, 0.45, FINAL, method="linear", strategy="all", config="{}"),
            _job("heuristic_coefficient(linear)", 0.45, 0.45, FINAL, method="linear",
                 strategy="heuristic_coefficient", config="{}"),
            _job("evolutionary(linear)", 0.5, 0.45, FINAL, method="linear", strategy="evolutionary",
                 config=json.dumps({"strategy": {"search": {"n_trials": 6}}})),
            _job("glue_recipe(linear, prompt)", 0.55, 0.5, FINAL, method="linear", strategy="glue_recipe",
                 mixture="model", router="prompt", config="{}")]
    for i, rows in enumerate(jobs):
        store.append_job(f"job{i}", rows)
    return path


def search_storage(path: Path) -> str:
    """An Optuna storage with two small maximising studies, named as evolutionary.py names them."""
    storage = f"sqlite:///{path}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name, offset in (("evolutionary-linear-0123456789ab", 0.0), ("evolutionary-ties-ba9876543210", 0.1)):
        study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
        study.optimize(lambda t, offset=offset: offset + t.suggest_float("w", 0, 1), n_trials=5)
    return storage


def assert_png(path) -> None:
    assert path is not None and Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


STRATEGIES = pd.DataFrame({"mini8": {"best single": 0.43, "merge all (linear)": 0.38, "heuristic(linear)": 0.41},
                           "mini12": {"best single": 0.44, "merge all (linear)": 0.42, "heuristic(linear)": None}})


def test_strategy_and_mixture_bars(tmp_path):
    assert_png(figures.strategy_bars(STRATEGIES, tmp_path / "s.png", "strategies"))
    mixtures = STRATEGIES.rename(index={"merge all (linear)": "linear merge"})
    assert_png(figures.mixture_bars(mixtures, tmp_path / "sub" / "m.png"))
    # nothing but the reference lines: no bars, no figure
    assert figures.mixture_bars(mixtures.loc[["best single", "linear merge"]], tmp_path / "x.png") is None
    assert figures.strategy_bars(pd.DataFrame(), tmp_path / "x.png") is None
    assert not (tmp_path / "x.png").exists()


def test_merge_vs_mixture_and_recipe_bars(tmp_path):
    rows = [(zoo, row) for zoo in ("mini2", "mini4")
            for row in ("ensemble (reference)", "best single", "best merge", "best mixture")]
    outcome = pd.DataFrame({"avg": [0.45, 0.40, 0.43, 0.43, 0.47, 0.42, 0.42, 0.49]},
                           index=pd.MultiIndex.from_tuples(rows, names=["zoo", "row"]))
    assert_png(figures.merge_vs_mixture_bars(outcome, tmp_path / "mvm.png"))
    candidates = [("mini2", "glue_recipe(linear, prompt)"), ("mini2", "chat_b"), ("mini2", "chat_a")]
    recipe = pd.DataFrame({"avg": [0.53, 0.43, 0.39]},
                          index=pd.MultiIndex.from_tuples(candidates, names=["zoo", "candidate"]))
    assert_png(figures.recipe_bars(recipe, tmp_path / "recipe.png"))
    assert figures.merge_vs_mixture_bars(pd.DataFrame(), tmp_path / "x.png") is None
    assert figures.recipe_bars(pd.DataFrame(), tmp_path / "x.png") is None


def test_similarity_heatmap(tmp_path):
    names = ["base", "chat_a", "foreign"]
    matrix = pd.DataFrame([[1, 0.98, float("nan")], [0.98, 1, float("nan")], [float("nan")] * 2 + [1.0]],
                          index=names, columns=names)
    assert_png(figures.similarity_heatmap(matrix, tmp_path / "sim.png", "similarity"))
    assert figures.similarity_heatmap(pd.DataFrame(), tmp_path / "x.png") is None


def test_convergence_curve(tmp_path):
    curves = {"evolutionary-linear-0123456789ab": [0.3, 0.5, 0.4], "evolutionary-ties-ba9876543210": [0.2]}
    assert_png(figures.convergence_curve(curves, tmp_path / "conv.png"))
    assert figures.convergence_curve({}, tmp_path / "x.png") is None
    assert figures.convergence_curve({"empty": []}, tmp_path / "x.png") is None


def test_study_curves_reads_completed_trials_in_order(tmp_path):
    curves = figures.study_curves(search_storage(tmp_path / "search.sqlite"))
    assert sorted(curves) == ["evolutionary-linear-0123456789ab", "evolutionary-ties-ba9876543210"]
    assert all(len(values) == 5 for values in curves.values())
    missing = tmp_path / "none.sqlite"
    assert figures.study_curves(f"sqlite:///{missing}") == {} and not missing.exists()


def test_draw_all_on_a_tiny_store(tmp_path, capsys):
    storage = search_storage(tmp_path / "search.sqlite")
    paths = figures.draw_all(tiny_store(tmp_path / "results.sqlite"), tmp_path / "figs", storage)
    assert {p.name for p in paths} == TABLE_PNGS | {"convergence.png"}
    for path in paths:
        assert_png(path)
    assert capsys.readouterr().out.count(": wrote ") == len(paths)


def test_draw_all_skips_what_the_store_lacks(tmp_path, capsys):
    store = ResultStore(tmp_path / "results.sqlite")
    store.append_job("chat_a", _job("chat_a", 0.4, 0.5))
    store.append_job("chat_b", _job("chat_b", 0.5, 0.4))
    assert figures.draw_all(store.path, tmp_path / "figs", f"sqlite:///{tmp_path / 'none.sqlite'}") == []
    out = capsys.readouterr().out
    assert "strategies: skipped (no rows for it in the store: run the strategies preset)" in out
    assert "similarity: skipped (no zoo given)" in out and "convergence: skipped" in out
    assert not (tmp_path / "figs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("cwd", ["notebooks", "."])  # Jupyter starts it in notebooks/, CI maybe at the root
def test_notebook_runs_headless(tmp_path, micro_cache, monkeypatch, cwd):
    import nbformat
    from nbclient import NotebookClient

    figs = tmp_path / "figs"
    env = {"GLUE_BENCH_RESULTS": str(tiny_store(tmp_path / "results.sqlite")), "GLUE_BENCH_FIGURES": str(figs),
           "GLUE_BENCH_SEARCH_STORAGE": search_storage(tmp_path / "search.sqlite"),
           "GLUE_BENCH_HEATMAP_ZOO": "mini2", "GLUE_BENCH_CACHE": str(micro_cache), "GLUE_BENCH_MINI_SIZE": "micro"}
    notebook = nbformat.read(REPO / "notebooks" / "study_figures.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code")  # committed cleared
    for name, value in env.items():  # the kernel inherits this process's environment
        monkeypatch.setenv(name, value)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / cwd)}}).execute()
    assert {p.name for p in figs.glob("*.png")} == TABLE_PNGS | {"convergence.png", "similarity_mini2.png"}
    images = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == len(TABLE_PNGS) + 2


def test_the_heatmap_of_a_store_is_of_the_build_its_tables_read(tmp_path, monkeypatch):
    """The zoo drawn is the one the results came from: the mini size their candidates were built
    at and the first replicate they hold, not the default size's replicate 0."""
    asked = []
    monkeypatch.setattr(figures, "zoo_similarity", lambda *args: asked.append(args) or pd.DataFrame())
    monkeypatch.setattr(figures, "similarity_heatmap", lambda *a: None)
    rows = pd.DataFrame(_job("linear(mini2)", 0.3, 0.4, method="linear", replicate=14,
                             config=json.dumps({"mini_size": "micro_full"}))
                        + _job("chat_a", 0.3, 0.4, replicate=13))
    figures.draw_heatmap("mini2", tmp_path, rows)
    assert asked == [("mini2", "micro_full", 13)]
