//! Hourly rollups of network flows, and the containers they name. The
//! agent adds what changed each second ([`Store::add_flows`]): counters
//! are summed into the hour's row, first and last seen widened, and the
//! verdict and rule of the latest observation kept. Kept like activity:
//! by age ([`StoreOptions::flow_retention`]) and, oldest hours first, by
//! count ([`StoreOptions::max_flow_rows`]), in [`Store::prune`].
//!
//! [`StoreOptions::flow_retention`]: crate::StoreOptions::flow_retention
//! [`StoreOptions::max_flow_rows`]: crate::StoreOptions::max_flow_rows

use lancet_engine::flows::{FlowCounters, FlowEnd, FlowRow};
use rusqlite::params;
use serde::Serialize;

use crate::{dur_ns, to_i64, to_u64, Result, Store, HOUR_NS};

/// A container the flows name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FlowNodeRecord {
    pub id: String,
    pub name: String,
    pub workload: String,
    pub image: String,
    pub namespace: String,
    /// The labels, as a JSON object (opaque here).
    pub labels: String,
    pub last_ns: u64,
}

impl Store {
    /// Adds the counters of `rows` to their hours' rows (made when missing).
    /// Batched like every write.
    pub fn add_flows(&mut self, rows: &[FlowRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        self.begin_write()?;
        for r in rows {
            let hour = r.hour_ns - r.hour_ns % HOUR_NS;
            self.conn
                .prepare_cached(
                    "INSERT INTO flows (hour_ns, src_kind, src, src_name, src_workload, dst_kind, dst, dst_name, dst_workload,
                         port, proto, connections, failed, refused, bytes_out, bytes_in, first_ns, last_ns, verdict, rule)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
                     ON CONFLICT (hour_ns, src_kind, src, dst_kind, dst, port, proto) DO UPDATE SET
                         src_name = excluded.src_name,
                         src_workload = excluded.src_workload,
                         dst_name = excluded.dst_name,
                         dst_workload = excluded.dst_workload,
                         connections = connections + excluded.connections,
                         failed = failed + excluded.failed,
                         refused = refused + excluded.refused,
                         bytes_out = bytes_out + excluded.bytes_out,
                         bytes_in = bytes_in + excluded.bytes_in,
                         first_ns = min(first_ns, excluded.first_ns),
                         verdict = CASE WHEN excluded.last_ns >= last_ns THEN excluded.verdict ELSE verdict END,
                         rule = CASE WHEN excluded.last_ns >= last_ns THEN excluded.rule ELSE rule END,
                         last_ns = max(last_ns, excluded.last_ns)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        to_i64(hour),
                        r.src.kind,
                        r.src.id,
                        r.src.name,
                        r.src.workload,
                        r.dst.kind,
                        r.dst.id,
                        r.dst.name,
                        r.dst.workload,
                        r.port,
                        r.proto,
                        to_i64(r.counts.connections),
                        to_i64(r.counts.failed),
                        to_i64(r.counts.refused),
                        to_i64(r.counts.bytes_out),
                        to_i64(r.counts.bytes_in),
                        to_i64(r.counts.first_ns),
                        to_i64(r.counts.last_ns),
                        r.verdict,
                        r.rule,
                    ])
                })
                .map_err(|e| self.err(e))?;
        }
        self.end_write()
    }

    /// Records (or refreshes) the containers flows name.
    pub fn put_flow_nodes(&mut self, nodes: &[FlowNodeRecord]) -> Result<()> {
        if nodes.is_empty() {
            return Ok(());
        }
        self.begin_write()?;
        for n in nodes {
            self.conn
                .prepare_cached(
                    "INSERT INTO flow_nodes (id, name, workload, image, namespace, labels, last_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, workload = excluded.workload, image = excluded.image,
                         namespace = excluded.namespace, labels = excluded.labels, last_ns = max(last_ns, excluded.last_ns)",
                )
                .and_then(|mut s| s.execute(params![n.id, n.name, n.workload, n.image, n.namespace, n.labels, to_i64(n.last_ns)]))
                .map_err(|e| self.err(e))?;
        }
        self.end_write()
    }

    /// The hourly rows whose last observation is at or after `since_ns`,
    /// with a container end named `container` (its name, or a prefix of at
    /// least 3 characters of its id) when given; newest hour first, so that
    /// a `limit` (0: none) cuts the oldest.
    pub fn flows(&self, since_ns: u64, container: Option<&str>, limit: usize) -> Result<Vec<FlowRow>> {
        let hour = since_ns - since_ns % HOUR_NS;
        let limit = if limit == 0 { -1 } else { i64::try_from(limit).unwrap_or(i64::MAX) };
        self.conn
            .prepare_cached(
                "SELECT hour_ns, src_kind, src, src_name, src_workload, dst_kind, dst, dst_name, dst_workload, port, proto,
                        connections, failed, refused, bytes_out, bytes_in, first_ns, last_ns, verdict, rule
                 FROM flows WHERE hour_ns >= ?1 AND last_ns >= ?2
                   AND (?4 IS NULL
                        OR (src_kind = 'container' AND (src_name = ?4 OR (length(?4) >= 3 AND substr(src, 1, length(?4)) = ?4)))
                        OR (dst_kind = 'container' AND (dst_name = ?4 OR (length(?4) >= 3 AND substr(dst, 1, length(?4)) = ?4))))
                 ORDER BY hour_ns DESC, src_kind, src, dst_kind, dst, port, proto LIMIT ?3",
            )
            .and_then(|mut s| {
                s.query_map(params![to_i64(hour), to_i64(since_ns), limit, container], |r| {
                    Ok(FlowRow {
                        hour_ns: to_u64(r.get(0)?),
                        src: FlowEnd { kind: r.get(1)?, id: r.get(2)?, name: r.get(3)?, workload: r.get(4)? },
                        dst: FlowEnd { kind: r.get(5)?, id: r.get(6)?, name: r.get(7)?, workload: r.get(8)? },
                        port: r.get(9)?,
                        proto: r.get(10)?,
                        counts: FlowCounters {
                            connections: to_u64(r.get(11)?),
                            failed: to_u64(r.get(12)?),
                            refused: to_u64(r.get(13)?),
                            bytes_out: to_u64(r.get(14)?),
                            bytes_in: to_u64(r.get(15)?),
                            first_ns: to_u64(r.get(16)?),
                            last_ns: to_u64(r.get(17)?),
                        },
                        verdict: r.get(18)?,
                        rule: r.get(19)?,
                    })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Every container the flows name.
    pub fn flow_nodes(&self) -> Result<Vec<FlowNodeRecord>> {
        self.conn
            .prepare_cached("SELECT id, name, workload, image, namespace, labels, last_ns FROM flow_nodes ORDER BY id")
            .and_then(|mut s| {
                s.query_map([], |r| {
                    Ok(FlowNodeRecord {
                        id: r.get(0)?,
                        name: r.get(1)?,
                        workload: r.get(2)?,
                        image: r.get(3)?,
                        namespace: r.get(4)?,
                        labels: r.get(5)?,
                        last_ns: to_u64(r.get(6)?),
                    })
                })?
                .collect()
            })
            .map_err(|e| self.err(e))
    }

    /// Retention of the flow rollups, inside [`Store::prune`]'s
    /// transaction: returns (rows expired by age, rows dropped over the
    /// cap, oldest hours first).
    pub(crate) fn prune_flows(&mut self, now_ns: u64) -> Result<(u64, u64)> {
        let cut = now_ns.saturating_sub(dur_ns(self.opts.flow_retention));
        let cut = cut - cut % HOUR_NS;
        let expired = self.exec("DELETE FROM flows WHERE hour_ns < ?1", params![to_i64(cut)])?;
        self.exec("DELETE FROM flow_nodes WHERE last_ns < ?1", params![to_i64(cut)])?;
        let count: i64 = self.conn.query_row("SELECT count(*) FROM flows", [], |r| r.get(0)).map_err(|e| self.err(e))?;
        let cap = to_i64(self.opts.max_flow_rows);
        let mut capped = 0;
        if count > cap {
            // Whole hours, oldest first, until under the cap.
            let hours: Vec<(i64, i64)> = self
                .conn
                .prepare_cached("SELECT hour_ns, count(*) FROM flows GROUP BY hour_ns ORDER BY hour_ns")
                .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
                .map_err(|e| self.err(e))?;
            let mut left = count;
            let current = to_i64(now_ns - now_ns % HOUR_NS);
            for (hour, n) in hours {
                // The hour being written stays, whatever its size.
                if left <= cap || hour >= current {
                    break;
                }
                capped += self.exec("DELETE FROM flows WHERE hour_ns = ?1", params![hour])?;
                left -= n;
            }
        }
        Ok((expired, capped))
    }
}
