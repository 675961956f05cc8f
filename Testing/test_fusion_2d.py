"""2D and colour fusion in the core, and the CDDFuse evaluator's metric set against its own numbers.

* 2D grey and RGB PNG images through ``read_volume`` -> ``fuse_volumes`` -> ``write_volume``;
  YCbCr colour fusion keeps the colour source's Cb, Cr; single-slice NIfTI; registration's
  refusal of 2D pairs.
* Metric parity (``metric_set="cddfuse"``) with reference values computed by the evaluator
  itself: ``utils/Evaluator.py`` of Zhaozixiang1228/MMIF-CDDFuse at commit
  fd8da1f39d8d403b7343e577bd5a30cba38c7b7b (file last changed in 40de0585034a57b33d3e293b6807b29f247921b6,
  git blob 0c6270e629f9a1c29babe1d4868f1e643fa8e224), called as its ``test_MIF.py`` calls it
  (``Evaluator.X(F, A, B)``), in Python 3.11.7 with numpy 1.26.4, scipy 1.11.4, scikit-learn
  1.3.2, scikit-image 0.19.2 (the version CDDFuse pins; SSIM's data_range is then 2 for float
  input) and OpenCV 4.8.1.

  The MNI pair (runs everywhere): from ``Resources/SampleData/MNI152_2009a_{T1,GM}.nii.gz``
  read with SimpleITK, ``s = array[91]`` (axial slice 91 of the [z, y, x] array, 233 x 197),
  ``A`` (T1), ``B`` (GM) = ``round(255 (s - min) / (max - min))`` as uint8; ``F_avg =
  round((A + B) / 2)`` (numpy, half to even), ``F2_max = max(A, B)``. The evaluator read the
  three images back from PNG files with ``image_read_cv2(path, 'GRAY')`` (float32, the
  published numbers' path: ``FLOAT32`` below) and was also run on the float64 arrays
  (``FLOAT64``).

  The Harvard pairs (only with ``MEDTORCH_HARVARD_DIR`` pointing at the folder, which is not
  redistributable and never committed): CDDFuse's ``test_img/<task>/{MRI,CT|PET|SPECT}/{11,12,13}.png``,
  A = the CT/PET/SPECT image, B = the MRI, both read with ``image_read_cv2(path, 'GRAY')``,
  ``F = round((A + B) / 2)`` written with ``cv2.imwrite`` to ``parity/<task>/<n>.png`` and read
  back the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medtorch.errors import MedTorchInputError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "Resources" / "SampleData"
NAMES = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM_sum")

# Evaluator values (see the module docstring): (float32 path as test_MIF.py, float64 arrays).
MNI_REFERENCE = {
    "F_avg": (
        {"EN": 3.9706460150856357, "SD": 80.4559555053711, "SF": 18.32008934020996, "MI": 3.0128510075819355,
         "SCD": 0.9068070650100708, "VIF": 0.6437390017141831, "Qabf": 0.5371733903884888, "SSIM_sum": 1.2887853388175001},
        {"EN": 3.9706460150856357, "SD": 80.45595499600059, "SF": 18.320089418027454, "MI": 3.0128510075819355,
         "SCD": 0.9068069916298422, "VIF": 0.6437390017141831, "Qabf": 0.5371733640098952, "SSIM_sum": 1.2887849694625861},
    ),
    "F2_max": (
        {"EN": 4.025290525607625, "SD": 107.23998260498047, "SF": 19.35106658935547, "MI": 3.859871930713714,
         "SCD": 1.5123010873794556, "VIF": 0.5878818931837743, "Qabf": 0.5259424448013306, "SSIM_sum": 1.4932419958228973},
        {"EN": 4.025290525607625, "SD": 107.23998381846867, "SF": 19.35106528043938, "MI": 3.859871930713714,
         "SCD": 1.5123012299661212, "VIF": 0.5878818931837743, "Qabf": 0.5259424805958111, "SSIM_sum": 1.4932420054547677},
    ),
}
HARVARD_REFERENCE = {  # float32 path (as test_MIF.py), float64 arrays
    "MRI_CT/11": ({"EN": 4.714689787548376, "SD": 55.9948616027832, "SF": 21.380338668823242, "MI": 2.6722079332762116, "SCD": 0.9551783800125122, "VIF": 0.44476235151456645, "Qabf": 0.3701566457748413, "SSIM_sum": 1.2752461038529854},
                  {"EN": 4.714689787548376, "SD": 55.99485925032803, "SF": 21.380338815548434, "MI": 2.6722079332762116, "SCD": 0.9551782934960759, "VIF": 0.44476235151456645, "Qabf": 0.3701566040210753, "SSIM_sum": 1.2752461144942377}),
    "MRI_CT/12": ({"EN": 4.656479026171946, "SD": 52.43616485595703, "SF": 20.58147430419922, "MI": 2.633263413488522, "SCD": 0.9635301828384399, "VIF": 0.44459590332433396, "Qabf": 0.37786415219306946, "SSIM_sum": 1.2911981800201195},
                  {"EN": 4.656479026171946, "SD": 52.436164177741006, "SF": 20.58147293529485, "MI": 2.633263413488522, "SCD": 0.9635301885999215, "VIF": 0.44459590332433396, "Qabf": 0.3778641633322051, "SSIM_sum": 1.2911981671402604}),
    "MRI_CT/13": ({"EN": 4.554411668575057, "SD": 52.64872360229492, "SF": 20.115211486816406, "MI": 2.60090616686922, "SCD": 1.035104751586914, "VIF": 0.4249544511710153, "Qabf": 0.3615076243877411, "SSIM_sum": 1.2715896654271859},
                  {"EN": 4.554411668575057, "SD": 52.64872441966624, "SF": 20.115210824028118, "MI": 2.60090616686922, "SCD": 1.0351046199308267, "VIF": 0.4249544511710153, "Qabf": 0.36150761589884456, "SSIM_sum": 1.2715896618367504}),
    "MRI_PET/11": ({"EN": 3.92665034954721, "SD": 45.657955169677734, "SF": 17.845279693603516, "MI": 2.536329582657036, "SCD": 1.2579132318496704, "VIF": 1.0086977966522623, "Qabf": 0.4726089537143707, "SSIM_sum": 1.2790982452356294},
                   {"EN": 3.92665034954721, "SD": 45.65795649290174, "SF": 17.84527814873958, "MI": 2.536329582657036, "SCD": 1.2579133176322475, "VIF": 1.0086977966522623, "Qabf": 0.47260894316331437, "SSIM_sum": 1.2790986779742344}),
    "MRI_PET/12": ({"EN": 3.8602389418565517, "SD": 47.773231506347656, "SF": 18.872041702270508, "MI": 2.499426484521023, "SCD": 1.251527190208435, "VIF": 0.990232546791352, "Qabf": 0.46687638759613037, "SSIM_sum": 1.2890595907730493},
                   {"EN": 3.8602389418565517, "SD": 47.773227758397496, "SF": 18.87204154843567, "MI": 2.499426484521023, "SCD": 1.2515272492593223, "VIF": 0.990232546791352, "Qabf": 0.4668763977750028, "SSIM_sum": 1.2890617459018634}),
    "MRI_PET/13": ({"EN": 3.950685407863157, "SD": 47.20016098022461, "SF": 18.694063186645508, "MI": 2.4813712537078914, "SCD": 1.2520796060562134, "VIF": 0.9249556784915662, "Qabf": 0.46313974261283875, "SSIM_sum": 1.2970102210964103},
                   {"EN": 3.950685407863157, "SD": 47.20016077252001, "SF": 18.69406280262874, "MI": 2.4813712537078914, "SCD": 1.2520797377571786, "VIF": 0.9249556784915662, "Qabf": 0.4631397355337774, "SSIM_sum": 1.2970102608149068}),
    "MRI_SPECT/11": ({"EN": 3.265152153977537, "SD": 31.399362564086914, "SF": 8.638921737670898, "MI": 1.8997135650336683, "SCD": 0.8567366600036621, "VIF": 0.6638230096592559, "Qabf": 0.4093154966831207, "SSIM_sum": 1.374540172298536},
                     {"EN": 3.265152153977537, "SD": 31.399363141061148, "SF": 8.638922054556684, "MI": 1.8997135650336683, "SCD": 0.8567367214755843, "VIF": 0.6638230096592559, "Qabf": 0.40931555579822637, "SSIM_sum": 1.3745401375204636}),
    "MRI_SPECT/12": ({"EN": 3.3649912466695753, "SD": 31.0645751953125, "SF": 8.680758476257324, "MI": 1.9190796543967923, "SCD": 0.8623579740524292, "VIF": 0.6470000827479038, "Qabf": 0.40631338953971863, "SSIM_sum": 1.3247908675321067},
                     {"EN": 3.3649912466695753, "SD": 31.064575194739128, "SF": 8.680758951865451, "MI": 1.9190796543967923, "SCD": 0.8623579658068765, "VIF": 0.6470000827479038, "Qabf": 0.40631335070715546, "SSIM_sum": 1.324790873237184}),
    "MRI_SPECT/13": ({"EN": 3.4589477837755997, "SD": 31.224411010742188, "SF": 8.980203628540039, "MI": 1.970702769910757, "SCD": 0.8366978168487549, "VIF": 0.6489201651441884, "Qabf": 0.4055286645889282, "SSIM_sum": 1.3426385222081825},
                     {"EN": 3.4589477837755997, "SD": 31.224410650744545, "SF": 8.98020358190999, "MI": 1.970702769910757, "SCD": 0.8366977914915917, "VIF": 0.6489201651441884, "Qabf": 0.40552868413227816, "SSIM_sum": 1.342638549069639}),
}
#: float64 reference: the same arithmetic in float64, only summation order differs (measured
#: worst relative difference 1.2e-10, SSIM's running-sum box filter); float32 path: the
#: evaluator's own float32 rounding (measured worst absolute difference 3.8e-6, SD).
REL_TOL_FLOAT64 = 1e-9
ABS_TOL_FLOAT32 = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _mni_pair() -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    def sl(name: str) -> np.ndarray:
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / f"MNI152_2009a_{name}.nii.gz")))[91].astype(np.float64)
        return np.round(255 * (a - a.min()) / (a.max() - a.min())).astype(np.uint8)

    return sl("T1"), sl("GM")


def _check(values: dict[str, float], ref32: dict[str, float], ref64: dict[str, float], what: str) -> None:
    for k in NAMES:
        assert values[k] == pytest.approx(ref64[k], rel=REL_TOL_FLOAT64, abs=1e-12), f"{what} {k} (float64)"
        assert values[k] == pytest.approx(ref32[k], abs=ABS_TOL_FLOAT32), f"{what} {k} (float32 path)"


@pytest.mark.parametrize("fused", ["F_avg", "F2_max"])
def test_cddfuse_metric_set_matches_the_evaluator_on_the_mni_pair(fused):
    from medtorch.fusion.metrics import fusion_metrics

    a8, b8 = _mni_pair()
    f8 = np.round((a8.astype(np.float64) + b8) / 2).astype(np.uint8) if fused == "F_avg" else np.maximum(a8, b8)
    ref32, ref64 = MNI_REFERENCE[fused]
    vals = fusion_metrics(a8, b8, f8, data_range=(0, 255), metric_set="cddfuse")
    assert list(vals) == list(NAMES)
    _check(vals, ref32, ref64, f"MNI {fused}")
    # the same from MedTorch's [0, 1] range and from one-slice volumes (how 2D images are stored)
    again = fusion_metrics(a8[None] / 255.0, b8[None] / 255.0, f8[None] / 255.0, metric_set="cddfuse")
    assert again == pytest.approx(vals, rel=1e-12)


def test_medtorch_set_keeps_its_names_and_definitions_beside_the_cddfuse_set():
    from medtorch.fusion.metrics import METRICS, fusion_metrics

    a8, b8 = _mni_pair()
    f8 = np.round((a8.astype(np.float64) + b8) / 2)
    own = fusion_metrics(a8, b8, f8, data_range=(0, 255))
    assert tuple(own) == METRICS
    ev = fusion_metrics(a8, b8, f8, data_range=(0, 255), metric_set="cddfuse")
    assert own["MI"] == pytest.approx(ev["MI"] / np.log(2), rel=1e-9)  # bits vs nats
    assert abs(own["SSIM_sum"] - ev["SSIM_sum"]) > 1e-3  # different windows and constants
    with pytest.raises(MedTorchInputError, match="metric set"):
        fusion_metrics(a8, b8, f8, metric_set="vifb2")


HARVARD = os.environ.get("MEDTORCH_HARVARD_DIR")


@pytest.mark.skipif(not HARVARD, reason="MEDTORCH_HARVARD_DIR is not set: the Harvard atlas pairs are not "
                    "redistributable, so this parity test runs only where a local copy is")
@pytest.mark.parametrize("key", sorted(HARVARD_REFERENCE))
def test_cddfuse_metric_set_matches_the_evaluator_on_harvard_pairs(key):
    from medtorch.fusion.evaluator import evaluator_grey
    from medtorch.fusion.metrics import fusion_metrics
    from medtorch.io import read_volume

    root = Path(HARVARD)  # type: ignore[arg-type]
    task, n = key.split("/")
    other = task.split("_")[1]
    grey = {}
    for name, rel in (("A", f"{task}/test/{other}/{n}.png"), ("B", f"{task}/test/MRI/{n}.png"),
                      ("F", f"parity/{task}/{n}.png")):
        p = root / rel
        if not p.exists():
            pytest.skip(f"{p} is missing from MEDTORCH_HARVARD_DIR")
        grey[name] = evaluator_grey(read_volume(p).array[0])
    vals = fusion_metrics(grey["A"], grey["B"], grey["F"], data_range=(0, 255), metric_set="cddfuse")
    ref32, ref64 = HARVARD_REFERENCE[key]
    _check(vals, ref32, ref64, key)


# -- 2D images through the core ----------------------------------------------------------------------


def _write_png(path: Path, arr: np.ndarray) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=arr.ndim == 3)
    sitk.WriteImage(img, str(path))
    return path


def _pet_like(b8: np.ndarray) -> np.ndarray:
    """A pseudo-colour RGB image of a smooth 'uptake' made from the GM slice: hue from the
    uptake, moderate saturation (few clipped channels)."""
    import torch
    from scipy import ndimage

    from medtorch.fusion.color import ycbcr_to_rgb

    u = ndimage.gaussian_filter(b8.astype(np.float64) / 255.0, 3.0)
    u = u / max(u.max(), 1e-9)
    ycc = np.stack([0.15 + 0.6 * u, 0.5 - 0.12 * np.cos(3 * u), 0.5 + 0.12 * np.sin(3 * u)])
    rgb = ycbcr_to_rgb(torch.from_numpy(ycc)).clamp(0, 1).numpy()
    return np.round(np.moveaxis(rgb, 0, -1) * 255).astype(np.uint8)


def test_grey_png_pair_fuses_to_a_grey_png(tmp_path):
    from medtorch.fusion import fuse_volumes
    from medtorch.io import read_volume, write_volume

    a8, b8 = _mni_pair()
    pa = _write_png(tmp_path / "mri.png", a8)
    pb = _write_png(tmp_path / "ct.png", np.stack([b8] * 3, axis=-1))  # grey stored as RGB, as CDDFuse's files
    fa, fb = read_volume(pa), read_volume(pb)
    assert fa.is_2d and fb.is_2d and fa.kind == "scalar" and fb.kind == "vector"
    for method in ("average", "gff"):
        res = fuse_volumes(fa, fb, method, metrics="3d")
        f = res.fused.array
        assert f.shape == (1, *a8.shape) and f.dtype == np.float32
        assert 0.0 <= f.min() and f.max() <= 1.0 and res.rgb is None
        assert res.fused.is_2d and res.info["spatial_dims"] == 2
        assert set(res.metrics) >= {"QABF", "VIF"}  # scored in 2D although '3d' was asked for
    np.testing.assert_allclose(fuse_volumes(fa, fb, "average").fused.array[0], (a8 + b8.astype(np.float32)) / 510.0,
                               atol=1e-6)  # display images: / 255, no window or percentiles
    out = write_volume(res.fused, tmp_path / "fused.png")
    back = read_volume(out)
    assert back.kind == "scalar" and back.array.dtype == np.uint8 and back.array.shape == (1, *a8.shape)
    np.testing.assert_array_equal(back.array[0], np.rint(res.fused.array[0] * 255).astype(np.uint8))


def test_rgb_pet_png_is_fused_in_ycbcr_keeping_its_chroma(tmp_path):
    import torch

    from medtorch.fusion import fuse_volumes
    from medtorch.fusion.color import rgb_to_ycbcr
    from medtorch.io import read_volume, write_volume

    a8, b8 = _mni_pair()
    pet = _pet_like(b8)
    fa = read_volume(_write_png(tmp_path / "mri.png", a8))
    fb = read_volume(_write_png(tmp_path / "pet.png", pet))
    assert fb.kind == "vector" and fb.metadata["color"] == "rgb"
    res = fuse_volumes(fa, fb, "laplacian")
    assert res.rgb is not None and res.rgb.array.shape == (1, *a8.shape, 3) and res.rgb.array.dtype == np.uint8
    assert res.info["functional"] == "moving"
    ycc_in = rgb_to_ycbcr(torch.from_numpy(np.moveaxis(pet / 255.0, -1, 0)))
    ycc_out = rgb_to_ycbcr(torch.from_numpy(np.moveaxis(res.rgb.array[0] / 255.0, -1, 0)))
    rgb_exact = res.rgb.array[0].astype(int)
    unclipped = ((rgb_exact > 0) & (rgb_exact < 255)).all(axis=-1)
    assert unclipped.mean() > 0.3  # the head (background and saturated pixels clip)
    # Cb, Cr kept (up to the 8-bit rounding of the output) where no channel was clipped
    assert float((ycc_out[1:] - ycc_in[1:]).abs()[:, torch.from_numpy(unclipped)].max()) < 2.5 / 255
    # Y is the fused luminance
    np.testing.assert_allclose(ycc_out[0].numpy()[unclipped], res.fused.array[0][unclipped], atol=2.5 / 255)
    out = write_volume(res.rgb, tmp_path / "fused.png")
    assert read_volume(out).kind == "vector"


def test_single_slice_nifti_is_accepted_and_stays_2d(tmp_path):
    import SimpleITK as sitk

    from medtorch.fusion import fuse_volumes
    from medtorch.io import read_volume, write_volume

    a8, b8 = _mni_pair()
    for name, arr in (("a", a8), ("b", b8)):
        img2 = sitk.GetImageFromArray(arr.astype(np.float32))
        sitk.WriteImage(img2, str(tmp_path / f"{name}2d.nii.gz"))
        sitk.WriteImage(sitk.JoinSeries(img2), str(tmp_path / f"{name}1.nii.gz"))  # 3D, one slice
    with pytest.raises(MedTorchInputError, match="2D"):
        read_volume(tmp_path / "a2d.nii.gz")  # 2D NIfTI refused unless asked for
    va, vb = read_volume(tmp_path / "a2d.nii.gz", allow_2d=True), read_volume(tmp_path / "b2d.nii.gz", allow_2d=True)
    sa, sb = read_volume(tmp_path / "a1.nii.gz"), read_volume(tmp_path / "b1.nii.gz")
    for x, y in ((va, vb), (sa, sb)):
        res = fuse_volumes(x, y, "dwt", moving_modality="MR", metrics="slices")
        assert res.fused.array.shape == (1, *a8.shape) and np.isfinite(res.metrics["QABF"])
    out = write_volume(fuse_volumes(va, vb, "gff").fused, tmp_path / "f.nii.gz")
    assert sitk.ReadImage(str(out)).GetDimension() == 2  # 2D in, 2D out


def test_2d_and_3d_inputs_together_are_refused(tmp_path):
    from medtorch.fusion import fuse_volumes
    from medtorch.volume import Volume

    a8, _ = _mni_pair()
    two = Volume.from_array(a8[None].astype(np.float32))
    three = Volume.from_array(np.repeat(a8[None], 3, axis=0).astype(np.float32))
    with pytest.raises(MedTorchInputError, match="2D image and the other a 3D volume"):
        fuse_volumes(two, three, "average")


def test_registration_refuses_2d_pairs_and_says_what_to_do():
    from medtorch.registration import register
    from medtorch.volume import Volume

    a8, b8 = _mni_pair()
    va, vb = Volume.from_array(a8[None].astype(np.float32)), Volume.from_array(b8[None].astype(np.float32))
    with pytest.raises(MedTorchInputError) as ei:
        register(va, vb, mode="rigid")
    text = str(ei.value)
    assert "2D image" in text and "3D volumes only" in text and "--assume-aligned" in text


def test_best_training_free_method_beats_the_average_on_qabf_on_the_mni_pair():
    from medtorch.fusion.methods import fuse_arrays
    from medtorch.fusion.metrics import fusion_metrics

    a8, b8 = _mni_pair()
    a, b = a8 / 255.0, b8 / 255.0
    avg, _ = fuse_arrays(a, b, "average")
    best, _ = fuse_arrays(a, b, "gradient")
    q_avg = fusion_metrics(a, b, avg, metric_set="cddfuse", metrics=["Qabf"])["Qabf"]
    q_best = fusion_metrics(a, b, best, metric_set="cddfuse", metrics=["Qabf"])["Qabf"]
    assert q_best > q_avg + 0.05  # measured 0.610 vs 0.537


def test_gradient_fusion_takes_the_stronger_gradient_in_2d_and_3d():
    import torch

    from medtorch.fusion.gradient import fuse_gradient
    from medtorch.fusion.methods import fuse_tensors

    # two halves: an edge only in a on the left, only in b on the right; the fusion keeps both
    a = torch.zeros(40, 64)
    b = torch.zeros(40, 64)
    a[:20, :32] = 0.8
    b[:, 32:][:, :16] = 0.6
    f, info = fuse_tensors(a, b, "gradient")
    assert info["norm"] == "l2" and info["lam"] == pytest.approx(1 / 32) and f.shape == a.shape
    gy_a = (f[21, 5:27] - f[18, 5:27]).abs().mean()  # a's horizontal edge at row 20
    gx_b = (f[5:35, 49] - f[5:35, 46]).abs().mean()  # b's vertical edge at column 48
    assert gy_a > 0.5 and gx_b > 0.4
    vol = torch.rand(12, 20, 18)
    out, _ = fuse_gradient(vol, vol)  # a volume fused with itself comes back
    assert out.shape == vol.shape and float((out - vol).abs().max()) < 1e-4
    one = vol[:1]  # a one-slice volume (a 2D image): the slice axis is left alone
    out1, _ = fuse_gradient(one, torch.zeros_like(one))
    assert out1.shape == one.shape


def _conflict_pair(seed: int = 0):
    """An MRI-CT-like pair: a bright bone ring in the CT; in the MRI a bright scalp just outside it,
    dark bone, and a textured brain inside (edges of opposite polarity a pixel or two apart)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(96.0), torch.arange(96.0), indexing="ij")
    r = torch.sqrt((y - 48) ** 2 + (x - 48) ** 2)
    ct = ((r > 30) & (r <= 36)).double() * 1.0 + ((r <= 30)).double() * 0.15
    mri = ((r > 36) & (r <= 40)).double() * 0.8 + (r <= 30).double() * (0.45 + 0.2 * (x % 12 < 6).double())
    mri = mri + 0.02 * torch.rand(96, 96, generator=g, dtype=torch.float64)
    return mri.float(), ct.float()


def test_sobel_slices_are_the_fourier_operator_and_their_adjoint():
    """The robust solver's Sobel operators (shifted slices) must be exactly what its FFT solve
    inverts (the transfer functions), and the adjoint must be the adjoint, in 2D and 3D."""
    import torch

    from medtorch.fusion.gradient import _transfer, sobel_circular, sobel_circular_adjoint

    g = torch.Generator().manual_seed(3)
    for shape in [(12, 17), (6, 9, 10)]:
        n = len(shape)
        f = torch.rand(shape, generator=g, dtype=torch.float64)
        v = torch.rand((n, *shape), generator=g, dtype=torch.float64)
        s = sobel_circular(f)
        kernels = _transfer(list(shape), list(range(n)), n, torch.float64, f.device)
        spec = torch.fft.rfftn(f)
        for k in range(n):
            assert torch.allclose(s[k], torch.fft.irfftn(spec * kernels[k], s=shape), atol=1e-12)
        # <S f, v> = <f, S^T v>
        assert float((s * v).sum()) == pytest.approx(float((f * sobel_circular_adjoint(v)).sum()), rel=1e-12)
        # a constant has no gradient; a ramp along the last axis has slope 1 inside
        assert float(sobel_circular(torch.ones(shape, dtype=torch.float64)).abs().max()) == 0.0
        ramp = torch.arange(shape[-1], dtype=torch.float64).expand(shape)
        inner = sobel_circular(ramp)[n - 1][..., 1:-1]
        assert torch.allclose(inner, torch.ones_like(inner))


def test_gradient_fusion_robust_reconstruction_keeps_more_edges_exact_than_least_squares():
    import torch

    from medtorch.fusion.gradient import fuse_gradient, sobel_circular
    from medtorch.fusion.methods import fuse_tensors

    mri, ct = _conflict_pair()

    def sobel(x: torch.Tensor) -> torch.Tensor:
        return sobel_circular(x.float())

    ga, gb = sobel(mri), sobel(ct)
    target = torch.where((ga * ga).sum(0) >= (gb * gb).sum(0), ga, gb)
    strength = torch.sqrt((target * target).sum(0))
    strong = strength > 0.05

    def exact_share(f: torch.Tensor) -> float:  # strong target edges the result keeps within 20 %
        err = torch.sqrt(((sobel(f) - target) ** 2).sum(0))
        return float((err[strong] < 0.2 * strength[strong]).double().mean())

    l2, info2 = fuse_tensors(mri, ct, "gradient", {"window": 0})
    l1, info1 = fuse_tensors(mri, ct, "gradient", {"window": 0, "norm": "l1"})
    assert info2["norm"] == "l2" and info1["norm"] == "l1" and info1["box_iterations"] == 15
    assert info1["lam"] == pytest.approx(0.3)
    assert float(l1.min()) >= 0.0 and float(l1.max()) <= 1.0
    assert exact_share(l1) > exact_share(l2) + 0.2  # measured 0.66 vs 0.38
    # a single source reconstructs itself (its gradient field is integrable)
    same, _ = fuse_gradient(mri, mri, 0.3, 2, 16, box_iterations=30, norm="l1", base_image=mri)
    assert float((same - mri).abs().max()) < 2e-3
    _, info_w = fuse_tensors(mri, ct, "gradient", {"norm": "l1", "edge_weight": 0.5})
    assert info_w["edge_weight"] == 0.5
    # a one-slice volume is the 2D image; volumes take it too
    one, _ = fuse_tensors(mri[None], ct[None], "gradient", {"window": 0, "norm": "l1"})
    assert float((one[0] - l1).abs().max()) < 1e-5
    vol_a, vol_b = torch.rand(6, 20, 18), torch.rand(6, 20, 18)
    out, info3 = fuse_tensors(vol_a, vol_b, "gradient", {"norm": "l1", "box_iterations": 3})
    assert info3["norm"] == "l1" and out.shape == vol_a.shape
    with pytest.raises(MedTorchInputError, match="norm"):
        fuse_tensors(mri, ct, "gradient", {"norm": "l0"})
    with pytest.raises(MedTorchInputError, match="edge_weight"):
        fuse_gradient(mri, ct, norm="l1", box_iterations=5, edge_weight=-1)
    with pytest.raises(MedTorchInputError, match="box_iterations"):
        fuse_gradient(mri, ct, norm="l1", box_iterations=0)


def test_gradient_fusion_box_constraint_keeps_the_edges_clipping_would_flatten():
    import torch

    from medtorch.fusion.gradient import fuse_gradient
    from medtorch.fusion.methods import fuse_tensors

    # the MRI-CT conflict: the CT's bone is white (left), the MRI's scalp bright right next to it
    a = torch.zeros(1, 48, 64, dtype=torch.float64)
    b = torch.zeros_like(a)
    a[..., :32] = 1.0
    a[..., 32:] = 0.3
    b[..., 32:48] = 0.9
    free, info0 = fuse_gradient(a, b)
    boxed, info = fuse_gradient(a, b, box_iterations=20, rho=0.5)
    assert info0["box_iterations"] == 0 and info["box_iterations"] == 20
    assert float(free.max()) > 1.2  # the unconstrained solution overshoots (measured 1.32)
    assert float(boxed.min()) >= 0.0 and float(boxed.max()) <= 1.0  # in the box without any clipping

    def edge(f: torch.Tensor) -> float:  # contrast across the bone / scalp boundary after clipping
        g = f.clamp(0, 1)[0]
        return float((g[:, 30] - g[:, 33]).abs().mean())

    assert edge(boxed) > edge(free) + 0.15  # measured 0.63 vs 0.41
    # through the registry: images get the constraint by default, volumes do not (3D FFTs cost seconds)
    _, info2 = fuse_tensors(a[0].float(), b[0].float(), "gradient", {"norm": "l2"})
    assert info2["box_iterations"] == 20 and info2["lam"] == pytest.approx(1 / 32)
    vol = torch.rand(6, 20, 18)
    out3, info3 = fuse_tensors(vol, vol.flip(2), "gradient")
    assert info3["box_iterations"] == 0 and out3.shape == vol.shape
    _, info4 = fuse_tensors(vol, vol.flip(2), "gradient", {"box_iterations": 3})
    assert info4["box_iterations"] == 3
    with pytest.raises(MedTorchInputError, match="box_iterations"):
        fuse_gradient(a, b, box_iterations=-1)


def test_gradient_fusion_second_weight_and_gff_base_in_2d_and_3d():
    import torch

    from medtorch.fusion.methods import fuse_tensors

    # one edge in both sources at column 32, opposite directions: b's is the stronger (0.8 vs 0.5)
    a = torch.zeros(40, 64)
    b = torch.zeros(40, 64)
    a[:, 32:] = 0.5
    b[:, :32] = 0.8
    even, _ = fuse_tensors(a, b, "gradient")
    mri_first, info = fuse_tensors(a, b, "gradient", {"second_weight": 0.25})
    assert info["second_weight"] == 0.25
    step = lambda f: float((f[5:35, 34] - f[5:35, 29]).mean())  # noqa: E731 - rising like a, or falling like b
    # w = 0.25: 0.25 * 0.8^2 < 0.5^2, a's rising edge is kept (measured -0.59 and +0.16: the base, max(a, b),
    # falls there, and pulls the level back over ~1 / sqrt(lam) samples)
    assert step(even) < -0.5 and step(mri_first) > 0.1
    # the guided-filter base, in 2D and 3D; the result stays in [0, 1]
    g2, i2 = fuse_tensors(a, b, "gradient", {"base": "gff"})
    assert i2["base"] == "gff" and g2.shape == a.shape and 0.0 <= float(g2.min()) and float(g2.max()) <= 1.0
    assert float(g2.std()) > 0.1
    vol = torch.zeros(8, 24, 24)
    vol[:, :, 12:] = 0.6
    g3, i3 = fuse_tensors(vol, vol.transpose(1, 2).contiguous(), "gradient", {"base": "gff"})
    assert i3["base"] == "gff" and g3.shape == vol.shape and float(g3.max()) <= 1.0
    # both sources' edges are in the volume: along x (from the first) and along y (from the second)
    assert float((g3[4, 6, 14] - g3[4, 6, 9]).abs()) > 0.2 and float((g3[4, 14, 6] - g3[4, 9, 6]).abs()) > 0.2
    with pytest.raises(MedTorchInputError, match="base"):
        fuse_tensors(a, b, "gradient", {"base": "mean"})
    with pytest.raises(MedTorchInputError, match="second_weight"):
        fuse_tensors(a, b, "gradient", {"second_weight": 0})


def test_fusion_methods_run_in_one_cpu_thread_and_restore_the_setting(monkeypatch):
    import torch

    from medtorch.fusion.methods import FUSION_THREADS_ENV, cpu_threads, fuse_tensors

    seen = []
    import medtorch.fusion.rules as rules

    real = rules.fuse_average

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(rules, "fuse_average", spy)
    before = torch.get_num_threads()
    fuse_tensors(torch.rand(8, 9), torch.rand(8, 9), "average")
    assert seen == [1] and torch.get_num_threads() == before
    monkeypatch.setenv(FUSION_THREADS_ENV, "2")
    with cpu_threads(1):
        assert torch.get_num_threads() == 2
    monkeypatch.setenv(FUSION_THREADS_ENV, "many")
    with pytest.raises(MedTorchInputError, match=FUSION_THREADS_ENV):
        with cpu_threads(1):
            pass


def test_cnn_trained_on_a_set_of_pairs_saves_a_loadable_checkpoint(tmp_path):
    import torch

    from medtorch.fusion.cnn import TrainConfig, load_checkpoint, save_checkpoint, train_on_pairs
    from medtorch.fusion.methods import fuse_tensors

    a8, b8 = _mni_pair()
    a, b = torch.from_numpy(a8 / 255.0).float(), torch.from_numpy(b8 / 255.0).float()
    pairs = [(a, b), (a.flip(0), b.flip(0))]
    cfg = TrainConfig(iterations=4, patch_size=32, batch_size=2, seed=3)
    model, rec = train_on_pairs(pairs, cfg, features=4)
    again, rec2 = train_on_pairs(pairs, cfg, features=4)
    assert rec["seed"] == 3 and rec["iterations"] == 4 and rec["pairs"] == 2
    for p, q in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(p, q)  # seeded: the same weights
    path = save_checkpoint(tmp_path / "net.pt", model, {"training": rec})
    loaded, meta = load_checkpoint(path)
    assert meta["training"]["seed"] == 3
    fused, info = fuse_tensors(a, b, "cnn", {"checkpoint": str(path), "iterations": 0})
    assert fused.shape == a.shape and info["iterations"] == 0
    with pytest.raises(MedTorchInputError, match="2D images"):
        train_on_pairs([(a, b[:10])], cfg)


# -- 2D images through the command line and the FusionRegistration module ----------------------------


def test_cli_fuses_a_grey_and_an_rgb_png_pair_into_pngs(tmp_path):
    import json

    from medtorch.cli import main
    from medtorch.io import read_volume

    a8, b8 = _mni_pair()
    mri = _write_png(tmp_path / "mri.png", a8)
    ct = _write_png(tmp_path / "ct.png", b8)
    pet = _write_png(tmp_path / "pet.png", _pet_like(b8))
    assert main(["fuse", "--fixed", str(mri), "--moving", str(ct), "--method", "gradient", "--out",
                 str(tmp_path / "f.png"), "--metrics", str(tmp_path / "m.json"), "--metric-set", "cddfuse",
                 "--quiet"]) == 0
    grey = read_volume(tmp_path / "f.png")
    assert grey.kind == "scalar" and grey.array.shape == (1, *a8.shape) and grey.array.dtype == np.uint8
    metrics = json.loads((tmp_path / "m.json").read_text())
    names = set(metrics.get("metrics", metrics))
    assert {"EN", "SD", "SF", "MI", "SCD", "VIF", "QABF", "SSIM_SUM"} <= {n.upper() for n in names}
    assert main(["fuse", "--fixed", str(mri), "--moving", str(pet), "--method", "gff", "--out",
                 str(tmp_path / "c.png"), "--quiet"]) == 0
    colour = read_volume(tmp_path / "c.png")
    assert colour.kind == "vector" and colour.array.shape == (1, *a8.shape, 3)


def test_module_fuses_png_images_loaded_as_one_slice_volumes(scene, tmp_path):
    """Slicer loads a PNG as a one-slice volume (an RGB PNG as a vector volume): the module fuses them."""
    import slicer_testbed

    from medtorch.slicer import mrml
    from medtorch.io import read_volume

    a8, b8 = _mni_pair()
    mri = mrml.node_from_volume(read_volume(_write_png(tmp_path / "mri.png", a8)), "mri", scene)
    ct = mrml.node_from_volume(read_volume(_write_png(tmp_path / "ct.png", b8)), "ct", scene)
    pet = mrml.node_from_volume(read_volume(_write_png(tmp_path / "pet.png", _pet_like(b8))), "pet", scene)
    assert mri.GetImageData().GetDimensions()[2] == 1 and pet.GetClassName() == "vtkMRMLVectorVolumeNode"
    logic = slicer_testbed.load_module("FusionRegistration").FusionRegistrationLogic()
    out = logic.fuse(mri, ct, method="gradient", showIn3D=False, device="cpu")
    fused = mrml.volume_from_node(out.fusedNode)
    assert fused.array.shape == (1, *a8.shape) and out.metrics["QABF"] > 0.3
    colour = logic.fuse(mri, pet, method="gff", showIn3D=False, device="cpu")
    assert colour.rgbNode is not None
    assert mrml.volume_from_node(colour.rgbNode).array.shape == (1, *a8.shape, 3)
