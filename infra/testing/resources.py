"""Per-test resources on a running stack: a fresh database, bucket and topic prefix.

Fresh names per test make tests independent without restarting anything; teardown is
best effort because a failed test may have left connections or objects behind.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from blobledger.infra.settings import Settings
from blobledger.infra.stack.seaweed import s3_client


def with_database(dsn: str, dbname: str) -> str:
    """``dsn`` pointing at another database; URLs stay URLs so they read well in logs."""
    if dsn.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path=f"/{dbname}"))
    return make_conninfo(dsn, dbname=dbname)


def database_name(dsn: str) -> str:
    return str(conninfo_to_dict(dsn).get("dbname", ""))


def create_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10) as conn:
        # FORCE: a failed test may still hold pool connections
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _s3(settings: Settings):  # type: ignore[no-untyped-def]
    return s3_client(
        settings.s3_url,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_region,
        timeout=30,
    )


def create_bucket(settings: Settings, bucket: str) -> None:
    kwargs = {}
    if settings.s3_region != "us-east-1" and not settings.s3_url.startswith("http://127."):
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": settings.s3_region}
    _s3(settings).create_bucket(Bucket=bucket, **kwargs)


def delete_bucket(settings: Settings, bucket: str) -> None:
    """Abort open multipart uploads, delete every object, then the bucket."""
    client = _s3(settings)
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for up in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)
