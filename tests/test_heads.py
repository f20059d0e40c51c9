"""Head modules (SPEC §4): AGRA / ISMS / fusion / release-checkpoint import."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geoalign_store.method import (AGRA, ISMS, agra_dim_error, export_state_dict, fuse,
                                   isms_losses, load_release_agra, load_release_isms,
                                   read_release_checkpoint, unwrap_state_dict)

C = 160  # 2C = 320 = 20 chunks of 16 dims, 4 heads of 4


# ----------------------------------------------------------------- release-style reference modules
# Written from the release's description: nn.MultiheadAttention per expert, Python loop over the
# top-k slots x experts with boolean masks.  Same parameter names as the release.
class RefRMSNorm(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.g = nn.Parameter(torch.ones(d))
        self.d = d

    def forward(self, x):
        return x / (torch.norm(x, dim=-1, keepdim=True) * self.d ** -0.5 + 1e-8) * self.g


class RefLS(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.gamma = nn.Parameter(1e-4 * torch.ones(d))

    def forward(self, x):
        return x * self.gamma


class RefFFN(nn.Module):
    def __init__(self, d, p):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(inplace=True), nn.Dropout(p),
                                 nn.Linear(4 * d, d), nn.Dropout(p))

    def forward(self, x):
        return self.net(x)


class RefExpert(nn.Module):
    def __init__(self, width, chunks=20, heads=4, p=0.1):
        super().__init__()
        self.chunks, d = chunks, width // chunks
        self.pos_embed = nn.Parameter(torch.zeros(1, chunks, d))
        self.norm1 = RefRMSNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, dropout=p, batch_first=True)
        self.ls1 = RefLS(d)
        self.norm2 = RefRMSNorm(d)
        self.ffn = RefFFN(d, p)
        self.ls2 = RefLS(d)
        self.proj = nn.Linear(width, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        b, w = x.shape
        s = x.view(b, self.chunks, -1) + self.pos_embed
        y = self.norm1(s)
        s = s + self.ls1(self.attn(y, y, y)[0])
        s = s + self.ls2(self.ffn(self.norm2(s)))
        return self.proj(s.reshape(b, w))


class RefMoE(nn.Module):
    def __init__(self, width, n_experts=4, k=2, p=0.1):
        super().__init__()
        self.k, self.E, self.width = k, n_experts, width
        self.gate = nn.Sequential(nn.Linear(width, 4 * n_experts), nn.Tanh(), nn.Linear(4 * n_experts, n_experts))
        self.experts = nn.ModuleList(RefExpert(width, p=p) for _ in range(n_experts))

    def forward(self, x):
        scores = F.softmax(self.gate(x), dim=-1)
        tw, ti = torch.topk(scores, self.k, dim=-1)
        tw = tw / (tw.sum(dim=-1, keepdim=True) + 1e-6)
        out = torch.zeros(x.shape[0], self.width)
        for i in range(self.k):
            idx, w = ti[:, i], tw[:, i].unsqueeze(1)
            for e in range(self.E):
                m = idx == e
                if m.sum() > 0:
                    out[m] += w[m] * self.experts[e](x[m])
        return out


class RefAGRA(nn.Module):
    def __init__(self, dim, p=0.1):
        super().__init__()
        self.shared_enc = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LayerNorm(2 * dim))
        self.moe_layer = RefMoE(2 * dim, p=p)
        self.dec1 = nn.Sequential(nn.Linear(2 * dim, dim), nn.BatchNorm1d(dim))
        self.dec2 = self.dec1

    def embed(self, x, view):
        base = self.shared_enc(x)
        return F.normalize(base + self.moe_layer(base) if view == "drone" else base, dim=-1)


class RefISMS(nn.Module):
    def __init__(self, in_dim, latent):
        super().__init__()
        self.encoder = nn.Linear(in_dim, latent, bias=False)
        self.bn_whiten = nn.BatchNorm1d(latent, affine=True)
        self.decoder = nn.Linear(latent, in_dim, bias=True)

    def forward(self, x):
        z = self.bn_whiten(self.encoder(x))
        return z, self.decoder(z)


def _randomise(module, seed=0, scale=0.1):
    """Perturb every parameter and BatchNorm statistic (trained-looking weights, non-zero proj)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in module.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
        for name, b in module.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif name.endswith("num_batches_tracked"):
                b.fill_(300)
        for n, p in module.named_parameters():  # make the transformer block matter
            if n.endswith("gamma"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.5)
    return module


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and immune to a busy machine's OpenMP stalls."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def x():
    return torch.randn(257, C, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------- AGRA
def test_agra_keys_and_shapes_match_release():
    ref, ours = RefAGRA(C), AGRA(C)
    rs, os_ = ref.state_dict(), ours.state_dict()
    assert list(rs) == list(os_)
    assert {k: tuple(v.shape) for k, v in rs.items()} == {k: tuple(v.shape) for k, v in os_.items()}
    assert any(k.startswith("dec2.") for k in os_) and ours.dec1 is ours.dec2
    for k in ("moe_layer.experts.3.attn.in_proj_weight", "moe_layer.experts.0.ls2.gamma",
              "moe_layer.experts.1.norm1.g", "moe_layer.experts.2.ffn.net.3.bias", "moe_layer.gate.2.weight"):
        assert k in os_
    assert os_["moe_layer.experts.0.pos_embed"].shape == (1, 20, 2 * C // 20)


def test_agra_output_shapes(x):
    m = AGRA(C).eval()
    with torch.no_grad():
        zs = m.encode_satellite(x)
        zd, aux = m.encode_drone(x)
        assert zs.shape == zd.shape == (len(x), 2 * C) and aux.ndim == 0
        assert m.decode(zd).shape == (len(x), C)
        e = m.embed(x, "drone", batch_size=100)
        assert e.shape == (len(x), 2 * C)
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(x)))
        torch.testing.assert_close(e, m.embed(x, "drone"))  # chunking is exact
    with pytest.raises(ValueError, match="view"):
        m.embed(x, "street")


def test_agra_identity_at_init(x):
    m = AGRA(C).eval()
    with torch.no_grad():
        assert torch.equal(m.encode_drone(x)[0], m.encode_satellite(x))
        assert torch.equal(m.embed(x, "drone"), m.embed(x, "satellite"))


def test_agra_bad_dim_message():
    assert agra_dim_error(1280) is None and agra_dim_error(C) is None
    with pytest.raises(ValueError, match=r"multiple of 40 \(nearest: 1000, 1040\)"):
        AGRA(1010)
    AGRA(40, n_chunks=10, n_attn_heads=2)  # 80 = 10 x 8, 8 = 2 x 4


def test_fast_experts_match_loop_reference(x):
    m = _randomise(AGRA(C)).eval()
    ref = RefAGRA(C).eval()
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        delta = m.moe_layer(m.shared_enc(x))[0]
        assert delta.abs().max() > 0.1  # the experts really contribute
        torch.testing.assert_close(delta, ref.moe_layer(ref.shared_enc(x)), atol=1e-5, rtol=1e-5)
        for view in ("drone", "satellite"):
            torch.testing.assert_close(m.embed(x, view), ref.embed(x, view), atol=1e-5, rtol=1e-5)


def test_fast_experts_gradients_match_reference(x):
    """Training mode without dropout/noise: same loss and same gradients as the loop reference."""
    m = _randomise(AGRA(C, dropout=0.0, noise_std=0.0)).train()
    ref = RefAGRA(C, p=0.0).train()
    ref.load_state_dict(m.state_dict())
    tgt = torch.randn(len(x), 2 * C, generator=torch.Generator().manual_seed(3))
    (m.encode_drone(x)[0] * tgt).sum().backward()
    base = ref.shared_enc(x)
    ((base + ref.moe_layer(base)) * tgt).sum().backward()
    rp = dict(ref.named_parameters())
    for n, p in m.named_parameters():
        if n.startswith("dec"):
            continue
        torch.testing.assert_close(p.grad, rp[n].grad, atol=1e-4, rtol=1e-4, msg=n)


def test_gate_topk_renormalised(x):
    m = _randomise(AGRA(C)).eval()
    base = m.shared_enc(x).detach()
    scores, idx, w = m.moe_layer.route(base)
    torch.testing.assert_close(scores.sum(-1), torch.ones(len(x)))
    assert idx.shape == w.shape == (len(x), 2)
    torch.testing.assert_close(w.sum(-1), torch.ones(len(x)), atol=1e-5, rtol=0)
    top = scores.topk(2, dim=-1)
    assert torch.equal(idx, top.indices)
    torch.testing.assert_close(w, top.values / (top.values.sum(-1, keepdim=True) + 1e-6))  # release's eps
    assert (w[:, 0] >= w[:, 1]).all()
    # noisy gating only in training
    s2 = m.moe_layer.route(base)[0]
    assert torch.equal(scores, s2)
    m.train()
    torch.manual_seed(0)
    s3 = m.moe_layer.route(base)[0]
    assert not torch.allclose(scores, s3)


def test_aux_loss_finite_and_differentiable(x):
    m = AGRA(C).train()
    z, aux = m.encode_drone(x)
    assert torch.isfinite(aux) and aux.item() >= 0
    # release formula: E * sum(importance * load) / B^2, = top_k when perfectly balanced
    assert 1.0 < aux.item() < 8.0
    (z.pow(2).mean() + aux).backward()
    assert m.moe_layer.gate[0].weight.grad.abs().sum() > 0
    assert m.moe_layer.experts[0].proj.weight.grad.abs().sum() > 0
    assert m.shared_enc[0].weight.grad.abs().sum() > 0


# ----------------------------------------------------------------- ISMS and fusion
def test_isms_shapes_init_and_losses():
    m = ISMS(2 * C, C)
    w = m.encoder.weight
    torch.testing.assert_close(w @ w.T, torch.eye(C), atol=1e-5, rtol=0)
    assert m.encoder.bias is None and torch.equal(m.bn_whiten.weight, torch.ones(C))
    assert torch.equal(m.bn_whiten.bias, torch.zeros(C)) and torch.equal(m.decoder.bias, torch.zeros(2 * C))
    assert set(m.state_dict()) == {"encoder.weight", "bn_whiten.weight", "bn_whiten.bias",
                                   "bn_whiten.running_mean", "bn_whiten.running_var",
                                   "bn_whiten.num_batches_tracked", "decoder.weight", "decoder.bias"}
    xb = torch.randn(64, 2 * C)
    z, rec = m.train()(xb)
    assert z.shape == (64, C) and rec.shape == (64, 2 * C)
    losses = isms_losses(xb, z, rec, m)
    assert set(losses) == {"mse", "decorrelation", "orthogonality"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    assert m.encoder.weight.grad.abs().sum() > 0 and m.decoder.weight.grad.abs().sum() > 0
    m.eval()
    e = m.embed(xb)
    torch.testing.assert_close(e, F.normalize(m(xb)[0], dim=-1))
    # orthogonality term: zero for orthonormal encoder rows and decoder columns
    with torch.no_grad():
        m.decoder.weight.copy_(m.encoder.weight.T)
    assert isms_losses(xb, z, rec, m)["orthogonality"].item() < 1e-8


def test_fuse_is_weighted_cosine():
    g = torch.Generator().manual_seed(0)
    a1, a2 = torch.randn(5, 2 * C, generator=g), torch.randn(5, C, generator=g)
    b1, b2 = torch.randn(7, 2 * C, generator=g), torch.randn(7, C, generator=g)
    cos1 = F.normalize(a1, dim=-1) @ F.normalize(b1, dim=-1).T
    cos2 = F.normalize(a2, dim=-1) @ F.normalize(b2, dim=-1).T
    fa, fb = fuse(a1, a2), fuse(b1, b2)
    assert fa.shape == (5, 3 * C)
    torch.testing.assert_close(fa @ fb.T, 0.5 * cos1 + 0.5 * cos2, atol=1e-6, rtol=0)
    torch.testing.assert_close(fuse(a1, a2, 0.3) @ fuse(b1, b2, 0.3).T, 0.3 * cos1 + 0.7 * cos2, atol=1e-6, rtol=0)
    torch.testing.assert_close(fuse(a1, a2, 1.0)[:, :2 * C], F.normalize(a1, dim=-1))
    with pytest.raises(ValueError):
        fuse(a1, a2, 1.5)


# ----------------------------------------------------------------- release checkpoints
def test_release_agra_roundtrip(tmp_path, x):
    ref = _randomise(RefAGRA(C), seed=5).eval()
    sd = ref.state_dict()
    for nested, name in ((True, "300_param.t"), (False, "flat.t")):
        torch.save({"model": sd} if nested else sd, tmp_path / name)
        m = load_release_agra(read_release_checkpoint(tmp_path / name), C)
        assert not m.training
        with torch.no_grad():
            for view in ("drone", "satellite"):
                torch.testing.assert_close(m.embed(x, view), ref.embed(x, view), atol=1e-6, rtol=0)
            z = m.encode_satellite(x)
            torch.testing.assert_close(m.decode(z), ref.dec1(z), atol=1e-6, rtol=0)
    # our own export (no dec2 aliases) is safetensors-friendly and loads back identically
    from safetensors.torch import load_file, save_file
    save_file(export_state_dict(m), tmp_path / "agra.safetensors")
    m2 = load_release_agra(load_file(tmp_path / "agra.safetensors"), C)
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_release_isms_roundtrip(tmp_path):
    ref = _randomise(RefISMS(2 * C, C), seed=6).eval()
    torch.save(ref.state_dict(), tmp_path / "isms_model_26_28.pth")
    m = load_release_isms(read_release_checkpoint(tmp_path / "isms_model_26_28.pth"), dim=C)
    xb = torch.randn(50, 2 * C)
    with torch.no_grad():
        torch.testing.assert_close(m.embed(xb), F.normalize(ref(xb)[0], dim=-1), atol=1e-6, rtol=0)
    assert load_release_isms(ref.state_dict()).latent_dim == C  # dims inferred
    with pytest.raises(ValueError, match="mis-shaped.*encoder.weight"):
        load_release_isms(ref.state_dict(), dim=C // 2)


def test_bad_agra_checkpoints_refused():
    sd = RefAGRA(C).state_dict()
    with pytest.raises(ValueError, match=f"C={C}.*features have C={2 * C}"):
        load_release_agra(sd, 2 * C)
    bad = dict(sd)
    del bad["moe_layer.experts.2.ls1.gamma"]
    bad["moe_layer.experts.0.norm1.g"] = torch.ones(7)
    bad["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as ei:
        load_release_agra(bad, C)
    msg = str(ei.value)
    assert "missing keys (1): moe_layer.experts.2.ls1.gamma" in msg
    assert "unexpected keys (1): extra.weight" in msg
    assert "moe_layer.experts.0.norm1.g: got (7,), expected (16,)" in msg
    bad = dict(sd)
    bad["dec2.0.bias"] = bad["dec2.0.bias"] + 1
    with pytest.raises(ValueError, match="dec2.* must duplicate dec1"):
        load_release_agra(bad, C)
    no_dec2 = {k: v for k, v in sd.items() if not k.startswith("dec2.")}
    load_release_agra(no_dec2, C)  # aliases are optional
    bad = dict(sd)
    bad["shared_enc.1.weight"] = torch.full_like(bad["shared_enc.1.weight"], float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        load_release_agra(bad, C)


class NotAStateDict:
    def __init__(self):
        self.w = torch.zeros(3)


def test_non_state_dict_files_refused(tmp_path):
    torch.save(NotAStateDict(), tmp_path / "obj.t")  # arbitrary pickled object
    with pytest.raises(ValueError, match="pickles a Python object.*never unpickled"):
        read_release_checkpoint(tmp_path / "obj.t")
    torch.save(RefISMS(8, 4), tmp_path / "module.t")  # a whole nn.Module, not its state dict
    with pytest.raises(ValueError, match="pickles a Python object.*never unpickled"):
        read_release_checkpoint(tmp_path / "module.t")
    torch.save([torch.zeros(2)], tmp_path / "list.t")
    with pytest.raises(ValueError, match="expected a state dict.*got list"):
        read_release_checkpoint(tmp_path / "list.t")
    torch.save({"epoch": 3, "model": "oops"}, tmp_path / "strs.t")
    with pytest.raises(ValueError, match="not a state dict"):
        read_release_checkpoint(tmp_path / "strs.t")
    (tmp_path / "junk.t").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a torch checkpoint of tensors"):
        read_release_checkpoint(tmp_path / "junk.t")
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(ValueError):
        read_release_checkpoint(tmp_path / "raw.pkl")
    with pytest.raises(ValueError, match="expected a state dict"):
        unwrap_state_dict({})
