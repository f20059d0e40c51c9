"""geoalign_store.features.vit (the DINOv3 forward extract and locate run) against transformers' own
DINOv3ViTModel: both MLP variants, weights from a Hugging Face folder and from an official .pth."""

import pytest
import torch

from geoalign_store.config import ConfigError
from geoalign_store.features import layer_tokens, load_backbone
from test_dinov3_convert import make_model, to_official


def transformers_layers(model, pixels, layers) -> dict[int, torch.Tensor]:
    with torch.inference_mode():
        hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states
        return {k: model.norm(hidden[k + 1]) for k in layers}


@pytest.mark.parametrize("gated", [True, False])
def test_own_forward_equals_transformers_from_a_folder_and_an_official_pth(tmp_path, gated):
    """SwiGLU + SiLU and plain GELU MLPs, no key bias, non-trivial norms, layer scales and
    tokens, a non-square image: every requested block's output matches."""
    _, model = make_model(gated)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    torch.save(to_official(model, gated), tmp_path / "official.pth")
    pixels = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(3))
    want = transformers_layers(model, pixels, [0, 1])
    for weights in (tmp_path / "hf", tmp_path / "official.pth"):
        bb = load_backbone({"name": "auto"}, str(weights), [0, 1], "cpu", "fp32")
        assert len(bb.model.layer) == 2  # the third block is never built
        got = layer_tokens(bb, pixels)
        for k in (0, 1):
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=2e-5)


def test_weights_that_do_not_fit_their_config_are_a_clear_error(tmp_path):
    _, model = make_model(True)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    config = tmp_path / "hf" / "config.json"
    config.write_text(config.read_text().replace('"intermediate_size": 96', '"intermediate_size": 100'))
    with pytest.raises(ConfigError, match="do not fit a DINOv3 ViT of their config"):
        load_backbone({"name": "auto"}, str(tmp_path / "hf"), [0], "cpu", "fp32")


def test_loading_either_weights_format_never_imports_transformers(tmp_path):
    """The architecture read from an official .pth is, key by key, the transformers config the
    converter gives (so fingerprints are unchanged), and neither format imports transformers
    (~4 s of every extract and locate process)."""
    import subprocess
    import sys
    from geoalign_store.features import ARCH_KEYS, load_official_checkpoint, read_official
    _, model = make_model(False)
    model.save_pretrained(tmp_path / "hf", safe_serialization=True)
    torch.save(to_official(model, False), tmp_path / "official.pth")
    config, _ = load_official_checkpoint(tmp_path / "official.pth")
    arch, _ = read_official(tmp_path / "official.pth")
    assert {k: arch.get(k) for k in ARCH_KEYS} == {k: config.to_dict().get(k) for k in ARCH_KEYS}
    code = ("import sys; from geoalign_store.features import load_backbone, read_arch\n"
            "for w in sys.argv[1:]:\n    read_arch(__import__('pathlib').Path(w)); load_backbone({'name': 'auto'}, w, [1])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "hf"), str(tmp_path / "official.pth")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
