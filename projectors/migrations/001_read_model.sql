-- The read model: a deterministic fold of the events topic. Every table is rebuilt by
-- `blobledger replay`; nothing here is a source of truth. Times are timestamptz (UTC).

CREATE TABLE objects (
    object_id          uuid PRIMARY KEY,
    tenant             text        NOT NULL,
    key                text        NOT NULL,
    version            bigint      NOT NULL,
    metadata           jsonb       NOT NULL,
    tags               text[]      NOT NULL,
    content_type       text,
    deleted            boolean     NOT NULL,
    acl                jsonb       NOT NULL,  -- {principal: [permission, ...]}
    blob_sha256        text,                  -- the committed blob (readers see this one)
    blob_size          bigint,
    blob_key           text,
    blob_upload_id     uuid,
    pending_upload_id  uuid,                  -- provisional reference, not yet visible
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);
-- prefix listing with keyset pagination on (key, object_id)
CREATE INDEX objects_tenant_key ON objects (tenant, key COLLATE "C", object_id);
CREATE INDEX objects_tags ON objects USING gin (tags);

-- one immutable snapshot per accepted version: history and "state as of"
CREATE TABLE object_versions (
    object_id          uuid        NOT NULL,
    version            bigint      NOT NULL,
    event_id           uuid        NOT NULL,
    event_type         text        NOT NULL,
    actor              text        NOT NULL,
    occurred_at        timestamptz NOT NULL,
    correlation_id     text        NOT NULL,
    key                text        NOT NULL,
    metadata           jsonb       NOT NULL,
    tags               text[]      NOT NULL,
    content_type       text,
    deleted            boolean     NOT NULL,
    acl                jsonb       NOT NULL,
    blob_sha256        text,
    blob_size          bigint,
    blob_key           text,
    blob_upload_id     uuid,
    pending_upload_id  uuid,
    PRIMARY KEY (object_id, version)
);
CREATE INDEX object_versions_time ON object_versions (object_id, occurred_at);

-- the fate of every event: idempotency key, read-your-writes answers, audit trail
CREATE TABLE event_outcomes (
    event_id        uuid PRIMARY KEY,
    object_id       uuid        NOT NULL,
    event_type      text        NOT NULL,
    tenant          text        NOT NULL,
    actor           text        NOT NULL,
    status          text        NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason          text,
    version         bigint      NOT NULL,
    correlation_id  text        NOT NULL,
    occurred_at     timestamptz NOT NULL,
    log_partition   integer     NOT NULL,
    log_offset      bigint      NOT NULL
);
CREATE INDEX event_outcomes_actor ON event_outcomes (actor, occurred_at, event_id);
CREATE INDEX event_outcomes_object ON event_outcomes (object_id, occurred_at);

CREATE TABLE uploads (
    upload_id          uuid PRIMARY KEY,
    object_id          uuid        NOT NULL,
    state              text        NOT NULL CHECK (state IN ('pending', 'stored', 'compensated', 'orphaned')),
    source             text        NOT NULL,
    requested_version  bigint      NOT NULL,
    requested_at       timestamptz NOT NULL,
    deadline           timestamptz NOT NULL,
    declared_sha256    text,
    declared_size      bigint,
    sha256             text,
    size               bigint,
    key                text,
    dedup              boolean     NOT NULL DEFAULT false,
    reason             text,
    finished_at        timestamptz
);
CREATE INDEX uploads_object ON uploads (object_id, requested_version);
CREATE INDEX uploads_pending_deadline ON uploads (deadline) WHERE state = 'pending';
CREATE INDEX uploads_orphaned ON uploads (sha256) WHERE state = 'orphaned';

-- content-addressed blobs known to be in S3, with how many objects commit to each
CREATE TABLE blobs (
    sha256           text PRIMARY KEY,
    size             bigint      NOT NULL,
    key              text        NOT NULL,
    ref_count        bigint      NOT NULL,
    first_stored_at  timestamptz NOT NULL
);
CREATE INDEX blobs_unreferenced ON blobs (sha256) WHERE ref_count <= 0;

-- the ACL flattened for "what may this actor read" filters
CREATE TABLE acl_entries (
    object_id   uuid NOT NULL,
    principal   text NOT NULL,
    permission  text NOT NULL,
    PRIMARY KEY (object_id, principal, permission)
);
CREATE INDEX acl_entries_principal ON acl_entries (principal, object_id);

-- tracking records: the next offset to fold, written in the same transaction as the view
CREATE TABLE checkpoints (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    next_offset  bigint      NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);
