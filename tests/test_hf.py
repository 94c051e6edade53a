"""Hugging Face transformers image models (``hf:NAME``): built here from tiny configs with random
weights and saved as folders; checked against transformers' own preprocessing and forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import filterviz
from filterviz.cli import main
from filterviz.errors import FilterVizError

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory):
    """A tiny ViT classifier with named labels and its image processor, saved as a folder."""
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2,
                                    num_attention_heads=2, intermediate_size=48, num_labels=3,
                                    id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2})
    model = transformers.ViTForImageClassification(config).eval()
    folder = tmp_path_factory.mktemp("hf") / "tiny-vit"
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return folder


def _reference_logits(folder, image: np.ndarray) -> torch.Tensor:
    """transformers' own preprocessing and forward pass of a uint8 image (H, W, 3)."""
    processor = transformers.AutoImageProcessor.from_pretrained(folder)
    model = transformers.AutoModelForImageClassification.from_pretrained(folder).eval()
    inputs = processor(images=image, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits[0]


def test_an_hf_folder_loads_with_its_processors_spec_and_labels(vit_folder):
    model = filterviz.load_model(f"hf:{vit_folder}", device="cpu")
    assert model.categories == ("cat", "dog", "fox")
    assert model.spec.default_size == 32 and model.spec.fixed_size == (32, 32)  # position embeddings: one size
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    pixels = torch.as_tensor(image).permute(2, 0, 1)[None].double().to(model.dtype)
    with torch.no_grad():
        ours = model.logits(pixels)[0]
    assert torch.allclose(ours.float(), _reference_logits(vit_folder, image), atol=1e-4)


def test_a_class_render_raises_the_class_by_transformers_own_forward(vit_folder):
    model = filterviz.load_model(f"hf:{vit_folder}", device="cpu")
    result = filterviz.render(model, ["class:2"], "classic", steps=20, seed=0, deprocess="none")
    start = filterviz.render(model, ["class:2"], "classic", steps=0, seed=0, deprocess="none")
    before = _reference_logits(vit_folder, start.images[0])[2]
    after = _reference_logits(vit_folder, result.images[0])[2]
    assert after > before + 0.05  # a tiny random model's logits move little, but they move up
    # The render's own scores are transformers' logits of its start and final pictures.
    assert (result.start_score[0], result.score[0]) == pytest.approx((float(before), float(after)), abs=0.01)


def test_random_weights_and_bad_names_are_one_line(vit_folder, tmp_path, capsys):
    random = filterviz.load_model(f"hf:{vit_folder}", weights="random", device="cpu")
    assert random.source.startswith("random weights")
    with pytest.raises(FilterVizError, match="give --weights random or leave --weights out"):
        filterviz.load_model(f"hf:{vit_folder}", weights="w.pth", device="cpu")
    (tmp_path / "empty").mkdir()
    assert main(["layers", f"hf:{tmp_path / 'empty'}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "save_pretrained" in err
    # A hub name that is not cached, with no network: one line that names the cache, within seconds.
    assert main(["layers", "hf:nobody-here/no-such-model-xyz"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Hugging Face cache" in err


def test_a_hidden_unit_of_an_hf_vit_is_read_on_its_channel_axis_and_driven(vit_folder):
    """vit.layers.1.mlp.fc1 is (N, 1+16 tokens, 48): unit 30 is the 30th of 48 hidden units, averaged over
    the 16 patch tokens (the class token left out), measured here with transformers' own forward."""
    model = filterviz.load_model(f"hf:{vit_folder}", device="cpu")
    info = model.layer_info("vit.layers.1.mlp.fc1", 32)
    assert info.channels == 48 and info.output == "tokens 1+4x4, 48"
    result = filterviz.render(model, ["channel:vit.layers.1.mlp.fc1:30"], "classic", steps=10, seed=0,
                              deprocess="none")
    hf = transformers.AutoModelForImageClassification.from_pretrained(vit_folder).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(vit_folder)
    seen = {}
    hf.vit.layers[1].mlp.fc1.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        hf(**processor(images=result.images[0], return_tensors="pt"))
    units = seen["out"][0, 1:].mean(dim=0)  # patch tokens only
    assert int(units.argmax()) == 30
    assert result.score[0] == pytest.approx(float(units[30]), abs=0.02)


def test_hf_vit_block_outputs_equal_transformers_hidden_states(vit_folder):
    """Each block's output, channels-first on the patch grid, is transformers' own hidden state with
    its class token left out."""
    model = filterviz.load_model(f"hf:{vit_folder}", device="cpu")
    pixels = torch.rand(2, 3, 32, 32, dtype=torch.float64) * 255
    with torch.no_grad(), model.capture(["vit.layers.0", "vit.layers.1"]) as run:
        ours = run(pixels.to(model.dtype))
        states = model.module.model(pixel_values=model.spec.to_model_input(pixels.to(model.dtype)),
                                    output_hidden_states=True).hidden_states
    for index, layer in enumerate(["vit.layers.0", "vit.layers.1"], start=1):
        expected = states[index][:, 1:].reshape(2, 4, 4, 24).permute(0, 3, 1, 2)
        assert torch.allclose(ours[layer], expected, atol=1e-5)


@pytest.mark.parametrize(("do_rescale", "rescale"), [(True, 1 / 255), (True, 1 / 127.5), (False, 1.0)])
def test_the_spec_is_what_the_image_processor_computes(tmp_path, do_rescale, rescale):
    """(pixels * rescale - mean) / std, whatever the processor's rescale factor, checked against the
    processor itself on a random image."""
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1,
                                    num_attention_heads=2, intermediate_size=48, num_labels=3)
    transformers.ViTForImageClassification(config).save_pretrained(tmp_path)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                   image_std=[0.2, 0.25, 0.3], do_rescale=do_rescale,
                                   rescale_factor=rescale).save_pretrained(tmp_path)
    model = filterviz.load_model(f"hf:{tmp_path}", device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    processor = transformers.AutoImageProcessor.from_pretrained(tmp_path)
    expected = processor(images=image, return_tensors="pt")["pixel_values"][0].double()
    ours = model.spec.to_model_input(torch.as_tensor(image).permute(2, 0, 1)[None].double())[0]
    assert torch.allclose(ours, expected, atol=1e-4)
