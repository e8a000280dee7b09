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
            "2",
            "--repeats",
            "2",
            "--crop-main",
            "160",
            "--crop-mask",
            "24",
            "--crop-repeats",
            "1",
            "--ablate",
            "embed_cache,fuse_qkv",
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
    assert report["models"] == "tiny" and report["arch"] == "sdxl" and report["steps"] == 2
    for side in ("ours", "baseline"):
        row = report[side]
        for key in ("s_per_image_median", "s_per_image_p90", "images_per_s", "peak_memory_bytes"):
            assert positive(row[key]), (side, key, row[key])
        assert len(row["samples_s"]) == 2 and all(positive(v) for v in row["samples_s"])
    assert positive(report["ratio_ours_over_baseline"]) and positive(report["speedup_vs_baseline"])
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
    assert set(rows) == {"embed_cache", "fuse_qkv"}
    assert rows["embed_cache"]["flipped_to"] == 0 and rows["fuse_qkv"]["flipped_to"] is False
    assert all(positive(row["ratio_flipped_over_default"]) for row in rows.values())


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
