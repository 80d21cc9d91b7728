from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.errors import ModelMissing
from engine.models.store import ModelFileCorrupt, ModelStore
from tests.model_helpers import fake_gpu, install_test_model, make_runtime

torch.set_num_threads(1)


def _save_compact(path, scale=4):
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=scale)
    torch.save({"params": net.state_dict()}, path)
    return net


def _save_rrdb(path, scale=4):
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    torch.save({"params_ema": net.state_dict()}, path)
    return net


def test_tiny_compact_loads_through_store_and_runtime(tmp_path):
    src = tmp_path / "realesr-general-x4v3.pth"
    net = _save_compact(src)
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": src})
    rt = make_runtime(store)
    assert rt.is_available("realesr-general-x4v3")
    assert not rt.is_available("realesrgan-x4plus")
    assert rt.file("realesr-general-x4v3").name == "realesr-general-x4v3.pth"
    desc = rt.load_image_model("realesr-general-x4v3")
    assert desc.scale == 4
    assert not desc.model.training
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        y = desc(x)
        ref = net.eval()(x).clamp(0, 1)  # spandrel descriptors clamp to [0, 1]
    assert y.shape == (1, 3, 32, 32)
    torch.testing.assert_close(y, ref)
    # cached: the same object comes back
    assert rt.load_image_model("realesr-general-x4v3") is desc


def test_tiny_rrdb_params_ema_loads(tmp_path):
    src = tmp_path / "RealESRGAN_x4plus.pth"
    _save_rrdb(src)
    store = install_test_model(tmp_path / "store", "realesrgan-x4plus",
                               {"RealESRGAN_x4plus.pth": src})
    desc = make_runtime(store).load_image_model("realesrgan-x4plus")
    assert desc.architecture.name == "ESRGAN"
    assert desc.scale == 4
    out = desc(torch.rand(1, 3, 6, 6))
    assert out.shape == (1, 3, 24, 24)
    assert np.isfinite(out.detach().numpy()).all()


def test_missing_model_raises_model_missing(tmp_path):
    rt = make_runtime(ModelStore(tmp_path))
    with pytest.raises(ModelMissing):
        rt.path("big-lama")
    with pytest.raises(ModelMissing):
        rt.load_image_model("realesrgan-x4plus")


def test_corrupted_after_verify_is_caught_at_load(tmp_path):
    src = tmp_path / "realesr-general-x4v3.pth"
    _save_compact(src)
    store = install_test_model(tmp_path / "store", "realesr-general-x4v3",
                               {"realesr-general-x4v3.pth": src})
    f = store.file_path("realesr-general-x4v3", "realesr-general-x4v3.pth")
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))  # same size, new mtime
    rt = make_runtime(store)
    with pytest.raises(ModelFileCorrupt) as ei:
        rt.load_image_model("realesr-general-x4v3")
    assert "mend models pull realesr-general-x4v3" in str(ei.value)
    assert store.status("realesr-general-x4v3") == "corrupt"
    # a touched but unchanged file passes (re-hashed once, then cheap again)
    import os

    store.verify("realesr-general-x4v3", repair=False)
    f.write_bytes(src.read_bytes())
    os.utime(f, ns=(1, 1))
    assert rt.path("realesr-general-x4v3") == store.root / "realesr-general-x4v3"


def test_lru_evicts_least_recently_used_within_budget(tmp_path):
    rt = make_runtime(ModelStore(tmp_path), budget=1000)
    built = []

    def factory(name):
        def f():
            built.append(name)
            return object()
        return f

    a = rt.cached("a", factory("a"), 400)
    rt.cached("b", factory("b"), 400)
    assert rt.cached("a", factory("a"), 400) is a  # hit, and now most recent
    rt.cached("c", factory("c"), 400)  # 1200 > 1000: evict the LRU one, "b"
    assert rt.cached_keys() == ["a", "c"]
    assert rt.cached_bytes == 800
    rt.cached("b", factory("b"), 400)
    assert built == ["a", "b", "c", "b"]
    assert "a" not in rt.cached_keys()
    rt.clear()
    assert rt.cached_keys() == [] and rt.cached_bytes == 0


def test_loaded_image_models_counted_by_parameter_bytes(tmp_path):
    src1 = tmp_path / "realesr-general-x4v3.pth"
    _save_compact(src1)
    src2 = tmp_path / "RealESRGAN_x4plus.pth"
    _save_rrdb(src2)
    st = install_test_model(tmp_path / "s", "realesr-general-x4v3",
                            {"realesr-general-x4v3.pth": src1})
    st = install_test_model(tmp_path / "s", "realesrgan-x4plus", {"RealESRGAN_x4plus.pth": src2},
                            store=st)
    from engine.models.loader import param_bytes

    probe = make_runtime(st, budget=8 << 30)  # room for both models' estimates
    b1 = param_bytes(probe.load_image_model("realesr-general-x4v3"))
    b2 = param_bytes(probe.load_image_model("realesrgan-x4plus"))
    assert probe.cached_bytes == b1 + b2
    rt = make_runtime(st, budget=max(b1, b2) + 1)  # room for one at a time
    rt.load_image_model("realesr-general-x4v3")
    rt.load_image_model("realesrgan-x4plus")
    assert [k[1] for k in rt.cached_keys()] == ["realesrgan-x4plus"]


def test_torchscript_pt_goes_through_jit(tmp_path):
    # big-lama ships as TorchScript .pt: the loader must jit-load it, not unpickle it
    from spandrel.architectures.Compact import Compact

    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2).eval()
    src = tmp_path / "model.pt"
    torch.jit.trace(net, torch.rand(1, 3, 8, 8)).save(str(src))
    from engine.models.loader import load_spandrel

    desc = load_spandrel(src)
    assert desc.scale == 2
    x = torch.rand(1, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(desc(x), net(x).clamp(0, 1))


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickles_with_code_are_refused(tmp_path):
    from engine.models.loader import UnsupportedModel, load_spandrel, load_state_dict

    p = tmp_path / "evil.pth"
    torch.save({"params": {"w": torch.zeros(1)}, "x": _Evil()}, p)
    with pytest.raises(UnsupportedModel):
        load_state_dict(p)
    with pytest.raises(UnsupportedModel):
        load_spandrel(p)


def test_raw_state_dicts_safetensors_and_pth(tmp_path):
    from safetensors.torch import save_file

    from engine.models.loader import UnsupportedModel, load_state_dict

    sd = {"a.weight": torch.arange(6.0).reshape(2, 3)}
    save_file(sd, tmp_path / "w.safetensors")
    torch.save(sd, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        torch.testing.assert_close(load_state_dict(tmp_path / name)["a.weight"], sd["a.weight"])
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(UnsupportedModel):
        load_state_dict(tmp_path / "w.txt")
    # through the runtime, for a torch-state-dict model
    st = install_test_model(tmp_path / "s", "invsr-noise-predictor-v5",
                            {"noise_predictor_sd_turbo_v5.pth": tmp_path / "w.pth"})
    got = make_runtime(st).load_state_dict("invsr-noise-predictor-v5")
    torch.testing.assert_close(got["a.weight"], sd["a.weight"])


def test_extra_arches_register_codeformer_once():
    from spandrel import MAIN_REGISTRY

    from engine.models.loader import install_extra_arches

    assert install_extra_arches() is True
    assert install_extra_arches() is True  # idempotent
    assert MAIN_REGISTRY.get("CodeFormer") is not None


def test_non_image_model_is_refused_by_load_image_model(tmp_path):
    rt = make_runtime(ModelStore(tmp_path))
    from engine.errors import UsageError

    with pytest.raises(UsageError):
        rt.load_image_model("sam-vit-base")


def _tamper_keeping_size_and_mtime(f, seed=123):
    """Other weights of the same architecture (same size) written over ``f``, mtime restored."""
    import os

    from spandrel.architectures.Compact import Compact

    st = f.stat()
    torch.manual_seed(seed)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4)
    with torch.no_grad():
        for t in net.parameters():
            t.fill_(0.5)
    other = f.parent / ".other" / f.name  # torch.save records the file's name: same name
    other.parent.mkdir()
    torch.save({"params": net.state_dict()}, other)
    assert other.stat().st_size == st.st_size
    os.replace(other, f)
    other.parent.rmdir()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_verify_reports_tampering_the_cheap_check_misses_and_the_next_load_refuses(tmp_path):
    import os

    mid, name = "realesr-general-x4v3", "realesr-general-x4v3.pth"
    src = tmp_path / name
    _save_compact(src)
    store = install_test_model(tmp_path / "store", mid, {name: src})
    f = store.file_path(mid, name)
    good = f.stat()
    _tamper_keeping_size_and_mtime(f)
    assert store.status(mid) == "verified"  # size + mtime unchanged: only a full hash sees it
    rep = store.verify(mid)
    assert rep.corrupt == [name] and rep.ok == []
    assert rep.status == "corrupt"  # from the full hash, not from the cheap check
    # the record is gone: every later check (and load) re-hashes and refuses the file
    assert store.status(mid) == "corrupt"
    assert not store.is_installed(mid)
    with pytest.raises(ModelFileCorrupt, match="mend models pull"):
        make_runtime(store).load_image_model(mid)
    assert ModelStore(store.root, store.manifest).status(mid) == "corrupt"  # on disk, too
    # the good content back (same size and mtime again): a full verify accepts it again
    f.write_bytes(src.read_bytes())
    os.utime(f, ns=(good.st_atime_ns, good.st_mtime_ns))
    assert store.verify(mid).status == "verified"
    assert store.status(mid) == "verified"
    make_runtime(store).load_image_model(mid)


def test_cli_verify_exits_1_on_same_size_same_mtime_tampering(tmp_path, monkeypatch, capsys):
    from engine.cli import main
    from tests.tiny_models import write_manifest

    mid, name = "realesr-general-x4v3", "realesr-general-x4v3.pth"
    src = tmp_path / name
    _save_compact(src)
    store = install_test_model(tmp_path / "store", mid, {name: src})
    _tamper_keeping_size_and_mtime(store.file_path(mid, name))
    monkeypatch.setenv("MEND_OFFLINE", "1")
    monkeypatch.setenv("MEND_MODELS_DIR", str(store.root))
    monkeypatch.setenv("MEND_MANIFEST", str(write_manifest(store, tmp_path / "models.json")))
    assert main(["models", "verify", mid]) == 1
    out = capsys.readouterr().out
    assert f"{mid}: corrupt" in out and f"corrupt: {name}" in out
    assert main(["models", "verify", mid]) == 1  # still corrupt the second time


def test_unlisted_weights_beside_a_model_refuse_the_load(tmp_path):
    from engine.models.store import UnexpectedModelFiles

    mid, name = "realesr-general-x4v3", "realesr-general-x4v3.pth"
    src = tmp_path / name
    _save_compact(src)
    store = install_test_model(tmp_path / "store", mid, {name: src})
    (store.model_dir(mid) / "model.safetensors").write_bytes(b"never hashed")
    rt = make_runtime(store)
    with pytest.raises(UnexpectedModelFiles, match=r"model\.safetensors.*verify --repair"):
        rt.load_image_model(mid)
    assert not rt.is_available(mid)


def test_precision_change_reloads_a_cached_image_model(tmp_path, monkeypatch):
    from engine.models.runtime import ModelRuntime

    mid, name = "realesr-general-x4v3", "realesr-general-x4v3.pth"
    src = tmp_path / name
    _save_compact(src)
    store = install_test_model(tmp_path / "store", mid, {name: src})
    rt = ModelRuntime(fake_gpu(), store)
    monkeypatch.setenv("MEND_PRECISION", "fp16")
    d16 = rt.load_image_model(mid)
    assert next(d16.model.parameters()).dtype == torch.float16
    monkeypatch.setenv("MEND_PRECISION", "fp32")  # the app's setting, changed live
    d32 = rt.load_image_model(mid)
    assert d32 is not d16 and next(d32.model.parameters()).dtype == torch.float32
    assert rt.load_image_model(mid) is d32


def test_image_model_cache_makes_room_before_building(tmp_path, monkeypatch):
    from engine.models import loader

    a, b = tmp_path / "realesr-general-x4v3.pth", tmp_path / "RealESRGAN_x4plus.pth"
    _save_compact(a)
    _save_rrdb(b)
    st = install_test_model(tmp_path / "s", "realesr-general-x4v3", {a.name: a})
    st = install_test_model(tmp_path / "s", "realesrgan-x4plus", {b.name: b}, store=st)
    rt = make_runtime(st, budget=st.spec("realesrgan-x4plus").memory_mb << 20)
    rt.load_image_model("realesr-general-x4v3")
    resident_at_build = []
    real = loader.load_spandrel

    def spy(*args, **kw):
        resident_at_build.append(rt.cached_keys())
        return real(*args, **kw)

    monkeypatch.setattr(loader, "load_spandrel", spy)
    rt.load_image_model("realesrgan-x4plus")  # its estimate (1200 MB) fills the budget
    assert resident_at_build == [[]]  # the other model was evicted before this one was built
    assert [k[1] for k in rt.cached_keys()] == ["realesrgan-x4plus"]


def test_auto_device_falls_back_to_cpu_when_cuda_is_broken(monkeypatch, caplog):
    from engine import devices
    from engine.errors import DeviceUnavailable

    def broken(*a, **k):
        raise RuntimeError("Found no NVIDIA driver on your system")

    class Props:
        name, total_memory = "Fake GPU", 8 << 30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", broken)
    devices.select_device.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="engine.devices"):
            dev = devices.select_device("auto")
        assert dev.kind == "cpu" and "NVIDIA driver" in dev.note
        assert "NVIDIA driver" in caplog.text
        assert dev.to_json()["note"] == dev.note
        with pytest.raises(DeviceUnavailable, match="CUDA requested but.*NVIDIA driver"):
            devices.select_device("cuda")
        # the properties read, but nothing can be allocated: the probe finds it
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props())
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
        monkeypatch.setattr(devices, "_probe", broken)
        devices.select_device.cache_clear()
        assert devices.select_device("auto").kind == "cpu"
        with pytest.raises(DeviceUnavailable):
            devices.select_device("cuda")
        assert "note" not in devices.select_device("cpu").to_json()
    finally:
        devices.select_device.cache_clear()


def test_bad_checkpoints_are_clear_errors_naming_the_file(tmp_path):
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    from engine.models.loader import UnsupportedModel

    sd = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=4).state_dict()
    sd[sorted(sd)[2]] = torch.zeros(5)  # a tensor of the wrong shape
    bad = tmp_path / "bad" / "realesr-general-x4v3.safetensors"
    bad.parent.mkdir()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(bad))
    cut = tmp_path / "cut" / "realesr-general-x4v3.safetensors"
    cut.parent.mkdir()
    cut.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    for src, what in ((bad, "size mismatch"), (cut, "SafetensorError")):
        store = install_test_model(src.parent / "store", "realesr-general-x4v3", {src.name: src})
        with pytest.raises(UnsupportedModel, match=rf"realesr-general-x4v3\.safetensors.*{what}"):
            make_runtime(store).load_image_model("realesr-general-x4v3")
