"""`nag bench`: the shape of its outputs (never its speed), its memory measure, and that each realistic config feeds
its denoiser the token counts the page claims."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from nag_guidance.bench.configs import REALISTIC
from nag_guidance.bench.step import PROMPT, DenoiserTimer, peak_memory_mib
from nag_guidance.cli import app
from nag_guidance.integration import detect

NAG_CONDITIONS = ("nag", "nag_end_0.5", "nag_end_0.25")


def test_quick_bench_writes_the_json_and_the_page(tmp_path):
    out, docs = tmp_path / "out", tmp_path / "docs"
    result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(out), "--docs", str(docs)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "benchmarks.json").read_text(encoding="utf-8"))
    page = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert (docs / "benchmarks.md").read_text(encoding="utf-8") == page

    assert data["quick"] is True and data["errors"] == [] and data["seconds"] > 0
    assert data["command"].startswith("nag ")
    assert {"cpu", "usable_cores", "torch_threads", "torch", "diffusers"} <= data["machine"].keys()
    assert [op["ms"].keys() >= {"pass", "add", "nag", "nag_inplace"} for op in data["op"]] == [True]
    assert all(r > 0 and math.isfinite(r) for r in data["op"][0]["ratio_to_pass"].values())

    rows = data["steps"]
    assert [(row["family"], row["kind"]) for row in rows] == [("sd", "tiny"), ("sd3", "tiny"), ("flux", "tiny")]
    for row in rows:
        conditions = row["conditions"]
        pooled = {"nag_pooled_negative"} if row["family"] == "flux" else set()  # only Flux offers it
        assert set(conditions) == {"none", "cfg", "nag", "nag_end_0.5", "nag_end_0.25"} | pooled
        for name, condition in conditions.items():
            assert condition["median_ms_per_step"] > 0 and condition["peak_mib"] >= 0
            assert len(condition["ratios"]) == row["repeats"] and all(r > 0 for r in condition["ratios"])
            assert math.isfinite(condition["median_ratio"]) and condition["median_ratio"] > 0
            assert ("nag_steps" in condition) == (name in NAG_CONDITIONS or name in pooled)
        # the windows are fractions of the schedule: ending earlier guides fewer steps, never none of 4
        guided = [int(conditions[name]["nag_steps"].split("/")[0]) for name in NAG_CONDITIONS]
        assert conditions["nag"]["nag_steps"] == "4/4" and 4 > guided[1] >= guided[2] > 0, guided
        assert conditions["none"]["median_ratio"] == 1.0
        # what each condition really ran: CFG twice the denoiser rows (batched or not), NAG the same rows
        none_rows = conditions["none"]["rows_per_step"]
        assert conditions["cfg"]["rows_per_step"] == 2 * none_rows
        assert conditions["nag"]["rows_per_step"] == none_rows
        if pooled:  # the same image rows in; the negative's rows are made inside the transformer
            assert conditions["nag_pooled_negative"]["rows_per_step"] == none_rows
            assert conditions["nag_pooled_negative"]["nag_steps"] == "4/4"
    assert "| sd3 |" in page and "## The combine operator alone" in page and "## Headline" not in page


def test_an_unknown_family_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--quick", "--out", str(tmp_path), "--families", "sd,nope"])
    assert result.exit_code == 2
    assert not (tmp_path / "benchmarks.json").exists()


def test_peak_memory_counts_the_tensors_alive_at_once():
    def allocate():
        first = torch.ones(1 << 20)  # 4 MiB
        second = torch.ones(1 << 20)
        del first
        third = torch.ones(1 << 19)  # 2 MiB, after the first is freed: the peak stays 8 MiB
        return second, third

    assert peak_memory_mib(allocate, torch.device("cpu")) == pytest.approx(8.0, abs=0.05)


REALISTIC_INPUTS = {
    "flux": {"hidden_states": [1, 4096, 64], "encoder_hidden_states": [1, 512, 32]},
    "sd3": {"hidden_states": [1, 16, 128, 128], "encoder_hidden_states": [1, 333, 32]},
    "qwen-image": {"hidden_states": [1, 4096, 64]},
    "wan": {"hidden_states": [1, 16, 3, 60, 104], "encoder_hidden_states": [1, 512, 32]},
    "sdxl": {"sample": [1, 4, 128, 128], "encoder_hidden_states": [1, 77, 64]},
    "sd": {"sample": [1, 4, 64, 64], "encoder_hidden_states": [1, 77, 32]},
    "pixart": {"hidden_states": [1, 4, 128, 128], "encoder_hidden_states": [1, 300, 32]},
    "sana": {"hidden_states": [1, 32, 32, 32], "encoder_hidden_states": [1, 300, 8]},
    "chroma": {"hidden_states": [1, 4096, 64], "encoder_hidden_states": [1, 512, 32]},
    "flux2": {"hidden_states": [1, 4096, 4], "encoder_hidden_states": [1, 512, 48]},
    "z-image": {"x": [[16, 1, 128, 128]]},
    "hunyuan-video": {"hidden_states": [1, 16, 2, 68, 120], "encoder_hidden_states": [1, 256, 16]},
    "ltx": {"hidden_states": [1, 2688, 128], "encoder_hidden_states": [1, 128, 32]},
}


class _Stop(Exception):
    pass


def _stop(*_args):
    raise _Stop


@pytest.mark.parametrize("config", REALISTIC, ids=lambda config: config.family)
def test_realistic_configs_feed_the_claimed_token_counts(config):
    """Up to the denoiser's first forward only (text encoding is tiny): the shapes the page describes."""
    pipe = config.build()
    denoiser = getattr(pipe, detect(pipe).denoisers[0])
    timer = DenoiserTimer([denoiser], detect(pipe).text_arg)
    timer.reset(inspect_inputs=True)
    denoiser.register_forward_pre_hook(_stop)
    with pytest.raises(_Stop):
        pipe(prompt=PROMPT, num_inference_steps=1, **config.call)
    expected = REALISTIC_INPUTS[config.family]
    assert {name: timer.inputs[name] for name in expected} == expected
