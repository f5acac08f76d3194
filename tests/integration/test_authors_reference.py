"""Our networks are the authors': their checkpoints import and reproduce what their code computed.

The judge is ``../shared/data/authors-reference/`` (written by the authors' own classes at commit
42bcf2e): two checkpoints in their format, the tensors their EMA networks computed for stored
inputs, and key/shape manifests of their four released configurations. Every stored output is
reproduced in float32 on the CPU within 1e-5 of the tensor's largest magnitude.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors import safe_open

from alae_ray.core import authors
from alae_ray.core.config import load_config
from alae_ray.core.model import ALAE

FIXTURES = ("small_style", "fused_style")
# manifest -> our preset (their four released configurations) or None (built from the fixture's YAML)
MANIFESTS = {"ffhq": "ffhq1024", "celeba-hq256": "celebahq256", "bedroom": "bedroom256", "celeba": "celeba128",
             "small_style": None, "fused_style": None}
REL_TOL = 1e-5


@pytest.fixture(scope="module")
def ref(shared_data):
    return shared_data / "authors-reference"


def imported(ref, name: str, suffix: str = "_s") -> tuple[ALAE, dict]:
    cfg = authors.config_from_authors(ref / f"{name}.yaml")
    model = ALAE(cfg.model)
    model.load_state_dict(authors.convert(authors.load_pth(ref / f"{name}.pth")["models"], cfg.model, suffix))
    return model.eval().requires_grad_(False), cfg


def stored(ref, name: str) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(ref / f"{name}_io.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["fixture"])


def level_blend(key: str) -> tuple[int, float]:
    lod, blend = re.search(r"lod(\d+)\.blend([\d.]+?)\.(?:out|in|Z|score|out_full)", key).groups()
    return int(lod), float(blend)


def compute(model: ALAE, io: dict[str, torch.Tensor], meta: dict, key: str) -> torch.Tensor:
    """What our model gives for the stored tensor ``key`` (the README of the fixture says what each is)."""
    S = io["G.styles"]
    psi, cutoff, cut5, crossover = (float(meta["trunc_psi"]), int(meta["trunc_cutoff"]),
                                    int(meta.get("trunc_cutoff_extra", 0)), int(meta.get("mix_crossover", 0)))
    rows = lambda w: w[:, None].expand(-1, S.shape[1], -1)  # noqa: E731  their [N, 2*LAYER_COUNT, L]
    if key == "F.z":
        return io[key]  # an input
    if key in ("F.w", "G.styles"):
        return rows(model.F(io["F.z"]))
    if key == "dlatent_avg":
        return model.w_avg
    if key == "E.x":
        return io[key]
    if key.startswith("E.") and key.endswith(".in"):
        x, (lod, blend) = io["E.x"], level_blend(key)
        while x.shape[-1] > 4 * 2**lod:
            x = torch.nn.functional.avg_pool2d(x, 2)
        if blend < 1:  # as their training loop fades reals in
            x = x * blend + torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(x, 2), scale_factor=2) * (1 - blend)
        return x
    if key.startswith("E.") and key.endswith(".Z"):
        return model.encode(io[key[:-2] + ".in"], *level_blend(key))[:, None]
    if key.startswith("D.") and key.endswith(".score"):
        return model.D(io["E" + key[1:-6] + ".Z"][:, 0])
    if key.startswith("D.") and key.endswith(".out_full"):
        x = io["E" + key[1:-9] + ".Z"]
        for layer in model.D.map_blocks:
            x = layer(x)
        return x
    if re.fullmatch(r"G\.lod\d+\.blend[\d.]+\.out", key):
        return model.decode(S, *level_blend(key), noise=False)
    if key == "G.trunc.styles":
        return model.truncate(S, psi, cutoff)
    if key == "G.trunc.lod3.blend1.out":
        return model.decode(model.truncate(S, psi, cutoff), 3, 1.0, noise=False)
    if key == "G.trunc_cut5.styles":
        return model.truncate(S, psi, cut5)
    if key == "G.trunc_cut5.lod3.blend1.out":
        return model.decode(model.truncate(S, psi, cut5), 3, 1.0, noise=False)
    if key == "G.mix.z2":
        return io[key]
    if key == "G.mix.w2":
        return rows(model.F(io["G.mix.z2"]))
    if key == "G.mix.styles":
        return model.mix(S, model.F(io["G.mix.z2"]), crossover)
    if key == "G.mix.lod3.blend1.out":
        return model.decode(model.mix(S, model.F(io["G.mix.z2"]), crossover), 3, 1.0, noise=False)
    if key.startswith("G.noise.") and ".block" in key:
        return io[key]  # the noise images their decoder drew: inputs of the next key
    if key == "G.noise.lod3.blend1.out":
        images = [io[f"G.noise.lod3.blend1.block{i}.noise{k}"] for i in range(4) for k in (1, 2)]
        return model.decode(S, 3, 1.0, noise=True, noise_images=images)
    if key == "R.lod3.blend1.out":
        return model.decode(rows(io["E.lod3.blend1.Z"][:, 0]), 3, 1.0, noise=False)
    raise KeyError(f"no computation for stored tensor {key!r}")


@pytest.mark.parametrize("name", FIXTURES)
def test_every_stored_output_is_reproduced(ref, name):
    torch.set_num_threads(1)
    model, _ = imported(ref, name)
    io, meta = stored(ref, name)
    worst = {}
    with torch.no_grad():
        for key, want in io.items():
            got = compute(model, io, meta, key)
            assert got.shape == want.shape, key
            scale = want.abs().max().item()
            err = (got - want).abs().max().item()
            assert err <= REL_TOL * scale, f"{name} {key}: max |difference| {err:.3g} > {REL_TOL} x {scale:.3g}"
            worst[key] = err / scale
    assert len(worst) == len(io) >= (58 if name == "small_style" else 15)
    # the outputs are not trivially small: the largest reaches the magnitudes the README describes
    assert max(t.abs().max().item() for t in io.values()) > 2.0


def test_every_parameter_matters(ref):
    """A perturbed parameter tensor changes some stored output: nothing imported is ignored."""
    model, _ = imported(ref, "small_style")
    io, meta = stored(ref, "small_style")
    keys = [k for k in io if k.endswith((".out", ".Z", ".score", "F.w"))]
    with torch.no_grad():
        base = {k: compute(model, io, meta, k).clone() for k in keys}
        for name, p in model.named_parameters():
            p.add_(0.1)
            moved = any(not torch.allclose(compute(model, io, meta, k), base[k], atol=0, rtol=1e-6) for k in keys)
            p.sub_(0.1)
            assert moved, f"{name} has no effect on any stored output"


def test_the_training_networks_import_too(ref):
    """model.* comes from their training networks, which differ from the EMA copies."""
    ema, cfg = imported(ref, "small_style", "_s")
    raw, _ = imported(ref, "small_style", "")
    z = torch.randn(2, cfg.model.latent_size)
    assert not torch.allclose(ema.F(z), raw.F(z))
    assert torch.equal(ema.w_avg, raw.w_avg)  # one running average in their checkpoints


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_manifest_keys_and_shapes(ref, manifest):
    """For each of their configurations every key maps, with its shape, none missing, none left over;
    our run-time coefficients are their equalized-lr coefficients; the parameter counts are theirs."""
    data = json.loads((ref / "manifests" / f"{manifest}.json").read_text())
    preset = MANIFESTS[manifest]
    cfg = (load_config(preset) if preset else authors.config_from_authors(ref / f"{manifest}.yaml")).model
    kw = data["model_kwargs"]
    assert (cfg.latent_size, cfg.num_levels, cfg.start_channels, cfg.max_channels, cfg.mapping_layers, cfg.channels) == \
        (kw["latent_size"], kw["layer_count"], kw["startf"], kw["maxf"], kw["mapping_layers"], kw["channels"])
    ours = ALAE(cfg).state_dict()
    mapped = {f"{p.network}/{p.theirs}": authors.their_shape(p, ours[p.ours].shape) for p in authors.key_pairs(cfg)}
    mapped.update({f"{net}/{key}": None for net, key in authors.blur_keys(cfg)})  # fixed filters, checked on import
    for ema in (False, True):  # the training networks, then the EMA copies (*_s); one dlatent_avg
        theirs = {}
        for key, shape in data["models"].items():
            net, rest = key.split("/", 1)
            if net.endswith("_s") == ema and not (ema and net == "dlatent_avg"):
                theirs[f"{net.removesuffix('_s')}/{rest}"] = tuple(shape)
        want = {k: v for k, v in mapped.items() if not (ema and k.startswith("dlatent_avg/"))}
        assert set(theirs) == set(want), (set(theirs) ^ set(want))
        for k, shape in want.items():
            if shape is not None:
                assert theirs[k] == shape, k
    coefs = authors.lr_equalization_coefs(cfg)
    for key, coef in data["lr_equalization_coef"].items():
        net, rest = key.split("/", 1)
        assert coefs[f"{net.removesuffix('_s')}/{rest}"] == pytest.approx(coef, rel=1e-9), key
    model = ALAE(cfg)
    for ours, theirs in authors.NETWORKS.items():
        assert sum(p.numel() for p in getattr(model, ours).parameters()) == data["counts"][theirs]["parameters"]


def test_presets_carry_their_training_settings(ref):
    data = json.loads((ref / "manifests" / "ffhq.json").read_text())
    cfg = load_config("ffhq1024")
    assert cfg.train.style_mixing_prob == data["model_kwargs"]["style_mixing_prob"]
    assert cfg.train.w_avg_beta == data["model_kwargs"]["dlatent_avg_beta"]
    assert (cfg.train.truncation_psi, cfg.train.truncation_cutoff) == \
        (data["ema_model_kwargs"]["truncation_psi"], data["ema_model_kwargs"]["truncation_cutoff"])
    assert cfg.model.mapping_lrmul == cfg.model.d_lrmul == 0.1


def test_their_config_files(ref, tmp_path):
    cfg = authors.config_from_authors(ref / "fused_style.yaml")
    assert (cfg.name, cfg.model.max_resolution, cfg.model.latent_size, cfg.model.start_channels) == ("fused_style", 128, 8, 4)
    assert cfg.model.mapping_layers == 8 and cfg.train.truncation_cutoff == 8
    # celeba.yaml's "202576 - 182637" (which old yacs evaluated) and the defaults under a file's keys
    (tmp_path / "celeba.yaml").write_text("NAME: celeba\nDATASET:\n  SIZE: 182637\n  SIZE_TEST: 202576 - 182637\n"
                                          "MODEL:\n  LATENT_SPACE_SIZE: 256\n  LAYER_COUNT: 6\n  MAX_CHANNEL_COUNT: 256\n"
                                          "  START_CHANNEL_COUNT: 64\n  MAPPING_LAYERS: 8\nTRAIN:\n  EPOCHS_PER_LOD: 6\n"
                                          "  TRAIN_EPOCHS: 80\n  LEARNING_RATES: [0.0015, 0.0015, 0.0015, 0.0015, 0.0015, 0.0015, 0.002]\n")
    ours = authors.config_from_authors(tmp_path / "celeba.yaml")
    assert ours.model == load_config("celeba128").model
    assert ours.schedule.fade_kimg == pytest.approx(547.911) and ours.schedule.final_kimg == pytest.approx(8036.028)
    (tmp_path / "z.yaml").write_text("MODEL:\n  Z_REGRESSION: true\n")
    with pytest.raises(ValueError, match="Z_REGRESSION"):
        authors.config_from_authors(tmp_path / "z.yaml")
    (tmp_path / "typo.yaml").write_text("MODEL:\n  LATENT_SIZE: 3\n")
    with pytest.raises(ValueError, match="unknown MODEL key.*LATENT_SIZE"):
        authors.config_from_authors(tmp_path / "typo.yaml")
