"""WADO-RS and WADO-URI over real HTTP (the app under Starlette's test client) on
SQLite and PostgreSQL: byte-exact retrieval of every transfer syntax, transcoding,
metadata from the index only, frames, bulk data, rendered images and thumbnails."""

from __future__ import annotations

from collections.abc import Iterator
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom import dcmread

from salus.dicom.render import Window, apply_window
from tests.conftest import BACKENDS
from tests.integration.dicom_world import WEB_SAMPLES, split_multipart, stow_body, uids, web_sample
from tests.integration.security_world import World, make_world

EXPLICIT = "1.2.840.10008.1.2.1"
DICOM_ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@pytest.fixture(scope="module", params=BACKENDS)
def web(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    """One server per backend with every sample stored through STOW-RS by a-feed."""
    folder = tmp_path_factory.mktemp("wado")
    with make_world(request.param, folder) as world:
        body, content_type = stow_body([web_sample(name) for name in WEB_SAMPLES])
        response = world.client.post(
            "/dicomweb/studies",
            content=body,
            headers=world.headers("a-feed", **{"Content-Type": content_type}),
        )
        assert response.status_code == 200, response.text
        yield world


def url(name: str, suffix: str = "") -> str:
    study, series, instance = uids(web_sample(name))
    return f"/dicomweb/studies/{study}/series/{series}/instances/{instance}{suffix}"


def get(
    web: World, path: str, accept: str | None = None, who: str = "a-feed", **params: Any
) -> Any:
    headers = web.headers(who)
    if accept is not None:
        headers["Accept"] = accept
    return web.client.get(path, headers=headers, params=params or None)


@pytest.mark.parametrize("name", WEB_SAMPLES)
def test_instance_as_stored_is_byte_exact(web: World, name: str) -> None:
    response = get(web, url(name), DICOM_ANY)
    assert response.status_code == 200, response.text
    parts = split_multipart(response.headers["content-type"], response.content)
    assert len(parts) == 1
    headers, body = parts[0]
    stored_syntax = str(
        dcmread(BytesIO(web_sample(name)), stop_before_pixels=True).file_meta.TransferSyntaxUID
    )
    assert headers["content-type"] == f"application/dicom; transfer-syntax={stored_syntax}"
    assert body == web_sample(name)
    # The stored syntax named explicitly gives the same bytes.
    again = get(
        web,
        url(name),
        f'multipart/related; type="application/dicom"; transfer-syntax={stored_syntax}',
    )
    assert split_multipart(again.headers["content-type"], again.content)[0][1] == web_sample(name)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
    ],
)
def test_default_accept_transcodes_to_explicit_vr_little_endian(web: World, name: str) -> None:
    response = get(web, url(name), 'multipart/related; type="application/dicom"')
    assert response.status_code == 200, response.text
    ((headers, body),) = split_multipart(response.headers["content-type"], response.content)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={EXPLICIT}"
    converted = dcmread(BytesIO(body))
    original = dcmread(BytesIO(web_sample(name)))
    assert converted.file_meta.TransferSyntaxUID == EXPLICIT
    assert converted.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(converted.pixel_array, original.pixel_array)


def test_lossy_rgb_jpeg_is_decompressed_to_rgb(web: World) -> None:
    response = get(
        web,
        url("SC_rgb_jpeg_dcmtk.dcm"),
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}',
    )
    ((_headers, body),) = split_multipart(response.headers["content-type"], response.content)
    converted = dcmread(BytesIO(body))
    assert converted.PhotometricInterpretation == "RGB"
    assert converted.pixel_array.shape == (100, 100, 3)


def test_undecodable_file_is_406_when_only_native_is_accepted(web: World) -> None:
    # pydicom's plugins cannot decode this 12-bit JPEG; asking for it as stored works.
    response = get(
        web,
        url("JPEG-lossy.dcm"),
        f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT}',
    )
    assert response.status_code == 406
    assert response.json()["resourceType"] == "OperationOutcome"
    assert get(web, url("JPEG-lossy.dcm"), DICOM_ANY).status_code == 200


def test_study_and_series_retrieval_and_accept_errors(web: World) -> None:
    study, series, _ = uids(web_sample("CT_small.dcm"))
    response = get(web, f"/dicomweb/studies/{study}", DICOM_ANY)
    parts = split_multipart(response.headers["content-type"], response.content)
    assert [body for _h, body in parts] == [web_sample("CT_small.dcm")]
    assert parts[0][0]["content-location"].endswith(url("CT_small.dcm"))
    assert get(web, f"/dicomweb/studies/{study}/series/{series}", DICOM_ANY).status_code == 200
    assert get(web, f"/dicomweb/studies/{study}", "application/json").status_code == 406
    assert get(web, "/dicomweb/studies/1.2.3.4.5.6.7").status_code == 404
    assert get(web, "/dicomweb/studies/not-a-uid").status_code == 400


def test_metadata_comes_from_the_index_only(web: World, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_blobs(*_args: Any, **_kwargs: Any) -> bytes:
        raise AssertionError("metadata must not read a blob")

    monkeypatch.setattr(web.services.blobs, "get", no_blobs)
    study, series, instance = uids(web_sample("CT_small.dcm"))
    response = get(web, f"/dicomweb/studies/{study}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    (item,) = response.json()
    assert item["00080018"]["Value"] == [instance]
    assert item["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    assert item["00083002"]["Value"] == [EXPLICIT]
    pixel_uri = item["7FE00010"]["BulkDataURI"]
    assert pixel_uri == "http://testserver" + url("CT_small.dcm", "/bulkdata/7FE00010")
    for path in (
        f"/dicomweb/studies/{study}/series/{series}/metadata",
        url("CT_small.dcm", "/metadata"),
    ):
        assert get(web, path).json()[0]["00080018"]["Value"] == [instance]


def test_frames_native_and_as_stored(web: World) -> None:
    ct = dcmread(BytesIO(web_sample("CT_small.dcm")))
    response = get(web, url("CT_small.dcm", "/frames/1"))
    ((headers, body),) = split_multipart(response.headers["content-type"], response.content)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={EXPLICIT}"
    assert body == ct.PixelData
    # A compressed frame exactly as stored, when its media type is accepted.
    jpeg = dcmread(BytesIO(web_sample("SC_rgb_jpeg_dcmtk.dcm")))
    from pydicom.encaps import generate_frames

    stored_frame = next(generate_frames(jpeg.PixelData, number_of_frames=1))
    response = get(
        web, url("SC_rgb_jpeg_dcmtk.dcm", "/frames/1"), 'multipart/related; type="image/jpeg"'
    )
    ((headers, body),) = split_multipart(response.headers["content-type"], response.content)
    assert headers["content-type"].startswith("image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50")
    assert body == stored_frame
    # The same frame decoded for a client that wants native pixels.
    response = get(
        web,
        url("MR_small_jp2klossless.dcm", "/frames/1"),
        'multipart/related; type="application/octet-stream"',
    )
    ((_headers, body),) = split_multipart(response.headers["content-type"], response.content)
    original = dcmread(BytesIO(web_sample("MR_small_jp2klossless.dcm"))).pixel_array
    assert np.array_equal(np.frombuffer(body, dtype="<i2").reshape(original.shape), original)
    assert get(web, url("CT_small.dcm", "/frames/2")).status_code == 404
    assert (
        get(
            web, url("SC_rgb_jpeg_dcmtk.dcm", "/frames/1"), 'multipart/related; type="image/jp2"'
        ).status_code
        == 406
    )


def test_multiframe_frames(web: World) -> None:
    ds = dcmread(BytesIO(web_sample("JPEG2000.dcm")))
    assert int(ds.get("NumberOfFrames", 1)) == 1  # single frame; frame lists still parse
    response = get(web, url("JPEG2000.dcm", "/frames/1"), 'multipart/related; type="image/jp2"')
    assert response.status_code == 200
    ((headers, _body),) = split_multipart(response.headers["content-type"], response.content)
    assert headers["content-type"].startswith("image/jp2")


def test_bulkdata_from_the_metadata_uri(web: World) -> None:
    item = get(web, url("CT_small.dcm", "/metadata")).json()[0]
    pixel_uri = item["7FE00010"]["BulkDataURI"].replace("http://testserver", "")
    response = get(web, pixel_uri)
    ((headers, body),) = split_multipart(response.headers["content-type"], response.content)
    assert body == dcmread(BytesIO(web_sample("CT_small.dcm"))).PixelData
    # A bulk value inside a sequence of the RT plan (if any is large enough) or
    # the big endian pixel data come back little endian.
    item = get(web, url("MR_small_bigendian.dcm", "/metadata")).json()[0]
    response = get(web, item["7FE00010"]["BulkDataURI"].replace("http://testserver", ""))
    ((_h, body),) = split_multipart(response.headers["content-type"], response.content)
    original = dcmread(BytesIO(web_sample("MR_small_bigendian.dcm"))).pixel_array
    assert np.array_equal(np.frombuffer(body, dtype="<i2").reshape(original.shape), original)
    assert get(web, url("CT_small.dcm", "/bulkdata/00091234")).status_code == 404


def _png(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(BytesIO(response.content)))


def test_rendered_png_applies_the_window(web: World) -> None:
    ct = dcmread(BytesIO(web_sample("CT_small.dcm")))
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    image = _png(get(web, url("CT_small.dcm", "/rendered"), "image/png", window="40,400,linear"))
    assert image.shape == (128, 128)
    expected = np.clip(np.rint(apply_window(hu, Window(40, 400))), 0, 255).astype(np.uint8)
    assert np.array_equal(image, expected)
    exact = _png(
        get(web, url("CT_small.dcm", "/rendered"), "image/png", window="1000,10,linear-exact")
    )
    expected = np.clip(np.rint(apply_window(hu, Window(1000, 10, "linear-exact"))), 0, 255)
    assert np.array_equal(exact, expected.astype(np.uint8))
    assert np.mean((exact == 0) | (exact == 255)) > 0.9  # a narrow window: mostly black or white
    sigmoid = _png(get(web, url("CT_small.dcm", "/rendered"), "image/png", window="40,400,sigmoid"))
    assert not np.array_equal(sigmoid, image)


def test_rendered_jpeg_viewport_quality_and_levels(web: World) -> None:
    study, series, _ = uids(web_sample("CT_small.dcm"))
    response = get(
        web, url("CT_small.dcm", "/rendered"), "image/jpeg", viewport="64,32", quality="50"
    )
    assert response.headers["content-type"] == "image/jpeg"
    assert Image.open(BytesIO(response.content)).size == (32, 32)  # aspect ratio kept
    crop = get(web, url("CT_small.dcm", "/rendered"), "image/png", viewport="100,100,0,0,64,32")
    assert Image.open(BytesIO(crop.content)).size == (100, 50)
    for path in (
        f"/dicomweb/studies/{study}/rendered",
        f"/dicomweb/studies/{study}/series/{series}/rendered",
        url("CT_small.dcm", "/frames/1/rendered"),
    ):
        assert Image.open(BytesIO(get(web, path).content)).size == (128, 128)
    rgb = get(web, url("HTJ2K_08_RGB.dcm", "/rendered"), "image/png")
    assert Image.open(BytesIO(rgb.content)).mode == "RGB"
    assert get(web, url("CT_small.dcm", "/rendered"), "image/gif").status_code == 406
    assert get(web, url("CT_small.dcm", "/rendered"), "image/png", window="40").status_code == 400
    assert get(web, url("rtplan.dcm", "/rendered")).status_code == 404


def test_thumbnail(web: World) -> None:
    study, _, _ = uids(web_sample("SC_rgb_jpeg_dcmtk.dcm"))
    image = Image.open(BytesIO(get(web, url("HTJ2K_08_RGB.dcm", "/thumbnail")).content))
    assert image.size == (128, 96)  # 640 x 480 fitted into 128 x 128
    study_thumb = get(web, f"/dicomweb/studies/{study}/thumbnail", "image/png", viewport="50,50")
    assert Image.open(BytesIO(study_thumb.content)).size == (50, 50)


def test_wado_uri(web: World) -> None:
    study, series, instance = uids(web_sample("MR_small_RLE.dcm"))
    params = {"requestType": "WADO", "studyUID": study, "seriesUID": series, "objectUID": instance}
    as_stored = get(
        web, "/dicomweb/wado", contentType="application/dicom", transferSyntax="*", **params
    )
    assert as_stored.headers["content-type"] == "application/dicom"
    assert as_stored.content == web_sample("MR_small_RLE.dcm")
    native = get(web, "/dicomweb/wado", contentType="application/dicom", **params)
    assert dcmread(BytesIO(native.content)).file_meta.TransferSyntaxUID == EXPLICIT
    jpeg = get(web, "/dicomweb/wado", contentType="image/jpeg", rows="32", columns="32", **params)
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(BytesIO(jpeg.content)).size == (32, 32)
    assert get(web, "/dicomweb/wado", **params).headers["content-type"] == "image/jpeg"
    plan = dict(
        zip(("studyUID", "seriesUID", "objectUID"), uids(web_sample("rtplan.dcm")), strict=True)
    )
    default = get(web, "/dicomweb/wado", requestType="WADO", transferSyntax="*", **plan)
    assert default.content == web_sample("rtplan.dcm")  # no image: application/dicom
    assert get(web, "/dicomweb/wado", **{**params, "requestType": "X"}).status_code == 400
    assert get(web, "/dicomweb/wado", anonymize="yes", **params).status_code == 501


def test_retrieval_is_audited(web: World) -> None:
    from sqlalchemy import select

    from salus.db.tables import audit_events

    get(web, url("CT_small.dcm"), DICOM_ANY)
    with web.services.db.read() as conn:
        rows = conn.execute(
            select(audit_events.c.entity, audit_events.c.action).where(
                audit_events.c.category == "dicom"
            )
        ).all()
    study, _, _ = uids(web_sample("CT_small.dcm"))
    assert (f"dicom:studies/{study}", "R") in {(r[0], r[1]) for r in rows}
