"""`segswap bench` on tiny models on the CPU: the code path a GPU run takes, and the JSON it prints (no timings)."""

import json
import numbers

import pytest

pytest.importorskip("diffusers")

from server.cli.main import main


def positive(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("bench")
    out = work / "bench.json"
    code = main(
        [
            "bench",
            "--tiny",
            "--arch",
            "sdxl",
            "--steps",
            "6",
            "--repeats",
            "2",
            "--crop-main",
            "160",
            "--crop-mask",
            "24",
            "--crop-repeats",
            "1",
            "--throughput",
            "2",
            "--ablate",
            "embed_cache,fuse_qkv,few_step,step_cache",
            "--device",
            "cpu",
            "--work-dir",
            str(work / "models"),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    return json.loads(out.read_text())


def test_bench_prints_both_pipelines_and_their_ratio(report):
    assert report["models"] == "tiny" and report["arch"] == "sdxl" and report["steps"] == 6
    for side in ("ours", "baseline", "baseline_bare"):
        row = report[side]
        for key in ("s_per_image_median", "s_per_image_p90", "images_per_s", "peak_memory_bytes"):
            assert positive(row[key]), (side, key, row[key])
        assert len(row["samples_s"]) == 2 and all(positive(v) for v in row["samples_s"])
    assert positive(report["ratio_ours_over_baseline"]) and positive(report["speedup_vs_baseline"])
    assert positive(report["speedup_vs_baseline_bare"]) and "same work" in report["bench"]
    assert report["peak_memory_kind"] == "process peak RSS"
    assert report["fast_path"]["compile"] is False and report["fast_path"]["sdpa"] is True


def test_bench_measures_the_request_stages(report):
    stages = report["request_stages"]
    for key in ("fetch_s", "decode_s", "mask_ops_s", "model_s", "encode_s", "total_s"):
        assert positive(stages[key]), key
    assert 0 < stages["outside_model_share"] < 1
    assert report["embed_cache"]["hits"] > 0  # the same object and prompt repeat


def test_bench_crop_and_stitch_row_and_ablation(report):
    crop = report["crop_and_stitch"]
    assert crop["main_size"] == [160, 160] and crop["mask_size"] == [24, 24]
    assert crop["baseline_processed_size"] == [160, 160] and crop["processed_size"][0] < 160
    assert positive(crop["ours"]["s_per_image_median"]) and positive(crop["baseline"]["s_per_image_median"])
    assert positive(crop["speedup_vs_baseline"])
    rows = {row["piece"]: row for row in report["ablation"]}
    assert set(rows) == {"embed_cache", "fuse_qkv", "few_step", "step_cache"}
    assert rows["embed_cache"]["flipped_to"] == 0 and rows["fuse_qkv"]["flipped_to"] is False
    assert all(positive(row["ratio_flipped_over_default"]) for row in rows.values())
    # Few-step mode runs the LCM-LoRA's 4 steps where the default runs the asked ones; the cache runs them all.
    assert rows["few_step"]["flipped_to"] is True and rows["few_step"]["steps"] == 4
    assert rows["few_step"]["default_steps"] == report["steps"] > 4
    assert rows["step_cache"]["flipped_to"] is True and rows["step_cache"]["steps"] == report["steps"]
    # The same seed through both: the cache changes no pixel, few-step mode a different image.
    assert rows["embed_cache"]["psnr_vs_default_db"] is None and positive(rows["few_step"]["psnr_vs_default_db"])


def test_bench_times_a_worker_one_job_at_a_time_and_in_stages(report):
    row = report["throughput"]
    assert row["jobs"] == 2 and positive(row["one_at_a_time_s_per_image"]) and positive(row["in_stages_s_per_image"])
    assert positive(row["speedup"])


def test_bench_counts_flops_and_model_sizes(report):
    assert positive(report["compute"]["tflop_per_image"]) and positive(report["compute"]["achieved_tflops"])
    memory = report["memory"]
    assert positive(memory["weights_total_bytes"]) and memory["largest_component"] == "unet"
    assert {"unet", "vae", "text_encoder", "text_encoder_2", "image_encoder"} <= set(memory["components_bytes"])


def test_bench_rejects_an_unknown_ablation_piece(capsys):
    assert main(["bench", "--tiny", "--ablate", "warp_drive"]) == 2
    assert "unknown piece" in capsys.readouterr().err


def test_full_size_configs_have_the_real_parameter_counts():
    """server/benchmark/configs/ builds exactly the real architectures (checked on the meta device: no memory)."""
    import torch

    from server.benchmark.full_models import PARAMETER_COUNTS, build_component

    with torch.device("meta"):
        for (arch, part), expected in PARAMETER_COUNTS.items():
            model = build_component("sdxl" if arch == "ip_adapter" else arch, part)
            assert sum(p.numel() for p in model.parameters()) == expected, (arch, part)
    with torch.device("meta"):
        unet = build_component("sdxl", "unet")
    assert unet.config.in_channels == 9 and unet.config.cross_attention_dim == 2048


def test_bench_runs_flux2_klein_against_its_plain_pipeline(tmp_path):
    """The distilled klein set: both pipelines run its 4 steps; only the pieces that apply are ablated."""
    out = tmp_path / "flux2.json"
    args = ["bench", "--tiny", "--arch", "flux2-klein", "--steps", "10", "--repeats", "1", "--crop-main", "0"]
    assert main([*args, "--ablate", "--device", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["arch"] == "flux2-klein" and report["steps"] == 4 and report["ip_adapter"] is None
    assert "Flux2KleinInpaintPipeline" in report["bench"]
    assert positive(report["ours"]["s_per_image_median"]) and positive(report["baseline"]["s_per_image_median"])
    rows = {row["piece"]: row for row in report["ablation"]}
    assert list(rows) == ["compile", "embed_cache", "dtype", "fp8", "step_cache"]
    assert rows["fp8"]["skipped"].startswith("SEGSWAP_FP8 needs")  # no float8 tensor cores on a CPU
    memory = report["memory"]
    assert set(memory["components_bytes"]) == {"transformer", "vae", "text_encoder"}
    assert memory["set_weight_files_bytes"] >= memory["weights_total_bytes"] > 0
    assert main(["bench", "--tiny", "--arch", "flux2-klein", "--ablate", "fuse_qkv", "--device", "cpu"]) == 2


def test_flux2_configs_match_the_real_files_in_the_manifest():
    """The real klein-4B weights are bf16: each file is two bytes per parameter plus a safetensors header."""
    from pipelines.models.weights import load_manifest
    from server.benchmark.full_models import PARAMETER_COUNTS

    files = load_manifest().get("flux2-klein").files
    for part in ("transformer", "vae", "text_encoder"):
        size = sum(
            spec.size for spec in files if spec.dest.startswith(f"base/{part}/") and spec.dest.endswith(".safetensors")
        )
        header = size - 2 * PARAMETER_COUNTS[("flux2", part)]
        assert 0 < header < 64 * 1024, (part, header)


def test_request_latency_prints_both_ratios_for_both_transports(capsys, tmp_path, monkeypatch):
    """bench/request_latency: JSON and multipart requests over real HTTP against Pillow's bare decode+encode."""
    from bench import request_latency

    monkeypatch.setenv("SEGSWAP_DATA_DIR", str(tmp_path))
    report = request_latency.main(["--size", "160", "--repeats", "2"])
    assert report["bare_decode_encode_s"] > 0 and report["targets"] == request_latency.TARGETS
    for transport in ("json", "multipart"):
        row = report[transport]
        assert row["end_to_end_s_median"] >= row["engine_s_median"] > 0
        assert row["around_over_bare"] > 0 and row["engine_over_bare"] > 0
    erase = report["erase"]
    assert erase["mask_share"] == 0.15 and erase["end_to_end_s_median"] >= erase["engine_s_median"] > 0
    assert json.loads(capsys.readouterr().out) == report


def test_gpu_check_runs_tiny_on_the_cpu(tmp_path):
    """bench/gpu_check.sh --tiny: the GPU check's very commands on the tiny sets, one JSON with every set's
    three-way timing (diffusers, eager, fast) and its few-step and step-cache rows."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "check.json"
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["bash", str(root / "bench" / "gpu_check.sh"), "--tiny", "--out", str(out)],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert list(report["runs"]) == ["sdxl", "flux2-klein", "sd15"]
    assert all("report" in run for run in report["runs"].values()), report["runs"]
    for arch, row in report["summary"].items():
        assert positive(row["fast_s"]) and positive(row["eager_s"]) and positive(row["diffusers_s"]), arch
        assert positive(row["step_cache_over_default"]) and row["step_cache_steps"] == row["steps"]
    assert report["summary"]["sdxl"]["few_step_steps"] == 4 and report["summary"]["sd15"]["few_step_steps"] == 4
    assert "few_step_s" not in report["summary"]["flux2-klein"]  # step-distilled: few steps is its only mode
    for arch in ("sdxl", "flux2-klein"):  # FP8 is in the check, and a CPU says why it cannot run it
        assert report["summary"][arch]["fp8_skipped"].startswith("SEGSWAP_FP8 needs"), arch
    assert positive(report["summary"]["sdxl"]["few_step_psnr_db"])
    from importlib.metadata import version

    assert report["machine"]["packages"]["diffusers"] == version("diffusers") and report["machine"]["date"]


def test_a_gpu_run_writes_its_json_under_bench_results_by_date_and_gpu(monkeypatch):
    import time

    import torch

    from bench.gpu_check import RESULTS, default_out

    assert default_out(tiny=True).name == "gpu-check.json"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    assert default_out(tiny=False) == RESULTS / f"{time.strftime('%Y-%m-%d')}-nvidia-h200.json"
    assert RESULTS.parent.name == "bench"


@pytest.mark.parametrize("arch", ["sdxl", "flux2-klein-base"])
def test_the_baseline_is_handed_what_ours_hands_its_pipeline(tiny_weights, tiny_flux2_weights, arch):
    """Like for like: the same crop, mask, start (strength, length, timesteps or sigmas), scheduler, guidance and
    reference; only how they are passed differs (raw prompt and image, diffusers' own IP-Adapter mask)."""
    import dataclasses

    import numpy as np

    from pipelines.engines.diffusion.conditioning import ip_adapter_scales
    from pipelines.engines.selection import diffusion_engine
    from pipelines.models.model_sets import model_set_at
    from server.benchmark.baselines import DiffusersBaseline, Flux2Baseline, LikeForLike
    from server.benchmark.scene import sample_inputs
    from tests.pipelines.recording import RecordingPipeline

    folder = (tiny_flux2_weights if arch.startswith("flux2") else tiny_weights) / arch
    ours = diffusion_engine(model_set_at(folder))
    bare = (Flux2Baseline if arch.startswith("flux2") else DiffusersBaseline)(ours.model_set, ours.device, ours.dtype)
    job = dataclasses.replace(sample_inputs(96).job("a dress", "", 12, 3, 4.0), subject_strength=0.7)
    ours.pipe, bare.pipe = RecordingPipeline(ours.pipe), RecordingPipeline(bare.pipe)
    ours.swap(job)
    LikeForLike(ours, bare)(job)
    (theirs,), mine = bare.pipe.calls, ours.pipe.calls[-1]
    assert theirs["image"].tobytes() == mine["image"].tobytes()
    assert theirs["mask_image"].tobytes() == mine["mask_image"].tobytes()
    for key in ("strength", "num_inference_steps", "timesteps", "sigmas", "guidance_scale", "width", "height"):
        assert theirs.get(key) == mine.get(key), key
    assert type(theirs["scheduler"]) is type(mine["scheduler"])
    assert dict(theirs["scheduler"].config) == dict(mine["scheduler"].config)
    if arch.startswith("flux2"):
        assert theirs["image_reference"].tobytes() == mine["image_reference"].tobytes()
        return
    assert theirs["ip_adapter_image"].tobytes() == ours.prepare(job).reference.tobytes()
    mask = theirs["cross_attention_kwargs"]["ip_adapter_masks"][0][0, 0].numpy() > 0.5
    assert np.array_equal(mask, np.asarray(mine["mask_image"]) > 127)
    scales = {tuple(p.scale) for p in bare.pipe.unet.attn_processors.values() if hasattr(p, "to_k_ip")}
    assert scales == {(value,) for value in ip_adapter_scales(0.7, job.fashion_strength).values()}


def test_load_test_runs_locally(tmp_path, monkeypatch):
    """bench/load_test.py --local: a burst through a composite server, every request answered, the engine's own
    ceiling beside it."""
    from bench import load_test

    monkeypatch.setenv("SEGSWAP_DATA_DIR", str(tmp_path))
    report = load_test.main(["--local", "--requests", "6", "--concurrency", "3", "--size", "96"])
    assert report["status_counts"] == {"200": 6} and positive(report["requests_per_s"])
    assert positive(report["engine_s_per_image"]) and positive(report["share_of_engine_bound"])
