//! Profiles in the store: one current row per workload and its history, so
//! a change can be looked back on and undone.

use crate::*;

/// One version of a workload's profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredProfile {
    pub digest: String,
    pub image: String,
    pub mode: String,
    pub version: u64,
    pub document: String,
    pub updated_ns: u64,
}

/// A profile's head, without its document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProfileSummary {
    pub digest: String,
    pub image: String,
    pub mode: String,
    pub version: u64,
    pub updated_ns: u64,
}

fn stored_profile(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredProfile> {
    Ok(StoredProfile {
        digest: r.get(0)?,
        image: r.get(1)?,
        mode: r.get(2)?,
        version: to_u64(r.get(3)?),
        document: r.get(4)?,
        updated_ns: to_u64(r.get(5)?),
    })
}

impl Store {
    /// Stores `document` as the profile of `digest` and returns its version. A new
    /// version is made only when the document differs from the current one; when only
    /// `image` or `mode` changed, the head is updated and the version stays. Versions
    /// start at 1; only the last [`StoreOptions::profile_history`] are kept.
    pub fn put_profile(&mut self, digest: &str, image: &str, mode: &str, document: &str, now_ns: u64) -> Result<u64> {
        if digest.is_empty() {
            return Err(StoreError::Invalid("a profile needs a non-empty digest".into()));
        }
        self.begin_write()?;
        let keep = self.opts.profile_history.max(1) as i64;
        let path = self.path.clone();
        let e = |e| StoreError::sqlite(&path, e);
        let sp = self.conn.savepoint().map_err(e)?;
        let head: Option<(String, String, i64, String)> = sp
            .prepare_cached(
                "SELECT p.image, p.mode, p.version, v.document FROM profiles p
                 JOIN profile_versions v ON v.digest = p.digest AND v.version = p.version
                 WHERE p.digest = ?1",
            )
            .and_then(|mut s| s.query_row([digest], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).optional())
            .map_err(e)?;
        let version = match head {
            Some((old_image, old_mode, version, old_doc)) if old_doc == document => {
                if old_image != image || old_mode != mode {
                    sp.prepare_cached("UPDATE profiles SET image = ?2, mode = ?3, updated_ns = ?4 WHERE digest = ?1")
                        .and_then(|mut s| s.execute(params![digest, image, mode, to_i64(now_ns)]))
                        .map_err(e)?;
                }
                version
            }
            head => {
                let version = head.map_or(1, |h| h.2 + 1);
                sp.prepare_cached(
                    "INSERT INTO profiles (digest, image, mode, version, updated_ns) VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (digest) DO UPDATE SET image = excluded.image, mode = excluded.mode,
                         version = excluded.version, updated_ns = excluded.updated_ns",
                )
                .and_then(|mut s| s.execute(params![digest, image, mode, version, to_i64(now_ns)]))
                .map_err(e)?;
                sp.prepare_cached(
                    "INSERT INTO profile_versions (digest, version, image, mode, document, created_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .and_then(|mut s| s.execute(params![digest, version, image, mode, document, to_i64(now_ns)]))
                .map_err(e)?;
                sp.prepare_cached("DELETE FROM profile_versions WHERE digest = ?1 AND version <= ?2")
                    .and_then(|mut s| s.execute(params![digest, version - keep]))
                    .map_err(e)?;
                tracing::debug!(digest, version, "profile version stored");
                version
            }
        };
        sp.commit().map_err(e)?;
        self.end_write()?;
        Ok(to_u64(version))
    }

    /// The current version of the profile of `digest`.
    pub fn profile(&self, digest: &str) -> Result<Option<StoredProfile>> {
        self.conn
            .prepare_cached(
                "SELECT p.digest, p.image, p.mode, p.version, v.document, p.updated_ns FROM profiles p
                 JOIN profile_versions v ON v.digest = p.digest AND v.version = p.version
                 WHERE p.digest = ?1",
            )
            .and_then(|mut s| s.query_row([digest], stored_profile).optional())
            .map_err(|e| self.err(e))
    }

    /// The stored versions of the profile of `digest`, newest first, at most `limit`
    /// (0: all). Each carries the image and mode it was written with and its creation
    /// time as `updated_ns`.
    pub fn profile_history(&self, digest: &str, limit: usize) -> Result<Vec<StoredProfile>> {
        let limit = if limit == 0 { -1 } else { i64::try_from(limit).unwrap_or(i64::MAX) };
        self.conn
            .prepare_cached(
                "SELECT digest, image, mode, version, document, created_ns FROM profile_versions
                 WHERE digest = ?1 ORDER BY version DESC LIMIT ?2",
            )
            .and_then(|mut s| s.query_map(params![digest, limit], stored_profile)?.collect())
            .map_err(|e| self.err(e))
    }

    /// Every profile's head, ordered by digest.
    pub fn list_profiles(&self) -> Result<Vec<ProfileSummary>> {
        self.conn
            .prepare_cached("SELECT digest, image, mode, version, updated_ns FROM profiles ORDER BY digest")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(ProfileSummary {
                        digest: r.get(0)?,
                        image: r.get(1)?,
                        mode: r.get(2)?,
                        version: to_u64(r.get(3)?),
                        updated_ns: to_u64(r.get(4)?),
                    })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Deletes the profile of `digest` and its whole history (a reset: the next
    /// [`Store::put_profile`] starts again at version 1). Returns whether it existed.
    pub fn delete_profile(&mut self, digest: &str) -> Result<bool> {
        self.begin_write()?;
        let n = self
            .conn
            .prepare_cached("DELETE FROM profiles WHERE digest = ?1")
            .and_then(|mut s| s.execute([digest]))
            .map_err(|e| self.err(e))?;
        self.end_write()?;
        tracing::info!(digest, existed = n > 0, "profile deleted");
        Ok(n > 0)
    }
}
