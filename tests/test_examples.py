"""examples/edges.py: Sobel edge maps through convkit.conv2d, written as a PNG, with NumPy only."""
import pathlib
import subprocess
import sys
import zlib

import numpy as np
import pytest
from scipy import signal

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import edges  # noqa: E402


def _read_gray_png(path):
    """Decode the writer's own PNG (8-bit grey, filter 0): checks the format without a library."""
    data = pathlib.Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        assert int.from_bytes(data[pos + 8 + n:pos + 12 + n], "big") == zlib.crc32(kind + body)
        chunks[kind] = chunks.get(kind, b"") + body
        pos += 12 + n
    w, h = int.from_bytes(chunks[b"IHDR"][:4], "big"), int.from_bytes(chunks[b"IHDR"][4:8], "big")
    assert chunks[b"IHDR"][8:10] == b"\x08\x00" and b"IEND" in chunks
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(h, w + 1)
    assert not rows[:, 0].any()
    return rows[:, 1:]


def test_sobel_maps_equal_correlate2d_and_png_is_written(tmp_path):
    out = tmp_path / "edges.png"
    maps = edges.main(["-o", str(out)])  # the design notes' case: 512x512 -> 510x510
    image = maps["image"]
    assert image.shape == (512, 512) and maps["gx"].shape == (510, 510)
    gx = signal.correlate2d(image, edges.SOBEL_X, "valid")
    gy = signal.correlate2d(image, edges.SOBEL_Y, "valid")
    np.testing.assert_allclose(maps["gx"], gx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(maps["gy"], gy, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(maps["magnitude"], np.hypot(gx, gy), rtol=1e-10, atol=1e-12)
    png = _read_gray_png(out)
    assert png.shape == (510, 3 * 510 + 2 * edges.GAP)
    np.testing.assert_array_equal(png, edges.panels(maps["gx"], maps["gy"], maps["magnitude"]))
    assert png[:, 510 + 2 * edges.GAP + 510:].max() == 255  # the magnitude panel's strongest edge


def test_image_file_round_trip(tmp_path):
    pytest.importorskip("matplotlib")
    picture = np.round(edges.synthetic_image(40) * 255).astype(np.uint8)
    src = tmp_path / "in.png"
    edges.write_png(str(src), picture)
    maps = edges.main([str(src), "-o", str(tmp_path / "out.png"), "--size", "7"])
    np.testing.assert_allclose(maps["image"], picture / 255.0, atol=1e-6)  # matplotlib reads PNG as float32
    np.testing.assert_allclose(maps["gx"], signal.correlate2d(maps["image"], edges.SOBEL_X, "valid"),
                               rtol=1e-10, atol=1e-12)


def test_runs_as_a_script_without_torch(tmp_path):
    code = ("import runpy, sys; sys.argv = ['edges.py', '-o', sys.argv[1], '--size', '32']; "
            f"runpy.run_path({str(EXAMPLES / 'edges.py')!r}, run_name='__main__'); "
            "assert 'torch' not in sys.modules")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "e.png")], capture_output=True, text=True,
                         check=True)
    assert "32x32 image -> 30x30 edge maps" in run.stdout
    assert _read_gray_png(tmp_path / "e.png").shape == (30, 3 * 30 + 2 * edges.GAP)
