"""Official DINOv3 checkpoint -> transformers.DINOv3ViTModel conversion.

The official code is not a dependency, so the official-format state dict is written here from a
seeded DINOv3ViTModel by an inverse of the SPEC §2 mapping (checked against the real dinov3 code
when the converter was written), then converted back.
"""

import re

import pytest
import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

from geoalign_store.features import (OFFICIAL_ARCHS, config_from_official_state_dict,
                                     convert_official_state_dict, load_official_checkpoint)

DIM, HEADS, REG = 64, 4, 4


def make_model(gated=True, seed=0):
    torch.manual_seed(seed)
    cfg = DINOv3ViTConfig(hidden_size=DIM, num_hidden_layers=3, num_attention_heads=HEADS,
                          intermediate_size=96 if gated else 128, use_gated_mlp=gated,
                          hidden_act="silu" if gated else "gelu", num_register_tokens=REG,
                          layer_norm_eps=1e-5, rope_theta=100.0, key_bias=False)
    model = DINOv3ViTModel(cfg).eval()
    with torch.no_grad():  # nothing trivially 0 or 1: layer scales, norms, biases, tokens
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (1.0 if re.search(r"norm\d?\.weight$", name) else 0.0))
    return cfg, model


def to_official(model, gated=True, q_masked=()):
    """Inverse of the SPEC §2 mapping. The masked key bias gets garbage (mask 0); the q-bias
    entries in ``q_masked`` get garbage too (mask 0), with the model's own entries zeroed."""
    hf = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(7)
    sd = {"cls_token": hf["embeddings.cls_token"], "storage_tokens": hf["embeddings.register_tokens"],
          "mask_token": hf["embeddings.mask_token"].reshape(1, DIM),
          "patch_embed.proj.weight": hf["embeddings.patch_embeddings.weight"],
          "patch_embed.proj.bias": hf["embeddings.patch_embeddings.bias"],
          "norm.weight": hf["norm.weight"], "norm.bias": hf["norm.bias"],
          "rope_embed.periods": 100.0 ** (4 * torch.arange(DIM // HEADS // 4) / (DIM // HEADS)),
          "local_cls_norm.weight": torch.ones(DIM), "local_cls_norm.bias": torch.zeros(DIM)}
    mlp = {"gate_proj": "w1", "up_proj": "w2", "down_proj": "w3"} if gated else {"up_proj": "fc1", "down_proj": "fc2"}
    for k, v in hf.items():
        m = re.fullmatch(r"(?:model\.)?layer\.(\d+)\.(.*)", k)
        if not m:
            continue
        b, rest = f"blocks.{m[1]}.", m[2]
        if rest.startswith(("norm1.", "norm2.")):
            sd[b + rest] = v
        elif rest.startswith("attention.o_proj."):
            sd[b + "attn.proj." + rest.rsplit(".", 1)[1]] = v
        elif rest.startswith("layer_scale"):
            sd[f"{b}ls{rest[len('layer_scale')]}.gamma"] = v
        elif rest.startswith("mlp."):
            _, proj, p = rest.split(".")
            sd[f"{b}mlp.{mlp[proj]}.{p}"] = v
        elif rest == "attention.q_proj.weight":
            a = f"{m[0][: -len(rest)]}attention."
            sd[b + "attn.qkv.weight"] = torch.cat([hf[a + f"{n}_proj.weight"] for n in "qkv"])
            q_b = hf[a + "q_proj.bias"]
            mask = torch.ones(3 * DIM)
            mask[DIM:2 * DIM] = 0
            for i in q_masked:
                model.state_dict()[a + "q_proj.bias"][i] = 0.0  # the true (masked) value
                q_b[i] = 1e3
                mask[i] = 0
            k_garbage = torch.randn(DIM, generator=g) * 1e3
            sd[b + "attn.qkv.bias"] = torch.cat([q_b, k_garbage, hf[a + "v_proj.bias"]])
            sd[b + "attn.qkv.bias_mask"] = mask
    return sd


def outputs(model, x):
    with torch.no_grad():
        return model(pixel_values=x, output_hidden_states=True).hidden_states


@pytest.mark.parametrize("gated", [True, False])
def test_roundtrip_identical_outputs_and_key_bias_dropped(gated):
    cfg, model = make_model(gated)
    official = to_official(model, gated, q_masked=(0, 5, 17))
    converted = convert_official_state_dict(official)
    assert not any(k.endswith("k_proj.bias") for k in converted)
    new_cfg = config_from_official_state_dict(official)
    assert new_cfg.key_bias is False and new_cfg.query_bias and new_cfg.value_bias
    back = DINOv3ViTModel(new_cfg).eval()
    back.load_state_dict(converted, strict=True)
    original = model.state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], original[k]) for k in original)
    q0 = [k for k in converted if k.endswith("0.attention.q_proj.bias")][0]
    assert converted[q0][[0, 5, 17]].eq(0).all()  # the mask was applied, not just the key part dropped
    for size in [(64, 64), (48, 80)]:
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
        for a, b in zip(outputs(model, x), outputs(back, x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_uncopied_conversion_is_equal_and_shares_the_fused_qkv():
    """copy=False (extract's loader: no copy of a memory-mapped checkpoint) gives the same values
    as views of the fused tensor; copy=True (save_pretrained's) owns its memory."""
    _, model = make_model(True)
    official = to_official(model, True)
    copied, viewed = convert_official_state_dict(official), convert_official_state_dict(official, copy=False)
    assert copied.keys() == viewed.keys() and all(torch.equal(copied[k], viewed[k]) for k in copied)
    fused = official["blocks.0.attn.qkv.weight"].untyped_storage().data_ptr()
    q = [k for k in copied if k.endswith("0.attention.q_proj.weight")][0]
    assert viewed[q].untyped_storage().data_ptr() == fused != copied[q].untyped_storage().data_ptr()


def test_nested_checkpoints(tmp_path):
    _, model = make_model()
    official = to_official(model)
    ref = convert_official_state_dict(official)
    teacher = {"teacher": {**{f"backbone.{k}": v for k, v in official.items()}, "dino_head.mlp.0.weight": torch.zeros(2)}}
    for i, wrapped in enumerate([{"model": official}, {"state_dict": official}, teacher]):
        path = tmp_path / f"ckpt{i}.pth"
        torch.save(wrapped, path)
        cfg, sd = load_official_checkpoint(path)
        assert sd.keys() == ref.keys() and all(torch.equal(sd[k], ref[k]) for k in ref)
        assert cfg.num_hidden_layers == 3


def test_missing_and_unexpected_keys_are_reported():
    _, model = make_model()
    official = to_official(model)
    broken = {k: v for k, v in official.items() if k != "blocks.1.mlp.w2.weight"}
    with pytest.raises(ValueError, match=r"missing keys \['blocks\.1\.mlp\.w2\.weight'\]"):
        convert_official_state_dict(broken)
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks\.0\.attn\.extra'\]"):
        convert_official_state_dict({**official, "blocks.0.attn.extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="cls_norm"):
        convert_official_state_dict({**official, "cls_norm.weight": torch.ones(DIM)})


class NotAStateDict:
    pass


def test_refuses_what_is_not_a_state_dict(tmp_path):
    for name, obj in [("object.pth", NotAStateDict()), ("list.pth", [torch.zeros(2)]),
                      ("dict.pth", {"epoch": torch.tensor(3)})]:
        path = tmp_path / name
        torch.save(obj, path)
        with pytest.raises(ValueError, match=re.escape(str(path))):
            load_official_checkpoint(path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=re.escape(str(junk))):
        load_official_checkpoint(junk)


def _shape_only_official(dim, depth, inter, gated, heads, storage=4, theta=100.0):
    z = lambda *s: torch.zeros(()).expand(*s)  # noqa: E731  (shapes only, no memory)
    sd = {"cls_token": z(1, 1, dim), "storage_tokens": z(1, storage, dim), "mask_token": z(1, dim),
          "patch_embed.proj.weight": z(dim, 3, 16, 16), "patch_embed.proj.bias": z(dim),
          "rope_embed.periods": theta ** (4 * torch.arange(dim // heads // 4) / (dim // heads))}
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "attn.qkv.bias"] = torch.randn(3 * dim)
        sd[b + "attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
        sd[b + "attn.proj.bias"] = z(dim)
        for n, shape in ({"w1": (inter, dim), "w2": (inter, dim), "w3": (dim, inter)} if gated
                         else {"fc1": (inter, dim), "fc2": (dim, inter)}).items():
            sd[f"{b}mlp.{n}.weight"], sd[f"{b}mlp.{n}.bias"] = z(*shape), z(shape[0])
    return sd


def test_config_inference():
    h = OFFICIAL_ARCHS["vith16plus"]
    cfg = config_from_official_state_dict(_shape_only_official(1280, 32, 5120, True, 20))
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        h["hidden_size"], h["num_hidden_layers"], h["num_attention_heads"], h["intermediate_size"]) == (1280, 32, 20, 5120)
    assert cfg.use_gated_mlp and cfg.hidden_act == "silu" and cfg.num_register_tokens == 4
    assert cfg.layer_norm_eps == 1e-5 and cfg.rope_theta == 100.0 and cfg.patch_size == 16
    assert not cfg.key_bias and cfg.query_bias and cfg.value_bias
    cfg = config_from_official_state_dict(_shape_only_official(768, 12, 3072, False, 12, storage=0, theta=50.0),
                                          layer_norm_eps=1e-6)
    assert (cfg.num_attention_heads, cfg.intermediate_size, cfg.num_register_tokens) == (12, 3072, 0)
    assert not cfg.use_gated_mlp and cfg.hidden_act == "gelu" and cfg.layer_norm_eps == 1e-6
    assert cfg.rope_theta == pytest.approx(50.0)
    bad = _shape_only_official(64, 1, 96, True, 4)
    bad["rope_embed.periods"] = torch.tensor([0.1, 7.0, 9.0, 100.0])
    with pytest.raises(ValueError, match="periods"):
        config_from_official_state_dict(bad)
