"""A warm-up that runs out of GPU memory says which settings to change; other failures
keep their own message."""

from __future__ import annotations

from server.runtime.engine import warm_up_error
from server.settings import Settings

# onnxruntime-gpu 1.31's words on an H100 when a batch of 16 missed its arena by 0.4 MB
ARENA = (
    "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Mul node. "
    "Status Message: /onnxruntime_src/onnxruntime/core/framework/bfc_arena.cc:360 void* "
    "onnxruntime::BFCArena::AllocateRawInternal(size_t, bool, onnxruntime::Stream*) Available "
    "memory of 13223680 is smaller than requested bytes of 13647872"
)


def test_out_of_device_memory_names_the_settings_and_each_share() -> None:
    settings = Settings(gpu_mem_limit=5 * 1024**3, instances=2, max_batch=16)
    message = str(warm_up_error(RuntimeError(ARENA), 16, 1, "cuda", settings))
    assert message.startswith("warm-up of a batch of 16 on instance 1 failed: ")
    assert "Available memory of 13223680" in message
    assert "2.50 GiB: 5.00 GiB over 2 instances" in message
    assert "lower CHEXRAY_MAX_BATCH or CHEXRAY_INSTANCES, or raise CHEXRAY_GPU_MEM_LIMIT" in message


def test_other_failures_and_the_cpu_get_no_memory_advice() -> None:
    settings = Settings()
    for exc, device in ((RuntimeError("bad node"), "cuda"), (RuntimeError(ARENA), "cpu")):
        message = str(warm_up_error(exc, 4, 0, device, settings))
        assert message == f"warm-up of a batch of 4 on instance 0 failed: {exc}"
