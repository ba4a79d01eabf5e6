"""Object options end to end: METADATA, TAGS, CACHE_CONTROL and CONTENT_DISPOSITION reach the
store on single PUTs and multipart uploads, through both senders (DIRECT_PUT true and false).

moto stores all four (tags included); `rclone serve s3` stores metadata, Cache-Control and
Content-Disposition but not tags: it accepts x-amz-tagging and drops it, and answers
GetObjectTagging with a 500, so its test checks everything but the tags.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import pytest

from s3servers import S3Target
from svc import drop, names, running, settings_for, wait_until

MIB = 1024 * 1024
MTIME = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()

OPTIONS: dict[str, Any] = {
    "metadata": "Team=ops, year={m_YYYY}, name={fname}, src={spool_dir}",
    "tags": ["team=ops", "name={fname}", "year={m_YYYY}", "note=a b+c=d/e:f@g"],
    "cache_control": "max-age=86400, public",
    "content_disposition": 'attachment; filename="{fname}"',
    # a 6 MiB file goes multipart (two parts), the small ones in one PUT
    "multipart_threshold": "5MiB",
    "part_size": "5MiB",
}
FILES = {
    "report.csv": b"a,b\n1,2\n",
    "big 1+1=2%.bin": os.urandom(6 * MIB),  # UploadPart's signed path: ' ', '+', '%' quoted
    'caf\u00e9 "q".txt': b"non-ASCII and a quote in the name",
    "50%.csv": b"a percent sign, in the key as it is",
}
#: {fname} as each option carries it: in metadata non-ASCII, '"' and '%' are %XX (UTF-8);
#: in a tag what S3 refuses there is '_'; Content-Disposition as RFC 6266 has it
AS_HEADER = {n: n for n in FILES} | {
    'caf\u00e9 "q".txt': "caf%C3%A9 %22q%22.txt",
    "50%.csv": "50%25.csv",
    "big 1+1=2%.bin": "big 1+1=2%25.bin",
}
AS_TAG = {n: n for n in FILES} | {
    'caf\u00e9 "q".txt': "caf_ _q_.txt",
    "50%.csv": "50_.csv",
    "big 1+1=2%.bin": "big 1+1=2_.bin",
}
DISPOSITION = {n: f'attachment; filename="{n}"' for n in FILES} | {
    'caf\u00e9 "q".txt': 'attachment; filename="cafe _q_.txt"; '
    "filename*=UTF-8''caf%C3%A9%20%22q%22.txt",
    "50%.csv": "attachment; filename=\"50_.csv\"; filename*=UTF-8''50%25.csv",
    "big 1+1=2%.bin": 'attachment; filename="big 1+1=2_.bin"; '
    "filename*=UTF-8''big%201+1%3D2%25.bin",
}


def _check_object(s3: S3Target, name: str, spool: Path, *, tags: bool) -> None:
    head = s3.head(name)
    meta = {k.lower(): v for k, v in head["Metadata"].items()}  # rclone capitalises names
    want = {"team": "ops", "year": "2021", "name": AS_HEADER[name], "src": str(spool).strip("/")}
    assert {k: meta.get(k) for k in want} == want, meta
    # s3spool's own entries are still there, next to the user's
    assert {"s3spool-mtime", "s3spool-instance"} <= meta.keys()
    assert unquote_to_bytes(meta["name"]) == name.encode()  # lossless
    assert head["CacheControl"] == "max-age=86400, public"
    assert head["ContentDisposition"] == DISPOSITION[name]
    if tags:
        tag_set = s3.client().get_object_tagging(Bucket=s3.bucket, Key=name)["TagSet"]
        assert {t["Key"]: t["Value"] for t in tag_set} == {
            "team": "ops",
            "name": AS_TAG[name],
            "year": "2021",
            "note": "a b+c=d/e:f@g",
        }


async def _upload_all(spool: Path, s3: S3Target, **kw: Any) -> None:
    async with running(settings_for(spool, s3, **OPTIONS, **kw)):
        for name, data in FILES.items():
            drop(spool / "incoming", name, data, mtime=MTIME)
        await wait_until(lambda: names(spool / "done") == set(FILES), 60, "all files in done/")
    assert sorted(s3.keys()) == sorted(FILES)  # each key is its name
    for name, data in FILES.items():
        assert s3.get(name) == data


@pytest.mark.parametrize("direct_put", [True, False], ids=["direct", "botocore"])
async def test_options_reach_moto(spool: Path, moto_s3: S3Target, direct_put: bool) -> None:
    await _upload_all(spool, moto_s3, direct_put=direct_put)
    assert moto_s3.head("big 1+1=2%.bin")["Metadata"]["s3spool-part-size"] == str(5 * MIB)
    for name in FILES:
        _check_object(moto_s3, name, spool, tags=True)


async def test_options_reach_rclone(spool: Path, rclone_s3: S3Target) -> None:
    # rclone keeps metadata, Cache-Control and Content-Disposition; it drops tags (see top)
    await _upload_all(spool, rclone_s3)
    for name in FILES:
        _check_object(rclone_s3, name, spool, tags=False)


async def test_a_value_too_long_once_rendered_fails_the_file(
    spool: Path, moto_s3: S3Target
) -> None:
    """A tag value over S3's 256 characters after rendering: that file goes to failed/
    with reason bad_tag, before any request; the others upload."""
    long_name = "n" * 200
    settings = settings_for(spool, moto_s3, tags="twice={fname}{fname}")
    async with running(settings):
        drop(spool / "incoming", long_name, b"x")
        drop(spool / "incoming", "short", b"y")
        await wait_until(lambda: names(spool / "done") == {"short"})
        await wait_until(lambda: long_name in names(spool / "failed"))
    reason = json.loads((spool / "failed" / f"{long_name}.reason.json").read_text())
    assert reason["reason"] == "bad_tag"
    assert "S3SPOOL_TAGS (--tags)" in reason["error"]
    assert moto_s3.keys() == ["short"]
