//! What the agent says of full-NAT flows (`GET /nat`, `gateway nat`): the client behind each
//! SNAT address and port, for logs and abuse handling - backends only ever see the SNAT
//! address. And the drain of a SNAT address removed from the config: its live flows keep
//! their answers (the address stays a SNAT address to the program, and announced with
//! `[bgp]`) while no new flow is given it, until none is left.
use std::{
    collections::{BTreeSet, BinaryHeap},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use log::{info, warn};

use gateway_common::{
    FlowKey, NAT_DIR_FORWARD, NAT_RETRY, NAT_TCP_CLOSING, NAT_TCP_ESTABLISHED, NAT_TCP_REFUSED,
    NAT_TCP_RESET, NAT_TCP_SYN, NAT_UDP, NatValue, PROTO_TCP,
};

use super::Agent;
use crate::{
    admin::{NatMapping, NatQuery, NatReport, nat_matches},
    config::Protocol,
    dataplane::{DataplaneError, DataplaneOps},
    error::Chain,
    model::ip_of,
    neigh::NextHops,
};

fn state(v: &NatValue) -> &'static str {
    match v.state {
        NAT_TCP_SYN => "syn",
        NAT_TCP_ESTABLISHED => "established",
        NAT_TCP_CLOSING => "closing",
        NAT_TCP_RESET => "reset",
        NAT_TCP_REFUSED => "refused",
        NAT_UDP => "udp",
        _ => "unknown",
    }
}

/// A mapping ordered by its key alone (the report's order).
struct ByKey(FlowKey, NatValue);

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for ByKey {}
impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.cmp(&other.0)
    }
}

/// How often a draining SNAT address's mappings are counted (a walk of the NAT map).
pub const DRAIN_LOOK: Duration = Duration::from_secs(10);

impl<D: DataplaneOps, N: NextHops> Agent<D, N> {
    /// Finds the SNAT addresses that live (unexpired) mappings use but the config does not
    /// name, logs what started or finished draining, and returns whether that set changed
    /// (the caller plans again). A failed walk keeps the set as it was.
    pub(super) fn look_at_snat_draining(&mut self) -> bool {
        self.next_drain_look = Instant::now() + DRAIN_LOOK;
        let configured: BTreeSet<IpAddr> = self.config.dataplane.snat_addrs().collect();
        let now = crate::sys::monotonic_secs();
        let mut in_use: std::collections::BTreeMap<IpAddr, usize> = Default::default();
        let walked = self.dp.nat_visit(&mut |k, v| {
            let snat = ip_of(&v.src, k.family);
            if v.dir == NAT_DIR_FORWARD && !v.expired(now) && !configured.contains(&snat) {
                *in_use.entry(snat).or_default() += 1;
            }
        });
        if let Err(e) = walked {
            warn!("counting full-NAT mappings: {}", Chain(&e));
            return false;
        }
        let draining: BTreeSet<IpAddr> = in_use.keys().copied().collect();
        if draining == self.snat_draining {
            return false;
        }
        for (a, n) in &in_use {
            if !self.snat_draining.contains(a) {
                info!(
                    "SNAT address {a} is not in the config but {n} live flows use it: draining \
                     (no new flow is given it; their answers keep coming here)"
                );
            }
        }
        for a in self.snat_draining.difference(&draining) {
            info!("SNAT address {a} drained: no live flow uses it any more");
        }
        self.snat_draining = draining;
        true
    }

    /// The full-NAT flows `q` asks for, by service and client (a walk of the NAT map).
    pub fn nat_report(&self, q: &NatQuery) -> Result<NatReport, DataplaneError> {
        let now = crate::sys::monotonic_secs();
        // The first `limit` matches in key order, in a heap that never holds more: the
        // report stays small whatever the map holds.
        let mut first: BinaryHeap<ByKey> = BinaryHeap::new();
        let mut matched = 0;
        self.dp.nat_visit(&mut |k, v| {
            if v.dir == NAT_DIR_FORWARD
                && nat_matches(q.snat, ip_of(&v.src, k.family), u16::from_be(v.sport_be))
                && nat_matches(q.client, ip_of(&k.src, k.family), u16::from_be(k.sport_be))
            {
                matched += 1;
                first.push(ByKey(*k, *v));
                if first.len() > q.limit {
                    first.pop();
                }
            }
        })?;
        let mappings = first
            .into_sorted_vec()
            .iter()
            .map(|ByKey(k, v)| {
                let at = |a: &[u8; 16], port_be: u16| {
                    SocketAddr::new(ip_of(a, k.family), u16::from_be(port_be)).to_string()
                };
                let vip = ip_of(&k.dst, k.family);
                let protocol = if k.proto == PROTO_TCP {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                let service = self
                    .config
                    .services
                    .iter()
                    .find(|s| {
                        s.vip == vip && s.port == u16::from_be(k.dport_be) && s.protocol == protocol
                    })
                    .map_or_else(|| "(removed)".to_string(), |s| s.name.clone());
                NatMapping {
                    service,
                    protocol: protocol.to_string(),
                    client: at(&k.src, k.sport_be),
                    vip: at(&k.dst, k.dport_be),
                    snat: at(&v.src, v.sport_be),
                    backend: at(&v.dst, v.dport_be),
                    state: state(v).to_string(),
                    idle_seconds: now.saturating_sub(v.seen),
                    retried: v.flags & NAT_RETRY != 0,
                }
            })
            .collect();
        Ok(NatReport { matched, mappings })
    }
}
