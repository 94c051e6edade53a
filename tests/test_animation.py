"""--record N / Recorder: the optimization as an animation whose frames are the render's pictures at those steps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from filterviz import Recorder, render
from filterviz.cli import main

EMBEDDED = "efficientnet-lite0"
OBJECTIVES = [f"channel:features.2:{k}" for k in range(3)]


def frames_of(path) -> list[np.ndarray]:
    with Image.open(path) as animation:
        frames = []
        for number in range(animation.n_frames):
            animation.seek(number)
            frames.append(np.array(animation.convert("RGB")))
    return frames


def test_webp_frames_are_the_pictures_at_each_recorded_step(tiny, tmp_path):
    recorder = Recorder(per_row=2, margin=3)
    result = render(tiny, OBJECTIVES, "classic", seed=1, steps=6, size=24, callback=recorder, callback_every=2)
    assert recorder.steps == [2, 4, 6]
    # classic's step is the same at every step: the frame at step k is a k-step render's picture
    for step, frame in zip(recorder.steps, recorder.frames):
        shorter = render(tiny, OBJECTIVES, "classic", seed=1, steps=step, size=24)
        assert np.array_equal(frame[:24, :24], shorter.images[0]) and np.array_equal(frame[:24, 27:], shorter.images[1])
    assert np.array_equal(recorder.frames[-1][27:, :24], result.images[2])
    written = recorder.save(tmp_path / "run.webp")
    decoded = frames_of(written)
    assert len(decoded) == 3 and all(np.array_equal(a, b) for a, b in zip(decoded, recorder.frames))  # lossless


def test_gif_holds_every_frame(tiny, tmp_path):
    recorder = Recorder()
    render(tiny, OBJECTIVES[:1], "classic", seed=1, steps=3, size=16, callback=recorder)
    decoded = frames_of(recorder.save(tmp_path / "run.gif"))
    assert len(decoded) == 3 and decoded[0].shape == (16, 16, 3)
    # GIF keeps at most 256 colors: close to the picture, not equal
    assert np.abs(decoded[-1].astype(int) - recorder.frames[-1].astype(int)).mean() < 12


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_records_render_and_grid_beside_the_picture(capsys, tmp_path):
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "2", "--size", "24", "--steps", "5", "--seed", "0",
                       "--precision", "fp32", "--record", "2", "-o", str(tmp_path / "one.png"))
    assert code == 0 and "one.webp (3 frames)" in err
    frames = frames_of(tmp_path / "one.webp")
    assert len(frames) == 3 and np.array_equal(frames[-1], np.array(Image.open(tmp_path / "one.png")))
    code, _, err = run(capsys, "grid", EMBEDDED, "stem.act", "--filters", "0-2", "--per-row", "2", "--size", "16",
                       "--steps", "4", "--seed", "0", "--precision", "fp32", "--record", "4", "--animation",
                       str(tmp_path / "grid.gif"), "-o", str(tmp_path / "grid.png"))
    assert code == 0 and "grid.gif (1 frames)" in err
    assert frames_of(tmp_path / "grid.gif")[0].shape == np.array(Image.open(tmp_path / "grid.png")).shape


@pytest.mark.parametrize("extra, message", [
    (["--animation", "x.webp"], "add --record N"),
    (["--record", "2", "--animation", "x.mp4"], "must end in .webp or .gif"),
    (["--record", "0"], "invalid positive integer value: '0'"),
    (["--record", "2", "--animation", "OUT"], "also the picture's file"),
])
def test_bad_record_options_are_refused_before_work(capsys, tmp_path, extra, message):
    out = tmp_path / "out.webp"
    extra = [str(out) if item == "OUT" else str(tmp_path / item) if item.startswith("x.") else item for item in extra]
    code, _, err = run(capsys, "render", EMBEDDED, "stem.act", "2", "--steps", "2", "-o", str(out), *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert not any(tmp_path.iterdir())
