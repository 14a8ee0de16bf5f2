"""The artefact round trip: identical codes, metadata inside, loads with nothing but torch."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from model.backbones import build_backbone
from model.errors import CheckpointError
from model.export import METADATA_FILE, export_encoder, load_encoder, new_model_version, utc_now
from model.network import Heads, MeTAHNet


def _net(bits: int = 16) -> MeTAHNet:
    torch.manual_seed(0)
    return MeTAHNet.build(
        build_backbone("lenet"), Heads(512, bits, 10, classifier=True, discriminator=True, max_steps=10)
    ).eval()


def _metadata(net: MeTAHNet, bits: int) -> dict[str, object]:
    created = utc_now()
    return {
        "bits": bits,
        "input_size": [32, 32],
        "backbone": "lenet",
        "method": "metah",
        "classes": [str(i) for i in range(10)],
        "model_version": new_model_version("metah", bits, net.encoder(), created),
        "created_at": created.isoformat(),
        "metrics": {"target_vs_source": {"map_all": 0.5}},
    }


def test_round_trip_gives_identical_binary_codes_and_metadata(tmp_path: Path) -> None:
    net = _net(24)
    path = tmp_path / "model.pt"
    export_encoder(net.encoder(), _metadata(net, 24), path)
    loaded = load_encoder(path)
    x = torch.rand(7, 3, 32, 32)
    with torch.no_grad():
        eager = net.encoder().eval()(x)
        scripted = loaded.module(x)
    assert scripted.dtype == torch.float32 and scripted.shape == (7, 24)
    assert set(scripted.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(eager, scripted)
    assert loaded.bits == 24 and loaded.input_size == (32, 32)
    assert loaded.metadata["classes"][3] == "3"
    assert loaded.metadata["export"] == "scripted"


def test_channels_last_weights_change_no_code_and_no_input_contract(tmp_path: Path) -> None:
    """The artefact stores its convolutions channels-last (faster on CPU); inputs stay NCHW ``[0, 1]`` tensors
    in whatever memory layout, and the codes stay those of the eager network."""
    net = _net()
    path = tmp_path / "model.pt"
    export_encoder(net.encoder(), _metadata(net, 16), path)
    module = load_encoder(path).module
    constants = [
        node.t("value")
        for node in module.graph.findAllNodes("prim::Constant")
        if node.hasAttribute("value") and node.kindOf("value") == "t"
    ]
    kernels = [t for t in constants if t.dim() == 4 and t.shape[-1] > 1]  # the convolutions' weights
    assert kernels and all(t.is_contiguous(memory_format=torch.channels_last) for t in kernels)
    assert not any(t.is_contiguous() for t in kernels)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        eager = net.encoder().eval()(x)
        assert torch.equal(module(x), eager)
        assert torch.equal(module(x.contiguous(memory_format=torch.channels_last)), eager)


def test_the_digit_encoder_is_scripted_not_traced() -> None:
    """Tracing (the fallback for unscriptable third-party backbones) would freeze shape-dependent branches."""
    scripted = torch.jit.script(_net().encoder())
    other_size = torch.rand(2, 3, 40, 40)  # a size the 32x32 trace would have baked in
    assert torch.equal(scripted(other_size), _net().encoder()(other_size))


class _Unscriptable(nn.Module):
    """Traceable but not scriptable (TorchScript compiles no ``*args``), like some third-party backbones."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.project = nn.Linear(3, bits)

    def forward(self, x: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
        return torch.where(self.project(x.mean(dim=(2, 3))) > 0, 1.0, -1.0)


def test_a_traced_export_is_logged_and_recorded_in_the_metadata(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """When scripting fails, export falls back to tracing: at WARNING in the log and ``export: traced`` in the
    artefact, so serving (and whoever reads the registry) can tell."""
    torch.manual_seed(0)
    encoder = _Unscriptable(16).eval()
    with pytest.raises(Exception):  # noqa: B017, PT011  # whatever torch raises: it is not scriptable
        torch.jit.script(encoder)
    path = tmp_path / "model.pt"
    with caplog.at_level(logging.WARNING, logger="model.export"):
        export_encoder(encoder, _metadata(_net(), 16), path)
    assert any(r.levelno == logging.WARNING and "trace" in r.getMessage() for r in caplog.records), caplog.text
    loaded = load_encoder(path)
    assert loaded.metadata["export"] == "traced"
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), encoder(x))


def test_codes_agree_with_the_sign_of_the_relaxed_codes(tmp_path: Path) -> None:
    net = _net()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        relaxed = net(x).codes
        codes = net.encoder()(x)
    assert torch.equal(codes > 0, relaxed > 0)


def test_artefact_loads_with_bare_torch_in_a_fresh_interpreter(tmp_path: Path) -> None:
    net = _net()
    path = tmp_path / "model.pt"
    export_encoder(net.encoder(), _metadata(net, 16), path)
    script = (
        "import json, sys, torch\n"
        f"extra = {{'{METADATA_FILE}': ''}}\n"
        "m = torch.jit.load(sys.argv[1], _extra_files=extra)\n"
        "meta = json.loads(extra['metah.json'])\n"
        "out = m(torch.rand(2, 3, *meta['input_size']))\n"
        "assert 'model' not in sys.modules and 'service' not in sys.modules\n"
        "print(json.dumps({'shape': list(out.shape), 'values': sorted(set(out.flatten().tolist())), **meta}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-W", "ignore", "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    report = json.loads(done.stdout)
    assert report["shape"] == [2, 16]
    assert set(report["values"]) <= {-1.0, 1.0}
    for key in (
        "bits",
        "input_size",
        "backbone",
        "method",
        "classes",
        "model_version",
        "created_at",
        "metrics",
    ):
        assert key in report


def test_loading_garbage_is_a_clear_checkpoint_error(tmp_path: Path) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a torchscript file")
    with pytest.raises(CheckpointError, match="not a TorchScript"):
        load_encoder(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_encoder(tmp_path / "missing.pt")
    plain = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(plain, str(tmp_path / "plain.pt"))
    with pytest.raises(CheckpointError, match="metadata"):
        load_encoder(tmp_path / "plain.pt")


def test_export_refuses_incomplete_metadata(tmp_path: Path) -> None:
    net = _net()
    with pytest.raises(ValueError, match="metadata"):
        export_encoder(net.encoder(), {"bits": 16}, tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()
