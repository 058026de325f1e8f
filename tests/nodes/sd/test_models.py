"""The model manager: loads once per key, least recently used out first, budgets for RAM (and VRAM); the SD
runtime's caches as environment services that /free clears."""

from __future__ import annotations

import pytest
import torch
from latentgraph.nodes.sd.devices import execution_device, weight_dtype
from latentgraph.nodes.sd.models import ModelManager, module_bytes


def _linear(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(64, 64)


def _loader(seed: int, calls: list[int]):
    def load() -> torch.nn.Module:
        calls.append(seed)
        return _linear(seed)
    return load


SIZE = module_bytes(_linear(0))


def test_a_key_loads_once_and_is_shared() -> None:
    manager = ModelManager(device=torch.device("cpu"), ram_budget=10 * SIZE)
    calls: list[int] = []
    with manager.use("a", _loader(0, calls)) as first, manager.use("a", _loader(0, calls)) as second:
        assert first is second
    assert calls == [0] and manager.loads == 1


def test_budget_for_two_keeps_the_two_most_recently_used() -> None:
    manager = ModelManager(device=torch.device("cpu"), ram_budget=2 * SIZE)
    calls: list[int] = []
    x = torch.ones(1, 64)
    outputs = {}
    for seed, key in enumerate("abc"):
        with manager.use(key, _loader(seed, calls)) as model:
            outputs[key] = model(x)
    assert manager.keys() == ["b", "c"]
    assert manager.offloads == 1
    with manager.use("a", _loader(0, calls)) as model:
        assert torch.equal(model(x), outputs["a"])
    assert manager.keys() == ["c", "a"]
    assert calls == [0, 1, 2, 0]


def test_recent_use_protects_from_eviction() -> None:
    manager = ModelManager(device=torch.device("cpu"), ram_budget=2 * SIZE)
    calls: list[int] = []
    for seed, key in enumerate("ab"):
        manager.get(key, _loader(seed, calls))
    manager.get("a", _loader(0, calls))
    manager.get("c", _loader(2, calls))
    assert manager.keys() == ["a", "c"]


def test_a_model_in_use_is_never_evicted() -> None:
    manager = ModelManager(device=torch.device("cpu"), ram_budget=SIZE)
    calls: list[int] = []
    with manager.use("a", _loader(0, calls)) as held:
        with manager.use("b", _loader(1, calls)):
            assert "a" in manager and "b" in manager
        assert held.weight.shape == (64, 64)
    manager.get("c", _loader(2, calls))
    assert manager.keys() == ["c"]


def test_free_drops_everything() -> None:
    manager = ModelManager(device=torch.device("cpu"), ram_budget=10 * SIZE)
    manager.get("a", _loader(0, []))
    manager.free()
    assert manager.keys() == [] and manager.stats()["models"] == 0


def test_budget_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTGRAPH_RAM_BUDGET", "1.5G")
    assert ModelManager(device=torch.device("cpu")).ram_budget == int(1.5 * 1024**3)


def test_device_and_dtype_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATENTGRAPH_DEVICE", raising=False)
    monkeypatch.delenv("LATENTGRAPH_DTYPE", raising=False)
    device = execution_device()
    if device.type == "cpu":
        assert weight_dtype(device) == torch.float32
    else:
        assert weight_dtype(device) == torch.float16
        assert weight_dtype(device, fragile=True) in (torch.bfloat16, torch.float32)
    monkeypatch.setenv("LATENTGRAPH_DTYPE", "bf16")
    assert weight_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setenv("LATENTGRAPH_DEVICE", "cpu")
    assert execution_device() == torch.device("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_vram_budget_offloads_to_ram() -> None:
    manager = ModelManager(device=torch.device("cuda"), ram_budget=10 * SIZE, vram_budget=SIZE)
    calls: list[int] = []
    with manager.use("a", _loader(0, calls)) as a:
        assert a.weight.is_cuda
    with manager.use("b", _loader(1, calls)):
        pass
    assert "a" in manager and calls == [0, 1]
    assert manager.stats()["vram_bytes"] == SIZE


def test_lora_tensors_count_in_the_budget_and_go_with_free(tmp_path) -> None:
    """A LoRA file read through the manager is held once, its bytes (computed here from the file's tensors) are
    in the manager's total, the least recently used goes first when the budget is exceeded, and free() drops it."""
    from latentgraph.nodes.sd.lora import load_lora_file
    from safetensors.torch import save_file

    tensors = {"lora_unet_x.lora_down.weight": torch.ones(4, 64), "lora_unet_x.lora_up.weight": torch.ones(64, 4)}
    path = tmp_path / "a.safetensors"
    save_file(tensors, str(path))
    size = sum(t.element_size() * t.nelement() for t in tensors.values())
    manager = ModelManager(device=torch.device("cpu"), ram_budget=2 * SIZE + size - 1)
    first = load_lora_file(path, "a", manager)
    assert load_lora_file(path, "a", manager) is first
    manager.get("m", _loader(0, []))
    assert manager.cache_bytes() == SIZE + size
    manager.get("m2", _loader(1, []))  # over budget: the LoRA (least recently used) goes first
    assert "a#lora" not in manager and "m" in manager
    load_lora_file(path, "a", manager)
    manager.free()
    assert manager.cache_bytes() == 0 and manager.keys() == []


def test_runtime_caches_are_environment_services_cleared_by_free(tmp_path, tiny_file) -> None:
    """The model manager and the checkpoint facts belong to an environment, keyed by type: two environments
    share nothing, and Environment.free() (what /free calls) empties both."""
    from latentgraph.engine.context import Environment
    from latentgraph.nodes.sd.families import family
    from latentgraph.nodes.sd.handles import checkpoint_info, checkpoint_infos
    from latentgraph.nodes.sd.models import ModelManager as Manager
    from latentgraph.nodes.sd.services import model_manager

    env, other = Environment(tmp_path / "a"), Environment(tmp_path / "b")
    manager = model_manager(env)
    assert isinstance(manager, Manager) and model_manager(env) is manager and model_manager(other) is not manager
    assert env.services[Manager] is manager and "models" not in env.services
    sd1 = family("sd1")
    info = checkpoint_info(env, tiny_file, "tiny", sd1)
    assert checkpoint_info(env, tiny_file, "tiny", sd1) is info and len(checkpoint_infos(other)) == 0
    manager.get("m", _loader(0, []))
    assert env.service_bytes() == SIZE
    env.free()
    assert len(checkpoint_infos(env)) == 0 and manager.keys() == [] and env.service_bytes() == 0


def test_shipped_configs_are_not_shared_mutable_state() -> None:
    from latentgraph.nodes.sd.detect import family_config

    config = family_config("sd1", "unet")
    config["sample_size"] = -1
    assert family_config("sd1", "unet")["sample_size"] != -1
