//! Schema and migrations. The schema version lives in `PRAGMA user_version`; migration
//! `n` (1-based) takes a store from version `n - 1` to `n`. Append new migrations to
//! [`MIGRATIONS`]; never edit a released one.
//!
//! Documents (profiles, alert JSON) are opaque text, so the engine's types can evolve
//! without a migration here.

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The tables a store of [`SCHEMA_VERSION`] must have.
pub(crate) const TABLES: &[&str] = &["profiles", "profile_versions", "alerts", "activity", "audit", "flows", "flow_nodes"];

pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: profiles with history, alerts, hourly activity.
    r#"
    -- The head of each workload's profile: its current version, mode and image.
    CREATE TABLE profiles (
        digest      TEXT    NOT NULL PRIMARY KEY,
        image       TEXT    NOT NULL,
        mode        TEXT    NOT NULL,
        version     INTEGER NOT NULL,
        updated_ns  INTEGER NOT NULL
    );
    -- Every stored version of a profile document (the last N per digest).
    CREATE TABLE profile_versions (
        digest      TEXT    NOT NULL REFERENCES profiles(digest) ON DELETE CASCADE,
        version     INTEGER NOT NULL,
        image       TEXT    NOT NULL,
        mode        TEXT    NOT NULL,
        document    TEXT    NOT NULL,
        created_ns  INTEGER NOT NULL,
        PRIMARY KEY (digest, version)
    ) WITHOUT ROWID;
    -- Falco-shaped alerts; the columns are the query keys, `json` the full document.
    CREATE TABLE alerts (
        id              INTEGER PRIMARY KEY,
        time_ns         INTEGER NOT NULL,
        last_time_ns    INTEGER NOT NULL,
        rule            TEXT    NOT NULL,
        priority        TEXT    NOT NULL,
        container_id    TEXT    NOT NULL,
        container_name  TEXT    NOT NULL,
        image           TEXT    NOT NULL,
        workload        TEXT    NOT NULL,
        action          TEXT    NOT NULL,
        enforced        INTEGER NOT NULL,
        count           INTEGER NOT NULL,
        json            TEXT    NOT NULL
    );
    CREATE INDEX alerts_last_time ON alerts(last_time_ns);
    CREATE INDEX alerts_rule ON alerts(rule, last_time_ns);
    -- Per-workload activity counters, one row per (digest, hour, kind).
    CREATE TABLE activity (
        digest   TEXT    NOT NULL,
        hour_ns  INTEGER NOT NULL,
        kind     TEXT    NOT NULL,
        n        INTEGER NOT NULL,
        PRIMARY KEY (digest, hour_ns, kind)
    ) WITHOUT ROWID;
    CREATE INDEX activity_hour ON activity(hour_ns);
    "#,
    // 2: who changed what through the agent's control plane.
    r#"
    -- One row per mutating request to the agent (or refused attempt): who (uid and
    -- pid of the peer when known, the channel it came through), what and the outcome.
    CREATE TABLE audit (
        id       INTEGER PRIMARY KEY,
        time_ns  INTEGER NOT NULL,
        uid      INTEGER,
        pid      INTEGER,
        channel  TEXT    NOT NULL,
        action   TEXT    NOT NULL,
        target   TEXT    NOT NULL,
        result   TEXT    NOT NULL
    );
    CREATE INDEX audit_time ON audit(time_ns);
    "#,
    // 3: hourly rollups of network flows, and the containers they name.
    r#"
    -- One row per (hour, source, destination, port, protocol). An end is a kind
    -- (container, host, external, others) and an id (container id or address); the
    -- names are those last seen. Counters are the hour's; verdict and rule the last.
    CREATE TABLE flows (
        hour_ns       INTEGER NOT NULL,
        src_kind      TEXT    NOT NULL,
        src           TEXT    NOT NULL,
        src_name      TEXT    NOT NULL,
        src_workload  TEXT    NOT NULL,
        dst_kind      TEXT    NOT NULL,
        dst           TEXT    NOT NULL,
        dst_name      TEXT    NOT NULL,
        dst_workload  TEXT    NOT NULL,
        port          INTEGER NOT NULL,
        proto         TEXT    NOT NULL,
        connections   INTEGER NOT NULL,
        failed        INTEGER NOT NULL,
        refused       INTEGER NOT NULL,
        bytes_out     INTEGER NOT NULL,
        bytes_in      INTEGER NOT NULL,
        first_ns      INTEGER NOT NULL,
        last_ns       INTEGER NOT NULL,
        verdict       TEXT    NOT NULL,
        rule          TEXT    NOT NULL,
        PRIMARY KEY (hour_ns, src_kind, src, dst_kind, dst, port, proto)
    ) WITHOUT ROWID;
    -- What a policy selects a container by: its workload, image, namespace, labels.
    CREATE TABLE flow_nodes (
        id         TEXT    NOT NULL PRIMARY KEY,
        name       TEXT    NOT NULL,
        workload   TEXT    NOT NULL,
        image      TEXT    NOT NULL,
        namespace  TEXT    NOT NULL,
        labels     TEXT    NOT NULL,
        last_ns    INTEGER NOT NULL
    );
    "#,
];
