//! The program's events: bans, challenges, attack mode starting and ending; the ring
//! buffer they come through.

use super::*;

impl Daemon {
    pub(super) fn on_event(&mut self, e: &Event) {
        match e.kind {
            EVENT_ATTACK_ON => {
                let challenged = e.syns == synguard_common::ATTACK_BY_CHALLENGE;
                return self.on_attack(e.ifindex, true, e.rate, 0, challenged);
            }
            EVENT_ATTACK_OFF => return self.on_attack(e.ifindex, false, e.rate, e.syns, false),
            EVENT_BAN | EVENT_CHALLENGE => {}
            _ => return,
        }
        let net = if e.family == FAMILY_V4 {
            v4_net(
                [e.addr[0], e.addr[1], e.addr[2], e.addr[3]],
                u32::from(e.prefix_len),
            )
        } else {
            v6_net(e.addr, u32::from(e.prefix_len))
        };
        let Some(net) = net else { return };
        if e.kind == EVENT_CHALLENGE {
            return self.on_challenge(e, net);
        }
        self.known_bans.insert(net);
        let until = clock::rfc3339(clock::to_wall(e.expires_ns));
        log::warn!(
            "banned {net} on {}: {}, for {} (until {until})",
            self.iface_name(e.ifindex),
            describe_rate(e.syns, e.rate),
            format_duration(Duration::from_nanos(e.expires_ns.saturating_sub(e.time_ns))),
        );
        self.journal(journal::Event::Ban {
            prefix: net.to_string(),
            interface: self.iface_name(e.ifindex),
            syns: e.syns,
            syn_rate: e.rate,
            until,
        });
        self.purge(&net);
        self.share_ban(net, e.syns, e.rate, e.expires_ns);
    }

    /// Hand a new ban to the CrowdSec link, with its source's proof (see
    /// `crowdsec::enforce::Crowdsec::share_ban`).
    pub(super) fn share_ban(&mut self, net: IpNet, syns: u64, rate: u64, expires_ns: u64) {
        if self.crowdsec.is_none() {
            return;
        }
        let proof = self.proof_how(&net);
        if let Some(cs) = self.crowdsec.as_mut() {
            cs.share_ban(net, syns, rate, expires_ns, proof);
        }
    }

    /// How the source of `net` proved it owns its address (a `PROOF_*`), if its proof
    /// holds now.
    pub(super) fn proof_how(&self, net: &IpNet) -> Option<u32> {
        let key = crate::net::source_key(
            net.network(),
            self.settings.ipv4_prefix,
            self.settings.ipv6_prefix,
        );
        crate::proofs::get(&self.maps, &key, clock::monotonic_ns())
            .ok()
            .flatten()
            .map(|p| p.how)
    }

    /// A proven source went over its limit: say so once, with how it had proven itself.
    pub(super) fn on_challenge(&mut self, e: &Event, net: IpNet) {
        let proof = self.proof_how(&net).map_or("proven", crate::proofs::how);
        log::warn!(
            "{net} on {}: {}, but it {proof}: the SYNs carrying its address are most \
             likely forged; challenged with SYN cookies (attack mode), not banned",
            self.iface_name(e.ifindex),
            describe_rate(e.syns, e.rate),
        );
        self.journal(journal::Event::Challenge {
            prefix: net.to_string(),
            interface: self.iface_name(e.ifindex),
            syns: e.syns,
            syn_rate: e.rate,
            proof: proof.to_string(),
        });
    }

    /// Attack mode started or ended on an interface (events from several CPUs can repeat
    /// a transition: only real changes are logged).
    pub(super) fn on_attack(
        &mut self,
        ifindex: u32,
        on: bool,
        rate: u64,
        lasted_ms: u64,
        challenged: bool,
    ) {
        let was = self.attacks.contains(&ifindex);
        if on == was {
            return;
        }
        let name = self.iface_name(ifindex);
        if on {
            self.attacks.insert(ifindex);
            let what = match self.settings.syn_cookies {
                crate::config::Cookies::Off => {
                    "syn-cookies = off, so SYNs are only counted and metered".to_string()
                }
                _ => "SYNs from unverified sources are answered with SYN cookies from XDP as \
                      soon as the server's SYN queues run over (until then the kernel handles \
                      them as usual)"
                    .into(),
            };
            if challenged {
                log::warn!(
                    "attack mode ON on {name}: a proven source is over its limit (the SYNs in \
                     its name are most likely forged); {what}"
                );
            } else {
                log::warn!(
                    "attack mode ON on {name}: {rate} SYN/s (attack-syn-rate {}); {what}",
                    self.settings.attack_syn_rate
                );
            }
            self.journal(journal::Event::AttackOn {
                interface: name.clone(),
                syn_rate: rate,
                challenged,
            });
            // Nothing else happens here: the host's settings follow only if the SYN queues
            // run over (see `keeper`), and nothing is purged, so a handshake in flight
            // completes with its request still queued.
        } else {
            self.attacks.remove(&ifindex);
            log::warn!(
                "attack mode OFF on {name} after {} (peak {rate} SYN/s)",
                format_duration(Duration::from_millis(lasted_ms))
            );
            self.journal(journal::Event::AttackOff {
                interface: name.clone(),
                peak_syn_rate: rate,
                lasted_secs: lasted_ms / 1000,
            });
        }
    }
}

/// Watch a descriptor for readability on the runtime.
pub(super) fn readable<T: std::os::fd::AsRawFd>(inner: T) -> anyhow::Result<AsyncFd<T>> {
    // SAFETY: `T` (a ring buffer map or the log reader) owns its descriptor for its whole
    // life and always returns the same one.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow!("watching a BPF ring buffer: {}", std::io::Error::from(e)))
}

pub(super) fn drain_ring(ring: &mut RingBuf<MapData>, daemon: &mut Daemon) {
    while let Some(item) = ring.next() {
        if item.len() >= size_of::<Event>() {
            // SAFETY: the kernel writes whole `Event` records into this ring buffer.
            let e = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            daemon.on_event(&e);
        }
    }
}
