"""Kernel-time summaries: categories by name, busy time as an interval union, shares and the top list."""
from __future__ import annotations

import math

import pytest

from rlkit.diagnostics.kernels import busy_seconds, kernel_category, read_chrome_trace, summarize


@pytest.mark.parametrize("name, category", [
    ("nvjet_sm90_tst_128x272_64x4_1x2_h_bz_coopA_NNT", "gemm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "gemm"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<Flash_bwd_kernel_traits<64, cutlass::bfloat16_t>>",
     "attention"),
    ("void at::native::vectorized_elementwise_kernel<8, BinaryFunctor<c10::BFloat16, MulFunctor<float>>>", "elementwise"),
    ("void at::native::elementwise_kernel<128, 4, direct_copy_kernel_cuda(at::TensorIteratorBase&)>", "copy"),
    ("Memcpy HtoD (Pageable -> Device)", "copy"),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>", "softmax"),
    ("void at::native::reduce_kernel<512, 1, ReduceOp<float, SumOps<float>>>", "reduction"),
    ("void at::native::multi_tensor_apply_kernel<TensorListMetadata<4>, FusedAdamMathFunctor>", "optimizer"),
    ("triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0", "fused (triton)"),
    ("ncclDevKernel_AllGather_RING_LL", "communication"),
    ("_fwd_grouped_kernel_stage1", "attention"),  # SGLang's triton decode attention
    ("_fwd_kernel_stage2", "attention"),
    ("_fwd_kernel", "attention"),  # SGLang's triton extend attention
    ("void flashinfer::norm::FusedAddRMSNormKernel<8u, __nv_bfloat16>(__nv_bfloat16*)", "reduction"),
    ("void at::native::(anonymous namespace)::distribution_elementwise_grid_stride_kernel<float, 4>", "sampling"),
    ("void at_cuda_detail::cub::DeviceRadixSortOnesweepKernel<...>", "sampling"),
    ("void at::native::tensor_kernel_scan_innermost_dim<float, std::plus<float>>", "sampling"),
    ("some_custom_kernel", "other"),
])
def test_kernel_category(name, category):
    assert kernel_category(name) == category


def test_busy_seconds_is_the_union_of_overlapping_intervals():
    assert busy_seconds([]) == 0
    assert busy_seconds([(3.0, 4.0), (0.0, 1.0), (0.5, 2.0), (1.5, 1.8)]) == pytest.approx(3.0)  # [0,2] + [3,4]
    assert busy_seconds([(0.0, 1.0), (1.0, 2.0)]) == pytest.approx(2.0)  # touching, not double counted


def test_summarize_shares_categories_and_top():
    k = [("gemm_a", 0.0, 0.3), ("gemm_a", 0.3, 0.6), ("vectorized_elementwise_kernel", 0.6, 0.75),
         ("multi_tensor_apply_kernel", 1.5, 1.6)]
    s = summarize(k, wall_seconds=2.0, top=2)
    assert s["kernel_s"] == pytest.approx(0.85) and s["busy_s"] == pytest.approx(0.85)
    assert s["busy_fraction"] == pytest.approx(0.425)
    assert list(s["by_category"]) == ["gemm", "elementwise", "optimizer"]  # largest first
    assert s["by_category"]["gemm"] == {"s": pytest.approx(0.6), "count": 2, "share": pytest.approx(0.6 / 0.85)}
    assert [t["name"] for t in s["top_kernels"]] == ["gemm_a", "vectorized_elementwise_kernel"]
    assert s["top_kernels"][0]["category"] == "gemm" and s["top_kernels"][0]["count"] == 2


def test_summarize_without_kernels_or_wall_time():
    s = summarize([], wall_seconds=1.0)
    assert s["kernel_s"] == 0 and s["busy_fraction"] == 0 and s["by_category"] == {} and s["top_kernels"] == []
    assert math.isnan(summarize([("k", 0, 1)], wall_seconds=0)["busy_fraction"])


def test_read_chrome_trace_keeps_device_events_of_a_gzipped_trace(tmp_path):
    import gzip
    import json

    ev = [{"ph": "X", "cat": "kernel", "name": "b", "ts": 300.0, "dur": 100.0},
          {"ph": "X", "cat": "kernel", "name": "a", "ts": 100.0, "dur": 50.0},
          {"ph": "X", "cat": "gpu_memset", "name": "Memset", "ts": 600.0, "dur": 100.0},
          {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 90.0, "dur": 5.0},
          {"ph": "i", "cat": "kernel", "name": "instant", "ts": 0.0},
          {"ph": "M", "name": "process_name"}]
    f = tmp_path / "x.trace.json.gz"
    with gzip.open(f, "wt") as fh:
        json.dump({"traceEvents": ev}, fh)
    kernels, span = read_chrome_trace(f)
    assert [k[0] for k in kernels] == ["a", "b", "Memset"]  # sorted by start, host events dropped
    assert kernels[0][1:] == pytest.approx((100e-6, 150e-6))
    assert span == pytest.approx(600e-6)  # 100 us .. 700 us
    s = summarize(kernels, span)
    assert s["busy_fraction"] == pytest.approx(250 / 600)


def test_read_chrome_trace_without_device_events(tmp_path):
    import json

    f = tmp_path / "x.json"
    f.write_text(json.dumps([{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5}]))
    assert read_chrome_trace(f) == ([], 0.0)
