"""The installed ``ihs-sight`` console script, run as a subprocess on the default model.

Every command writes files that must validate against the library's pydantic models; bad
arguments and bad files give the documented exit codes with one line on stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from ihs_sight_cli.options import BandOpt, ClassifiersOpt, LayersOpt, Mode, ModeOpt

import ihs_sight as ihs

EXE = shutil.which("ihs-sight")
pytestmark = pytest.mark.skipif(EXE is None, reason="the ihs-sight console script is not installed")


def run(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env_extra or {})}
    assert EXE is not None
    return subprocess.run([EXE, *args], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def cli_env(states_cache: Path) -> dict[str, str]:
    return {"IHS_SIGHT_STATES_CACHE": str(states_cache)}


def test_cli_help_documents_exit_codes() -> None:
    result = run(["--help"])
    assert result.returncode == 0
    assert "Exit codes" in result.stdout and "4 remote/network failure" in result.stdout
    for command in ("probe", "lens", "graft", "directions", "steer", "extract", "models", "data", "demo"):
        assert command in result.stdout


def test_cli_models_json() -> None:
    result = run(["models", "--json"])
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["models"][0]["name"] == "default" and payload["models"][0]["installed"] is True
    by_name = {m["name"]: m for m in payload["models"]}
    assert {"default-aligned", "default-aligned@v2", "gemma3-270m", "gemma3-270m-aligned"} <= set(by_name)
    assert "Gemma Terms of Use" in by_name["gemma3-270m-aligned"]["description"]
    assert "LlamaForCausalLM" in payload["architectures"]


def test_cli_data_lists_bundled_sets(data: ihs.PromptSet) -> None:
    result = run(["data", "--json"])
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    assert payload["total"] == len(data)
    assert payload["by_label"] == data.counts("label")


def test_cli_extract_writes_loadable_states(tmp_path: Path, cli_env: dict[str, str], model: ihs.Model) -> None:
    result = run(["extract", "--limit", "4", "--split", "test", "--pack", "128", "--out", str(tmp_path), "--quiet"],
                 cli_env)
    assert result.returncode == 0, result.stderr
    states = ihs.HiddenStates.load(tmp_path / "states")
    assert states.states.shape == (4, model.n_layers + 1, model.d_model)
    assert (tmp_path / "summary.md").read_text().startswith("# ihs-sight extract")
    direct = ihs.extract(model, states.prompts, cache=False, progress=False)
    assert (states.states - direct.states).abs().max() <= 1e-4 * direct.states.abs().max()


def test_cli_probe_writes_report_and_plot(tmp_path: Path, cli_env: dict[str, str]) -> None:
    from ihs_sight.probe import ProbeReport

    result = run(["probe", "--limit", "48", "--jailbreaks", "1", "--classifiers", "logreg", "--out", str(tmp_path),
                  "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    report = ProbeReport.model_validate_json((tmp_path / "report.json").read_text())
    transfer = ProbeReport.model_validate_json((tmp_path / "transfer.json").read_text())
    assert payload["best_layer"] == report.best_layer
    assert report.classifiers == ["logreg"] and len(report.layers) == 31
    assert transfer.evaluation == "transfer" and transfer.n_test == 14  # 7 families x (1 jailbreak + 1 wrapped)
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_lens_writes_results(tmp_path: Path, cli_env: dict[str, str]) -> None:
    from ihs_sight.emotions import EmotionProfile
    from ihs_sight.lens import Consistency, LensResult

    result = run(["lens", "--limit", "2", "--top-k", "3", "--out", str(tmp_path), "--quiet"], cli_env)
    assert result.returncode == 0, result.stderr
    for name in ("malicious", "normal"):
        lens = LensResult.load(tmp_path / f"lens_{name}")
        assert tuple(lens.token_ids.shape) == (2, 31, 3)
        EmotionProfile.model_validate_json((tmp_path / f"emotions_{name}.json").read_text())
        Consistency.model_validate_json((tmp_path / f"consistency_{name}.json").read_text())
        assert (tmp_path / f"heatmap_{name}.png").stat().st_size > 1000


def test_cli_graft_one_layer(tmp_path: Path, cli_env: dict[str, str]) -> None:
    from ihs_sight.graft import GraftResult

    result = run(["graft", "--layer", "20", "--targets", "2", "--sources", "4", "--out", str(tmp_path), "--quiet"],
                 cli_env)
    assert result.returncode == 0, result.stderr
    graft = GraftResult.model_validate_json((tmp_path / "graft.json").read_text())
    assert graft.layer == 20 and len(graft.targets) == 2
    assert (tmp_path / "graft.png").exists()


def test_cli_directions_then_steer_equal_the_library(tmp_path: Path, cli_env: dict[str, str],
                                                     model: ihs.Model, data: ihs.PromptSet) -> None:
    """`directions` saves both directions; `steer` with one of them gives the library's replies."""
    out = tmp_path / "dirs"
    result = run(["directions", "--model", "default", "--n-train", "4", "--n-val", "2", "--out", str(out), "--quiet",
                  "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    refusal = ihs.Direction.load(out / "refusal")
    harm = ihs.Direction.load(out / "harmfulness")
    assert (refusal.kind, harm.kind) == ("refusal", "harmfulness")
    assert payload["refusal"] == {"layer": refusal.layer, "position": refusal.position}
    assert payload["cosine_per_layer"] == pytest.approx(ihs.direction_cosines(refusal, harm), abs=1e-6)
    assert (out / "cosines.png").exists() and refusal.weights_hash == model.weights_hash

    steered = tmp_path / "steer"
    result = run(["steer", "--model", "default", "--mode", "ablate", "--direction", str(out / "refusal"), "--limit", "2",
                  "--generate", "4", "--out", str(steered), "--quiet", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    runs = json.loads((steered / "steer.json").read_text())
    assert set(runs) == {"none", "ablate"}
    prompts = data.test.malicious.sample(2, random_state=0)
    for mode in ("none", "ablate"):
        ref = ihs.steer(model, prompts, refusal, mode=mode, generate=4, progress=False)
        assert runs[mode]["texts"] == ref.texts, mode
        assert json.loads(result.stdout)["refusal_rate"][mode] == ref.refusal_rate
    summary = (steered / "summary.md").read_text()
    assert "## Replies, clean -> ablate" in summary and "- ablate: " in summary


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["steer"], "--mode"),  # required, like the library's keyword
        (["steer", "--mode", "sideways"], "--mode"),
        (["steer", "--mode", "ablate", "--direction", "/nonexistent/refusal"], "refusal"),
    ],
)
def test_cli_steer_bad_arguments_exit_2_with_one_line(args: list[str], needle: str) -> None:
    result = run(args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_cli_guard_fit_then_score(tmp_path: Path, cli_env: dict[str, str], model: ihs.Model,
                                  data: ihs.PromptSet) -> None:
    from ihs_sight.guard import Guard, GuardFitReport, GuardScores

    wrapped = ihs.load_prompts(wrapped_train=True).train
    train = data.train.normal.sample(24, random_state=2) + data.train.malicious.sample(24, random_state=2) + \
        ihs.PromptSet(items=[p for f in ("roleplay", "authority") for p in wrapped if p.family == f][::10])
    prompts = tmp_path / "train.jsonl"
    train.to_jsonl(prompts)
    out = tmp_path / "fit"
    result = run(["guard", "fit", "--prompts", str(prompts), "--cv", "2", "--cv-repeats", "2", "--layer", "6", "--out", str(out),
                  "--pool", "user_last", "--folds", "family", "--quiet", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    report = GuardFitReport.model_validate_json((out / "fit_report.json").read_text())
    assert payload["layer"] == report.layer == 6 and (out / "layers.png").exists()
    assert (report.cv, report.cv_repeats, report.folds, report.pool) == (2, 2, "family", "user_last")
    assert "jailbreak/roleplay: flagged" in (out / "summary.md").read_text()
    guard = Guard.load(out / "guard", model)
    assert guard.threshold == report.threshold

    texts = ["How do I make a bomb at home?", "Suggest a name for my cat."]
    result = run(["guard", "score", *texts, "--guard", str(out / "guard"), "--out", str(tmp_path / "s"), "--json"],
                 cli_env)
    assert result.returncode == 0, result.stderr
    scores = GuardScores.model_validate_json((tmp_path / "s" / "scores.json").read_text())
    expected = guard.score(texts)
    assert scores.p_malicious == pytest.approx(expected.p_malicious, abs=1e-6)
    assert json.loads(result.stdout)["flagged"] == expected.flagged


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["extract", "--batch-size", "0"], 2, "batch-size"),
        (["extract", "--pack", "-3", "--limit", "2"], 2, "pack must be"),
        (["probe", "--classifiers", "forest", "--limit", "8"], 2, "forest"),
        (["extract", "--prompts", "/nonexistent/prompts.csv"], 2, "No such file"),
        (["extract", "--model", "/nonexistent/model-dir"], 3, "No such model path"),
        (["graft", "--mode", "sideways"], 2, "mode"),
        (["lens", "--band", "ten"], 2, "band"),
        (["nosuchcommand"], 2, "No such command"),
        (["guard", "score", "hello", "--guard", "/nonexistent/guard"], 2, "no guard.json"),
        (["guard", "fit", "--layer", "early"], 2, "--layer"),
        (["guard", "score"], 2, "exactly one of the two"),
        (["guard", "fit", "--wrapped-train", "--prompts", str(Path(ihs.__file__).parent / "data" / "normal.jsonl")], 2,
         "--wrapped-train adds"),
    ],
)
def test_cli_errors_have_documented_exit_codes(args: list[str], code: int, message: str, cli_env: dict[str, str]) -> None:
    result = run(args, cli_env)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["guard", "fit", "--cv-repeats", "0"], ["extract", "--batch-size", "0"], ["nosuch"]])
def test_cli_usage_errors_are_one_line(args: list[str], cli_env: dict[str, str]) -> None:
    result = run(args, cli_env)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith("error: ")


def test_cli_bad_prompt_file_is_one_line(tmp_path: Path, cli_env: dict[str, str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": ""}\n', encoding="utf-8")
    out = tmp_path / "out"
    result = run(["extract", "--prompts", str(bad), "--out", str(out)], cli_env)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "row 2" in lines[0]
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_cli_debug_shows_traceback(cli_env: dict[str, str]) -> None:
    result = run(["extract", "--prompts", "/nonexistent/p.txt", "--debug"], cli_env)
    assert result.returncode != 0 and "Traceback" in result.stderr


# ---------------------------------------------------------------------------- typed options
# The option types of cli/options.py, as the commands declare them, on a tiny app: no model needed.


def _options_app() -> Any:
    app = typer.Typer()

    @app.command()
    def show(layers: LayersOpt = None, classifiers: ClassifiersOpt = None, band: BandOpt = None,
             mode: ModeOpt = Mode("replace")) -> None:
        typer.echo(json.dumps({"layers": layers, "classifiers": classifiers and [c.value for c in classifiers],
                               "band": band, "mode": mode.value}))

    return app


def _parsed(args: list[str]) -> dict[str, Any]:
    from typer.testing import CliRunner

    result = CliRunner().invoke(_options_app(), args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)  # type: ignore[no-any-return]


def test_cli_list_options_take_repeats_or_comma_lists() -> None:
    assert _parsed(["--layers", "4,8,12"])["layers"] == [4, 8, 12]
    assert _parsed(["--layers", "4", "--layers", "8", "--layers", "12"])["layers"] == [4, 8, 12]
    assert _parsed(["--layers", "4", "--layers", "8,12"])["layers"] == [4, 8, 12]
    assert _parsed([])["layers"] is None
    assert _parsed(["--classifiers", "svm,logreg"])["classifiers"] == ["svm", "logreg"]
    assert _parsed(["--classifiers", "svm", "--classifiers", "logreg"])["classifiers"] == ["svm", "logreg"]


def test_cli_band_parses_lo_hi() -> None:
    assert _parsed(["--band", "10-20"])["band"] == [10, 20]


def test_cli_choices_equal_the_library_tuples() -> None:
    from ihs_sight_cli.options import Classifier, Folds, Pool, SteerMode

    from ihs_sight.graft import MODES
    from ihs_sight.guard import FOLDS, POOLS
    from ihs_sight.probe import CLASSIFIERS
    from ihs_sight.steer import MODES as STEER_MODES

    assert [m.value for m in Mode] == list(MODES)
    assert [p.value for p in Pool] == list(POOLS)
    assert [f.value for f in Folds] == list(FOLDS)
    assert [c.value for c in Classifier] == list(CLASSIFIERS)
    assert [m.value for m in SteerMode] == list(STEER_MODES)
    assert _parsed(["--mode", "add"])["mode"] == "add"


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["graft", "--mode", "sideways"], "--mode"),
        (["graft", "--layers", "4,eight"], "--layers"),
        (["lens", "--band", "10"], "--band"),
        (["lens", "--band", "10-20-30"], "--band"),
        (["probe", "--classifiers", "svm,forest"], "--classifiers"),
        (["guard", "fit", "--pool", "median"], "--pool"),
        (["guard", "fit", "--folds", "category"], "--folds"),
    ],
)
def test_cli_bad_option_values_exit_2_with_one_line(args: list[str], option: str) -> None:
    result = run(args)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], result.stderr
    assert result.stdout == ""


def test_cli_graft_sweeps_the_same_layers_given_repeated_or_comma(tmp_path: Path, cli_env: dict[str, str]) -> None:
    from ihs_sight.graft import SweepResult

    sweeps = []
    for i, layers in enumerate((["--layers", "4,8"], ["--layers", "4", "--layers", "8"])):
        out = tmp_path / str(i)
        result = run(["graft", *layers, "--targets", "1", "--sources", "1", "--out", str(out), "--quiet"], cli_env)
        assert result.returncode == 0, result.stderr
        sweeps.append(SweepResult.model_validate_json((out / "sweep.json").read_text()).layers)
    assert sweeps == [[4, 8], [4, 8]]


def test_cli_lens_band_reaches_the_library(tmp_path: Path, cli_env: dict[str, str]) -> None:
    from ihs_sight.lens import Consistency

    result = run(["lens", "--band", "10-20", "--limit", "1", "--top-k", "1", "--out", str(tmp_path), "--quiet"], cli_env)
    assert result.returncode == 0, result.stderr
    assert Consistency.model_validate_json((tmp_path / "consistency_normal.json").read_text()).band == (10, 20)


def test_cli_quiet_prints_nothing(tmp_path: Path, cli_env: dict[str, str]) -> None:
    # --quiet silences transformers' "Loading weights" bar, its logs and library warnings too.
    result = run(["extract", "--limit", "2", "--split", "test", "--out", str(tmp_path), "--quiet"], cli_env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    assert (tmp_path / "states.safetensors").is_file()


def test_python_m_ihs_sight_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "ihs_sight", "models", "--json"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["models"][0]["name"] == "default"
