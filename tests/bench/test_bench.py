"""`nag bench`: the shape of its outputs (never its speed), its memory measure, and that each realistic config feeds
its denoiser the token counts the page claims."""

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from nag_guidance.bench.configs import FULL_SIZE, FULL_SIZE_QUICK, FULL_SIZE_TARGETS, REALISTIC
from nag_guidance.bench.step import PROMPT, DenoiserTimer, peak_memory_mib
from nag_guidance.cli import app
from nag_guidance.integration import detect

NAG_CONDITIONS = ("nag", "nag_end_0.5", "nag_end_0.25")

torch.set_num_threads(1)


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


# What the full-size configs must describe: the real models' block counts and widths.
FULL_SIZE_CLAIMS = {
    "flux": ("num_layers=19", "num_single_layers=38", "num_attention_heads=24", "attention_head_dim=128"),
    "sd3": ("num_layers=38", "num_attention_heads=38", "attention_head_dim=64", "caption_projection_dim=2432"),
    "sdxl": ("block_out_channels=(320, 640, 1280)", "transformer_layers_per_block=(1, 2, 10)", "layers_per_block=2"),
    "wan": ("num_layers=30", "num_attention_heads=12", "attention_head_dim=128", "ffn_dim=8960"),
}


def test_quick_full_size_bench_runs_the_four_architectures_scaled_down(tmp_path):
    """`nag bench --device cpu --quick --full-size`: the GPU script's code path, on the CPU in seconds."""
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", "--device", "cpu", "--quick", "--full-size", "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "benchmarks.json").read_text(encoding="utf-8"))
    page = (out / "benchmarks.md").read_text(encoding="utf-8")
    assert data["errors"] == [] and data["op"] == [] and "--full-size" in data["command"]
    assert data["full_size_targets"] == FULL_SIZE_TARGETS and data["attention_backend"] == "native"
    rows = data["steps"]
    assert [(row["family"], row["kind"]) for row in rows] == [(f, "full-size") for f in ("flux", "sd3", "sdxl", "wan")]
    for row in rows:
        conditions = row["conditions"]
        pooled = {"nag_pooled_negative"} if row["family"] == "flux" else set()
        assert set(conditions) == {"none", "cfg", "nag", "nag_end_0.5", "nag_end_0.25"} | pooled
        for condition in conditions.values():
            assert condition["median_ms_per_step"] > 0 and math.isfinite(condition["median_ms_per_step"])
            assert len(condition["ratios"]) == row["repeats"] == 2
            assert all(r > 0 and math.isfinite(r) for r in condition["ratios"])
            assert condition["peak_mib"] > 0 and math.isfinite(condition["peak_mib"])
        guided = [int(conditions[name]["nag_steps"].split("/")[0]) for name in NAG_CONDITIONS]
        assert conditions["nag"]["nag_steps"] == "4/4" and 4 > guided[1] >= guided[2] > 0, guided
        assert conditions["cfg"]["rows_per_step"] == 2 * conditions["none"]["rows_per_step"]
        target = row["target"]
        assert target["target"] == FULL_SIZE_TARGETS[row["family"]]
        assert target["nag_over_unguided"] == conditions["nag"]["median_ratio"]
        assert target["met"] == (target["nag_over_unguided"] <= target["target"])
        # built scaled down, and says so, from the full-size config with the real block counts
        assert "scaled down (`--quick`) from the full-size" in row["denoiser"]
        assert all(claim in row["denoiser"] for claim in FULL_SIZE_CLAIMS[row["family"]]), row["denoiser"]
    assert "## Full-size denoisers, random weights (scaled down: --quick)" in page
    assert page.index("## Full-size") < page.index("## Machine") and "| wan | " in page


def test_an_unknown_full_size_family_is_a_clean_error(tmp_path):
    result = CliRunner().invoke(app, ["bench", "--quick", "--full-size", "--out", str(tmp_path), "--families", "ltx"])
    assert result.exit_code == 2
    assert not (tmp_path / "benchmarks.json").exists()


# Parameters of the denoisers as built (the text inputs read the tiny encoders' widths, which trims SDXL's
# cross-attention keys and values).
FULL_SIZE_PARAMETERS = {"flux": 11.9e9, "sd3": 8.0e9, "sdxl": 2.2e9, "wan": 1.4e9}


@pytest.mark.parametrize("config", FULL_SIZE, ids=lambda config: config.family)
def test_full_size_denoisers_are_made_on_the_device_in_the_dtype(config):
    """On the meta device (no memory, no compute): every weight is created there in bf16, never on the CPU in
    fp32, and the sizes are the real models'."""
    with pytest.raises(TypeError):
        config.build()  # only through config.on(device, dtype)
    pipe = config.on("meta", torch.bfloat16).build()
    assert torch.get_default_dtype() == torch.float32  # restored
    denoiser = getattr(pipe, detect(pipe).denoisers[0])
    parameters = list(denoiser.parameters())
    assert {p.device.type for p in parameters} == {"meta"} and {p.dtype for p in parameters} == {torch.bfloat16}
    assert sum(p.numel() for p in parameters) == pytest.approx(FULL_SIZE_PARAMETERS[config.family], rel=0.03)
    assert all(claim in config.denoiser for claim in FULL_SIZE_CLAIMS[config.family])
    assert "scaled down" not in config.denoiser


def test_full_size_configs_feed_the_real_token_counts():
    """FLUX, SD3.5 and SDXL are called exactly as their realistic configs (whose inputs are checked above); Wan at
    33 frames instead of 9 (9 latent frames instead of 3: 14040 tokens); the quick twins match them one to one."""
    realistic = {config.family: config for config in REALISTIC}
    full = {config.family: config for config in FULL_SIZE}
    for family in ("flux", "sd3", "sdxl"):
        assert full[family].call == realistic[family].call
    assert full["wan"].call == {**realistic["wan"].call, "num_frames": 33}
    assert [config.family for config in FULL_SIZE_QUICK] == list(full)
