//! The Prometheus endpoint (`metrics_listen`, off by default): every value
//! is read from the node when scraped, so nothing is registered or forgotten
//! as vdisks come and go.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::anyhow;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::daemon::cluster::LinkMetrics;
use crate::daemon::{lock, Daemon};

type Labels = Vec<(&'static str, String)>;

/// Reads the node's vdisks, the membership and the store at each scrape.
struct NodeCollector {
    daemon: Arc<Daemon>,
}

/// The registry wants its collectors printable.
impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeCollector")
    }
}

/// One metric family: its samples, each with its labels.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let Some(metric_type) = samples.first().map(|(_, m)| m.metric_type()) else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, sample) in &samples {
        sample.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

fn vdisk(name: &str) -> Labels {
    vec![("vdisk", name.to_owned())]
}

fn with(mut labels: Labels, key: &'static str, value: &str) -> Labels {
    labels.push((key, value.to_owned()));
    labels
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (vdisks, links) = {
            let node = lock(&self.daemon.node);
            (node.metrics(), node.link_metrics())
        };
        let e = &mut encoder;
        let count = |c: &prometheus_client::metrics::counter::Counter| ConstCounter::new(c.get());
        let mut requests = Vec::new();
        let mut bytes = Vec::new();
        for v in &vdisks {
            let (name, io) = (&v.info.name, &v.io);
            for (op, counter) in [
                ("read", &io.reads),
                ("write", &io.writes),
                ("flush", &io.flushes),
                ("discard", &io.discards),
            ] {
                requests.push((with(vdisk(name), "op", op), count(counter)));
            }
            bytes.push((
                with(vdisk(name), "direction", "read"),
                count(&io.read_bytes),
            ));
            bytes.push((
                with(vdisk(name), "direction", "write"),
                count(&io.written_bytes),
            ));
        }
        family(
            e,
            "ublkvd_vdisk_requests",
            "Requests completed, by operation",
            requests,
        )?;
        family(e, "ublkvd_vdisk_bytes", "Bytes read and written", bytes)?;
        let per_vdisk = |f: &dyn Fn(&crate::node::VdiskMetrics) -> u64| {
            vdisks
                .iter()
                .map(|v| (vdisk(&v.info.name), ConstCounter::new(f(v))))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "ublkvd_vdisk_errors",
            "Requests that completed with an error",
            per_vdisk(&|v| v.io.errors.get()),
        )?;
        let in_flight = vdisks
            .iter()
            .map(|v| (vdisk(&v.info.name), ConstGauge::new(v.io.in_flight.get())))
            .collect();
        family(e, "ublkvd_vdisk_in_flight", "Requests in flight", in_flight)?;
        let latency = vdisks
            .iter()
            .map(|v| (vdisk(&v.info.name), v.io.latency.clone()))
            .collect();
        family(
            e,
            "ublkvd_vdisk_request_duration_seconds",
            "Time from request to completion",
            latency,
        )?;

        let routed: Vec<_> = vdisks
            .iter()
            .filter_map(|v| Some((v, v.routing.as_ref()?)))
            .collect();
        let routing_counter = |f: &dyn Fn(&backend::route::VdiskCounters) -> u64| {
            routed
                .iter()
                .map(|(v, r)| (vdisk(&v.info.name), ConstCounter::new(f(r))))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "ublkvd_vdisk_resends",
            "Attempts that resent a request on another path",
            routing_counter(&|r| r.resends.load(Ordering::Relaxed)),
        )?;
        family(
            e,
            "ublkvd_vdisk_failovers",
            "Requests that completed only after a resend",
            routing_counter(&|r| r.failovers.load(Ordering::Relaxed)),
        )?;
        family(
            e,
            "ublkvd_vdisk_io_timeouts",
            "Requests failed after no path answered for the I/O timeout",
            routing_counter(&|r| r.errors.load(Ordering::Relaxed)),
        )?;
        let stalls = routed
            .iter()
            .map(|(v, r)| (vdisk(&v.info.name), r.failover_stall.clone()))
            .collect();
        family(
            e,
            "ublkvd_vdisk_failover_stall_seconds",
            "Submission to completion of requests that failed over",
            stalls,
        )?;

        let mut reachable = Vec::new();
        let mut completed = Vec::new();
        for v in &vdisks {
            for path in &v.info.paths {
                let labels = with(vdisk(&v.info.name), "path", &path.name);
                reachable.push((labels.clone(), ConstGauge::new(i64::from(path.reachable))));
                completed.push((labels, ConstCounter::new(path.completed)));
            }
        }
        family(
            e,
            "ublkvd_path_reachable",
            "1 while the path can take requests",
            reachable,
        )?;
        family(
            e,
            "ublkvd_path_completed",
            "Requests the path completed",
            completed,
        )?;
        let link = |l: &LinkMetrics| vec![("peer", l.peer.clone()), ("addr", l.addr.to_string())];
        let gauges = |f: &dyn Fn(&LinkMetrics) -> i64| {
            links
                .iter()
                .map(|l| (link(l), ConstGauge::new(f(l))))
                .collect::<Vec<_>>()
        };
        let counters = |f: &dyn Fn(&LinkMetrics) -> u64| {
            links
                .iter()
                .map(|l| (link(l), ConstCounter::new(f(l))))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "ublkvd_link_up",
            "1 while the link is connected and answers heartbeats",
            gauges(&|l| i64::from(l.up)),
        )?;
        family(
            e,
            "ublkvd_link_ups",
            "Times the link came up",
            counters(&|l| l.ups),
        )?;
        family(
            e,
            "ublkvd_link_downs",
            "Times the link went down",
            counters(&|l| l.downs),
        )?;
        family(
            e,
            "ublkvd_link_renewals",
            "Times the link replaced its TLS session (a new handshake, new keys) after it carried its records; each is also a down and an up",
            counters(&|l| l.renewals),
        )?;
        family(
            e,
            "ublkvd_link_sent_bytes",
            "Frame bytes sent on the link",
            counters(&|l| l.sent_bytes),
        )?;
        family(
            e,
            "ublkvd_link_received_bytes",
            "Frame bytes received on the link",
            counters(&|l| l.received_bytes),
        )?;
        family(
            e,
            "ublkvd_link_heartbeat_rtt_microseconds",
            "Round trip of the latest heartbeat",
            gauges(&|l| l.heartbeat_rtt_us as i64),
        )?;

        if let Some(gossip) = &self.daemon.gossip {
            let view = gossip.view().borrow().clone();
            let one = |value: i64| vec![(Labels::new(), ConstGauge::new(value))];
            family(
                e,
                "ublkvd_members_alive",
                "Live members, this node included",
                one(view.alive.len() as i64 + 1),
            )?;
            family(
                e,
                "ublkvd_membership_config_number",
                "Grows on every change of the live members",
                one(view.config_number as i64),
            )?;
            let counters = gossip.counters();
            let datagrams = vec![
                (
                    vec![("direction", "sent".to_owned())],
                    ConstCounter::new(counters.sent.load(Ordering::Relaxed)),
                ),
                (
                    vec![("direction", "received".to_owned())],
                    ConstCounter::new(counters.received.load(Ordering::Relaxed)),
                ),
            ];
            family(e, "ublkvd_gossip_datagrams", "Gossip datagrams", datagrams)?;
            let rejected = [
                ("unauthenticated", &counters.rejected),
                ("stale", &counters.stale),
                ("replayed", &counters.replayed),
            ]
            .into_iter()
            .map(|(reason, counter)| {
                (
                    vec![("reason", reason.to_owned())],
                    ConstCounter::new(counter.load(Ordering::Relaxed)),
                )
            })
            .collect();
            family(
                e,
                "ublkvd_gossip_rejected",
                "Gossip datagrams dropped: unauthenticated (without the cluster secret, or altered), stale (outside the clock window) or replayed (received already)",
                rejected,
            )?;
        }

        let mirrors: Vec<_> = vdisks
            .iter()
            .filter_map(|v| Some((vdisk(&v.info.name), v.info.resync.as_ref()?)))
            .collect();
        let per_mirror = |f: &dyn Fn(&crate::control::ResyncInfo) -> u64| {
            mirrors
                .iter()
                .map(|(labels, r)| (labels.clone(), ConstGauge::new(f(r) as i64)))
                .collect::<Vec<_>>()
        };
        family(
            e,
            "ublkvd_mirror_in_sync",
            "1 while both copies of a mirrored vdisk this node is primary of hold every write",
            per_mirror(&|r| u64::from(r.state == "in sync")),
        )?;
        family(
            e,
            "ublkvd_mirror_dirty_bytes",
            "Bytes of the regions the mirror lacks: what the resync has left to copy",
            per_mirror(&|r| r.dirty_bytes),
        )?;
        family(
            e,
            "ublkvd_mirror_resync_rate_bytes_per_second",
            "How fast the resync copies now",
            per_mirror(&|r| r.rate_bytes_per_sec),
        )?;
        let resynced = mirrors
            .iter()
            .map(|(labels, r)| (labels.clone(), ConstCounter::new(r.resynced_bytes)))
            .collect();
        family(
            e,
            "ublkvd_mirror_resynced_bytes",
            "Bytes the resync copied since this node became the primary",
            resynced,
        )?;

        let store = self.daemon.store_info();
        let one = |value: u64| vec![(Labels::new(), ConstGauge::new(value as i64))];
        family(
            e,
            "ublkvd_store_leader",
            "1 on the configuration store's leader, else 0",
            one(u64::from(store.role == configdb::StoreRole::Leader)),
        )?;
        family(
            e,
            "ublkvd_store_term",
            "The store's Raft term",
            one(store.term),
        )?;
        family(
            e,
            "ublkvd_store_last_log_index",
            "The last index in this node's store log",
            one(store.last_log_index),
        )?;
        family(
            e,
            "ublkvd_store_last_applied_index",
            "The last index this node has applied",
            one(store.last_applied),
        )?;
        family(
            e,
            "ublkvd_store_generation",
            "The configuration's generation: grows with every change",
            one(store.generation),
        )?;
        Ok(())
    }
}

/// Serves `GET /metrics` on `addr` from a thread of its own until the
/// process exits.
pub fn serve(addr: SocketAddr, daemon: Arc<Daemon>) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(addr)
        .map_err(|e| anyhow!("cannot listen for metrics on {addr}: {e}"))?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector { daemon }));
    tracing::info!(%addr, "serving metrics at /metrics");
    let content_type = tiny_http::Header::from_bytes(
        &b"Content-Type"[..],
        &b"application/openmetrics-text; version=1.0.0; charset=utf-8"[..],
    )
    .map_err(|()| anyhow!("bad content type header"))?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = if request.url() == "/metrics" {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => {
                            tiny_http::Response::from_string(body).with_header(content_type.clone())
                        }
                        Err(_) => tiny_http::Response::from_string("cannot encode metrics\n")
                            .with_status_code(500),
                    }
                } else {
                    tiny_http::Response::from_string("try /metrics\n").with_status_code(404)
                };
                if let Err(e) = request.respond(response) {
                    tracing::debug!("metrics response: {e}");
                }
            }
        })?;
    Ok(())
}
