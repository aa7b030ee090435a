"""Where weights come from (engine.hub, engine.config), without network.

A fake hub (folders standing in for repos, a folder standing in for the cache) is injected as the
downloader; huggingface_hub itself is exercised offline against a hand-built HF cache layout.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from engine.cli import main as cli_main
from engine.config import PIPELINE_TYPES, REQUIRED_MODELS, PipelineConfig, SamplerParams
from engine.errors import EngineInputError, WeightsError
from engine.hub import (
    IMAGE_COND_FILES,
    GatedRepoError,
    HfDownloader,
    HubOptions,
    NotInRepo,
    PipelineSource,
    _byte_bar_class,
    download_files,
    gated_message,
    resolve_pipeline,
)
from tests.reference import fixture_params, open_fixture, read_json

MAIN = "microsoft/TRELLIS.2-4B"
OTHER = "acme/TRELLIS-image-large"
DINO = "facebook/dinov3-vitl16-pretrain-lvd1689m"

MODELS = {
    "sparse_structure_flow_model": "ckpts/ss_flow",
    "sparse_structure_decoder": f"{OTHER}/ckpts/ss_dec",  # lives in another repo (spec 2.4)
    "shape_slat_flow_model_512": "ckpts/shape_512",
    "shape_slat_flow_model_1024": "ckpts/shape_1024",
    "shape_slat_decoder": "ckpts/shape_dec",
    "tex_slat_flow_model_512": "ckpts/tex_512",
    "tex_slat_flow_model_1024": "ckpts/tex_1024",
    "tex_slat_decoder": "ckpts/tex_dec",
}


def sampler(steps: int, strength: float) -> dict:
    params = {"steps": steps, "guidance_strength": strength, "guidance_rescale": 0.5}
    params.update(guidance_interval=[0.6, 1.0], rescale_t=3.0)
    return {"name": "FlowEulerGuidanceIntervalSampler", "args": {"sigma_min": 1e-5}, "params": params}


def pipeline_json(image_cond: str = DINO) -> dict:
    return {
        "name": "Trellis2ImageTo3DPipeline",
        "args": {
            "models": MODELS,
            "sparse_structure_sampler": sampler(4, 7.5),
            "shape_slat_sampler": sampler(5, 6.0),
            "tex_slat_sampler": sampler(6, 1.0),
            "shape_slat_normalization": {"mean": [0.1, 0.2], "std": [1.5, 2.5]},
            "tex_slat_normalization": {"mean": [0.3], "std": [0.5]},
            "image_cond_model": {"name": "DinoV3FeatureExtractor", "args": {"model_name": image_cond}},
            "rembg_model": {"name": "BiRefNet", "args": {"model_name": "briaai/RMBG-2.0"}},
            "default_pipeline_type": "1024",
        },
    }


def write_checkpoint(stem: Path, seed: int) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_name(stem.name + ".json").write_text(json.dumps({"name": "Tiny", "args": {"seed": seed}}))
    save_file({"w": torch.full((seed + 1,), float(seed))}, str(stem.with_name(stem.name + ".safetensors")))


def write_pipeline(root: Path, with_cross_repo_copy: bool = False, **json_kwargs) -> Path:
    """The official layout: pipeline.json + ckpts/<stem>.json|.safetensors (the ss decoder elsewhere)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pipeline.json").write_text(json.dumps(pipeline_json(**json_kwargs)))
    for i, (key, entry) in enumerate(MODELS.items()):
        if key != "sparse_structure_decoder" or with_cross_repo_copy:
            write_checkpoint(root / entry, i)
    return root


def write_other_repo(root: Path) -> Path:
    write_checkpoint(root / "ckpts" / "ss_dec", 1)
    return root


def write_dino_repo(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps({"model_type": "dinov3_vit"}))
    (root / "model.safetensors").write_bytes(b"x" * 1000)
    return root


class FakeHub:
    """Repos are folders; the cache is a folder; every call is recorded."""

    def __init__(self, repos: dict[str, Path], cache: Path, offline: bool = False, gated=(), byte_progress=True):
        self.repos, self.cache, self.offline = repos, cache, offline
        self.gated, self.byte_progress = set(gated), byte_progress
        self.calls: list[tuple[str, str, str]] = []

    def fetch(self, repo_id, filename, on_bytes=None):
        self.calls.append(("fetch", repo_id, filename))
        dest = self.cache / repo_id / filename
        if dest.is_file():
            return dest
        if self.offline:
            raise NotInRepo(repo_id, filename, offline=True)
        if repo_id in self.gated:
            raise GatedRepoError(gated_message(repo_id, False))
        src = self.repos.get(repo_id)
        if src is None or not (src / filename).is_file():
            raise NotInRepo(repo_id, filename, offline=False)
        data = (src / filename).read_bytes()
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as f:
            for start in range(0, len(data), 64):
                f.write(data[start : start + 64])
                if on_bytes and self.byte_progress:
                    on_bytes(len(data[start : start + 64]))
        return dest

    def file_sizes(self, repo_id, filenames):
        self.calls.append(("sizes", repo_id, ",".join(filenames)))
        if self.offline:
            return {}
        src = self.repos[repo_id]
        return {f: (src / f).stat().st_size for f in filenames if (src / f).is_file()}

    def check_access(self, repo_id):
        self.calls.append(("access", repo_id, ""))
        if not self.offline and repo_id in self.gated:
            raise GatedRepoError(gated_message(repo_id, False))

    def fetched(self, suffix: str = ".safetensors") -> set[tuple[str, str]]:
        return {(r, f) for kind, r, f in self.calls if kind == "fetch" and f.endswith(suffix)}


@pytest.fixture
def hub_repos(tmp_path):
    return {
        MAIN: write_pipeline(tmp_path / "repos" / "main"),
        OTHER: write_other_repo(tmp_path / "repos" / "other"),
        DINO: write_dino_repo(tmp_path / "repos" / "dino"),
    }


# ----------------------------------------------------------------------------------------------- config


def test_required_models_per_pipeline_type_follow_spec_table():
    assert REQUIRED_MODELS["512"] == (
        "sparse_structure_flow_model",
        "sparse_structure_decoder",
        "shape_slat_flow_model_512",
        "shape_slat_decoder",
        "tex_slat_flow_model_512",
        "tex_slat_decoder",
    )
    assert REQUIRED_MODELS["1024"] == tuple(k.replace("_512", "_1024") for k in REQUIRED_MODELS["512"])
    for cascade in ("1024_cascade", "1536_cascade"):
        assert set(REQUIRED_MODELS[cascade]) == set(MODELS) - {"tex_slat_flow_model_512"}
    assert set(REQUIRED_MODELS) == set(PIPELINE_TYPES)


def test_pipeline_config_reads_every_field_and_defaults():
    data = pipeline_json()
    config = PipelineConfig.from_dict(data)
    assert dict(config.models) == MODELS
    assert config.shape_slat_sampler.params == SamplerParams(5, 3.0, 6.0, 0.5, (0.6, 1.0))
    assert config.sparse_structure_sampler.args["sigma_min"] == 1e-5
    assert config.shape_slat_normalization.std == (1.5, 2.5)
    assert config.tex_slat_normalization.channels == 1
    assert config.image_cond_model.model_name == DINO
    assert config.rembg_model.model_name == "briaai/RMBG-2.0"
    assert config.default_pipeline_type == "1024"
    assert config.low_vram is True  # absent -> True, as the official loader
    del data["args"]["default_pipeline_type"]
    assert PipelineConfig.from_dict(data).default_pipeline_type == "1024_cascade"
    merged = config.tex_slat_sampler.params.merged({"steps": 2})
    assert (merged.steps, merged.guidance_strength) == (2, 1.0)


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda a: a.pop("tex_slat_sampler"), "tex_slat_sampler"),
        (lambda a: a["shape_slat_sampler"]["params"].update(cfg_scale=3), "cfg_scale"),
        (lambda a: a["shape_slat_normalization"].update(std=[1.0]), "differ in length"),
        (lambda a: a.update(default_pipeline_type="2048"), "2048"),
    ],
)
def test_pipeline_config_errors_name_the_problem(edit, needle):
    data = pipeline_json()
    edit(data["args"])
    with pytest.raises(WeightsError, match=needle):
        PipelineConfig.from_dict(data)


def test_unknown_pipeline_type_and_override_are_refused():
    config = PipelineConfig.from_dict(pipeline_json())
    with pytest.raises(EngineInputError, match="1536"):
        config.models_for("1536")
    with pytest.raises(EngineInputError, match="guidance"):
        config.shape_slat_sampler.params.merged({"guidance": 2})


# ----------------------------------------------------------------------------------------------- local folders


@pytest.mark.parametrize("folder", fixture_params("pipeline"))
def test_reference_pipeline_folder_resolves_locally(folder):
    folder = open_fixture(folder)
    raw = read_json(folder / "pipeline.json")["args"]
    for pipeline_type in PIPELINE_TYPES:
        resolved = resolve_pipeline(folder, pipeline_type, image_cond=False)
        assert tuple(resolved.models) == REQUIRED_MODELS[pipeline_type]
        for key, files in resolved.models.items():
            assert files.stem == (folder / raw["models"][key]).resolve()
            assert files.config.is_file() and files.weights.is_file()
    config = resolve_pipeline(folder, image_cond=False).config
    assert config.tex_slat_sampler.params.steps == raw["tex_slat_sampler"]["params"]["steps"]
    assert list(config.shape_slat_normalization.mean) == raw["shape_slat_normalization"]["mean"]


def test_local_folder_with_cross_repo_entry(tmp_path):
    root = write_pipeline(tmp_path / "local", image_cond="dino")
    write_dino_repo(root / "dino")
    hub = FakeHub({OTHER: write_other_repo(tmp_path / "other")}, tmp_path / "cache")
    resolved = resolve_pipeline(root, "512", downloader=hub)

    dec = resolved.models["sparse_structure_decoder"]
    assert dec.origin == f"{OTHER}/ckpts/ss_dec"
    assert dec.weights == tmp_path / "cache" / OTHER / "ckpts" / "ss_dec.safetensors"
    assert dec.stem == tmp_path / "cache" / OTHER / "ckpts" / "ss_dec"
    assert resolved.models["shape_slat_decoder"].stem == root.resolve() / "ckpts" / "shape_dec"
    assert resolved.image_cond == (root / "dino").resolve()  # relative to the pipeline folder
    assert {r for _, r, _ in hub.calls} == {OTHER}  # nothing else went to the hub


def test_local_copy_of_cross_repo_entry_wins(tmp_path):
    """Official order: `path/rel` first; the other repo only when that is missing."""
    root = write_pipeline(tmp_path / "local", with_cross_repo_copy=True)
    hub = FakeHub({}, tmp_path / "cache")
    resolved = resolve_pipeline(root, "1024", downloader=hub, image_cond=False)
    assert resolved.models["sparse_structure_decoder"].stem == root.resolve() / OTHER / "ckpts" / "ss_dec"
    assert hub.calls == []


@pytest.mark.parametrize("suffix", [".json", ".safetensors"])
def test_missing_local_file_is_named(tmp_path, suffix):
    root = write_pipeline(tmp_path / "local", with_cross_repo_copy=True)
    (root / f"ckpts/shape_dec{suffix}").unlink()
    with pytest.raises(WeightsError, match=rf"shape_slat_decoder.*ckpts/shape_dec\{suffix} does not exist"):
        resolve_pipeline(root, "512", downloader=FakeHub({}, tmp_path / "cache"), image_cond=False)


def test_pickle_checkpoint_is_refused(tmp_path):
    root = write_pipeline(tmp_path / "local", with_cross_repo_copy=True)
    (root / "ckpts/tex_512.safetensors").rename(root / "ckpts/tex_512.pt")
    with pytest.raises(WeightsError, match="tex_512.pt is a pickle checkpoint; only .safetensors"):
        resolve_pipeline(root, "512", downloader=FakeHub({}, tmp_path / "cache"), image_cond=False)


def test_image_cond_folder_without_safetensors_is_refused(tmp_path):
    root = write_pipeline(tmp_path / "local", with_cross_repo_copy=True, image_cond="dino")
    write_dino_repo(root / "dino")
    (root / "dino/model.safetensors").rename(root / "dino/pytorch_model.bin")
    with pytest.raises(WeightsError, match="pytorch_model.bin but no model.safetensors"):
        resolve_pipeline(root, "512", downloader=FakeHub({}, tmp_path / "cache"))


def test_sources_that_are_neither_folder_nor_repo(tmp_path):
    with pytest.raises(WeightsError, match="neither an existing folder nor"):
        PipelineSource.parse(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="has no pipeline.json"):
        PipelineSource.parse(tmp_path / "empty")
    assert PipelineSource.parse(MAIN).repo_id == MAIN


# ----------------------------------------------------------------------------------------------- hub sources


@pytest.mark.parametrize("pipeline_type", PIPELINE_TYPES)
def test_hub_source_downloads_only_what_the_type_needs(tmp_path, hub_repos, pipeline_type):
    hub = FakeHub(hub_repos, tmp_path / "cache")
    resolved = resolve_pipeline(MAIN, pipeline_type, downloader=hub)
    expected = {
        (OTHER, "ckpts/ss_dec.safetensors")
        if key == "sparse_structure_decoder"
        else (MAIN, f"{MODELS[key]}.safetensors")
        for key in REQUIRED_MODELS[pipeline_type]
    } | {(DINO, "model.safetensors")}
    assert hub.fetched() == expected
    assert resolved.models["sparse_structure_decoder"].origin == f"{OTHER}/ckpts/ss_dec"
    assert resolved.image_cond == tmp_path / "cache" / DINO
    for files in resolved.models.values():
        assert (
            files.config.read_text()
            == (hub_repos[files.origin.split("/ckpts")[0]] / "ckpts").joinpath(files.config.name).read_text()
        )


def test_default_pipeline_type_comes_from_pipeline_json(tmp_path, hub_repos):
    resolved = resolve_pipeline(MAIN, downloader=FakeHub(hub_repos, tmp_path / "cache"), image_cond=False)
    assert resolved.pipeline_type == "1024"


def test_cross_repo_entry_missing_everywhere(tmp_path, hub_repos):
    (hub_repos[OTHER] / "ckpts/ss_dec.json").unlink()
    with pytest.raises(WeightsError, match=f"neither under {MAIN} nor in the repo {OTHER}"):
        resolve_pipeline(MAIN, "512", downloader=FakeHub(hub_repos, tmp_path / "cache"))


def test_missing_file_in_hub_repo_is_named(tmp_path, hub_repos):
    (hub_repos[MAIN] / "ckpts/tex_1024.json").unlink()
    with pytest.raises(WeightsError, match=r"'ckpts/tex_1024' for tex_slat_flow_model_1024.*not in that repo"):
        resolve_pipeline(MAIN, "1024", downloader=FakeHub(hub_repos, tmp_path / "cache"))


def test_offline_missing_weights_name_the_download_command(tmp_path, hub_repos):
    hub = FakeHub(hub_repos, tmp_path / "cache", offline=True)
    with pytest.raises(WeightsError) as info:
        resolve_pipeline(MAIN, "1024", downloader=hub, options=HubOptions(cache_dir=tmp_path / "c"))
    message = str(info.value)
    assert f"python -m engine download {MAIN} --pipeline-type 1024 --cache-dir {tmp_path / 'c'}" in message
    assert "offline" in message


def test_offline_after_download_uses_the_cache_only(tmp_path, hub_repos):
    online = FakeHub(hub_repos, tmp_path / "cache")
    first = resolve_pipeline(MAIN, "1024_cascade", downloader=online)
    offline = FakeHub({}, tmp_path / "cache", offline=True)
    second = resolve_pipeline(MAIN, "1024_cascade", downloader=offline)
    assert {k: v.weights for k, v in first.models.items()} == {k: v.weights for k, v in second.models.items()}
    assert second.image_cond == first.image_cond


def test_gated_repo_is_reported_before_any_large_download(tmp_path, hub_repos):
    hub = FakeHub(hub_repos, tmp_path / "cache", gated={DINO})
    with pytest.raises(GatedRepoError) as info:
        resolve_pipeline(MAIN, "512", downloader=hub)
    message = str(info.value)
    assert f"https://huggingface.co/{DINO}" in message
    assert "Preferences > HF token" in message and "token=" in message
    assert hub.fetched() == set()  # no .safetensors was fetched before the check


def test_hf_downloader_translates_hub_errors(monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub import errors as hf

    def raising(cls):
        def auth_check(self, repo_id, **kwargs):
            exc = cls.__new__(cls)  # built without an HTTP response: only the type matters here
            Exception.__init__(exc, "server says no")
            raise exc

        return auth_check

    downloader = HfDownloader(HubOptions(token="hf_x"))
    monkeypatch.setattr(HfApi, "auth_check", raising(hf.GatedRepoError))
    with pytest.raises(GatedRepoError, match="token in use has not been granted access"):
        downloader.check_access(DINO)
    monkeypatch.setattr(HfApi, "auth_check", raising(hf.RepositoryNotFoundError))
    with pytest.raises(WeightsError, match="not found on the Hugging Face Hub"):
        downloader.check_access("acme/nothing")
    HfDownloader(HubOptions(offline=True)).check_access(DINO)  # offline: no call at all


def test_hf_downloader_reads_a_hugging_face_cache_offline(tmp_path, hub_repos):
    """The real huggingface_hub, offline, against the HF cache layout (refs/main -> snapshots/<commit>)."""
    cache = tmp_path / "hf-cache"
    for repo, src in hub_repos.items():
        folder = cache / f"models--{repo.replace('/', '--')}"
        commit = "0123456789abcdef0123456789abcdef01234567"
        (folder / "refs").mkdir(parents=True)
        (folder / "refs" / "main").write_text(commit)
        for file in src.rglob("*"):
            if file.is_file():
                target = folder / "snapshots" / commit / file.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(file.read_bytes())
    options = HubOptions(cache_dir=cache, offline=True)
    resolved = resolve_pipeline(MAIN, "512", options=options)
    assert (
        resolved.models["sparse_structure_decoder"].weights.read_bytes()
        == (hub_repos[OTHER] / "ckpts/ss_dec.safetensors").read_bytes()
    )
    assert (resolved.image_cond / "config.json").is_file()
    with pytest.raises(WeightsError, match=f"python -m engine download {MAIN} --pipeline-type 512"):
        resolve_pipeline(MAIN, "512", options=HubOptions(cache_dir=tmp_path / "empty", offline=True))


# ----------------------------------------------------------------------------------------------- progress


@pytest.mark.parametrize("byte_progress", [True, False])
def test_progress_reports_bytes_per_file_and_overall(tmp_path, hub_repos, byte_progress):
    hub = FakeHub(hub_repos, tmp_path / "cache", byte_progress=byte_progress)
    files = [(MAIN, "ckpts/ss_flow.safetensors"), (OTHER, "ckpts/ss_dec.safetensors")]
    files += [(DINO, name) for name in IMAGE_COND_FILES]
    sizes = [(hub_repos[r] / f).stat().st_size for r, f in files]
    events = []
    paths = download_files(hub, files, events.append)

    assert [p.read_bytes() for p in paths] == [(hub_repos[r] / f).read_bytes() for r, f in files]
    assert all(e.overall_total == sum(sizes) for e in events)
    assert [e.overall_done for e in events] == sorted(e.overall_done for e in events)
    finished = [e for e in events if e.finished]
    assert [(e.file, e.file_done, e.file_total) for e in finished] == [
        (f"{r}/{f}", s, s) for (r, f), s in zip(files, sizes, strict=True)
    ]
    assert (finished[-1].overall_done, finished[-1].files_done, finished[-1].files_total) == (sum(sizes), 4, 4)
    assert (len(events) > len(files)) == byte_progress  # chunk reports in between when the hub gives them
    kinds = [kind for kind, _, _ in hub.calls]
    assert kinds.index("fetch") > max(i for i, k in enumerate(kinds) if k == "access")


def test_byte_bar_counts_written_bytes_once():
    """The tqdm stand-in handed to hf_hub_download: resumed part + updates, network bytes ignored."""
    got = []
    bar_class = _byte_bar_class(got.append)
    with bar_class(total=100, initial=30, desc="x", unit="B", unit_scale=True, position=1, leave=True) as bar:
        bar.update(50)
        bar.update_transfer(40)
        bar.set_postfix_str("fast", refresh=False)
        bar.update(20)
    assert got == [30, 50, 20]


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_download_lists_resolved_files(tmp_path):
    root = write_pipeline(tmp_path / "local", with_cross_repo_copy=True)
    out, err = io.StringIO(), io.StringIO()
    assert cli_main(["download", str(root), "--pipeline-type", "512", "--no-image-cond"], out, err) == 0
    text = out.getvalue()
    assert "type 512" in text and "tex_slat_flow_model_512" in text and "tex_slat_flow_model_1024" not in text


def test_cli_offline_error_names_the_command(tmp_path):
    token = tmp_path / "token"
    token.write_text("hf_secret\n")
    out, err = io.StringIO(), io.StringIO()
    argv = ["download", "--offline", "--cache-dir", str(tmp_path), "--token-file", str(token)]
    assert cli_main(argv, out, err) == 1
    assert f"python -m engine download {MAIN} --cache-dir {tmp_path}" in err.getvalue()
    assert "hf_secret" not in err.getvalue()
    (tmp_path / "empty").write_text("")
    assert cli_main(["download", "--token-file", str(tmp_path / "empty")], out, err) == 1
    assert "token file" in err.getvalue()
