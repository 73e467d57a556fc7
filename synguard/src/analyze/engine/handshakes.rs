//! Handshakes: SYNs pending an answer, retransmissions, completions (the proofs the
//! agent would record) and the segments other than SYNs.

use super::*;

impl Engine {
    /// A SYN's handshake: returns whether it is a retransmission.
    pub(super) fn pending_syn(&mut self, now: u64, s: &Seg<'_>, key: Key) -> bool {
        if now.saturating_sub(self.pend_since) >= PENDING_AGE_NS || self.pend.len() >= PENDING {
            if self.pend.len() >= PENDING {
                self.c.pending_rotations_early += 1;
            }
            self.rotate(now);
        }
        let h = self.flow(s.src, s.dst, s.sport, s.dport);
        let found = match self.pend.get_mut(&h) {
            Some(p) => Some(*p),
            None => self.pend_old.remove(&h),
        };
        if let Some(mut p) = found {
            if p.isn == s.seq {
                // The same SYN again. A TCP stack sends it again only after its
                // retransmission timeout (1 s, then doubling; at least 200 ms anywhere);
                // sooner it is the same packet captured twice (`-i any` on a bridge) or a
                // flood tool repeating itself, neither a client kept waiting.
                let retrans = now.saturating_sub(p.last) >= MIN_RTO_NS;
                p.last = now;
                self.c.retrans += u64::from(retrans);
                self.pend.insert(h, p);
                return retrans;
            }
            // The same ports again with a new sequence: a new connection; the old one
            // never completed.
            self.expire(p);
        }
        self.pend.insert(
            h,
            Pend {
                client: key,
                t: now,
                last: now,
                isn: s.seq,
                srv_isn: 0,
                synack: false,
            },
        );
        false
    }

    pub(super) fn rotate(&mut self, now: u64) {
        let mut old = std::mem::take(&mut self.pend_old);
        for (_, p) in old.drain() {
            self.expire(p);
        }
        self.pend_old = std::mem::replace(&mut self.pend, old);
        self.pend_since = now;
    }

    /// A handshake that never completed.
    pub(super) fn expire(&mut self, p: Pend) {
        self.c.never_completed += 1;
        self.c.never_acked += u64::from(p.synack);
        if let Some(t) = self.talkers.get_mut(&p.client) {
            t.failed = t.failed.saturating_add(1);
        }
        if self.cur.open && p.t >= self.cur.start {
            // Counted into the flood when it closes.
            self.cur.never += 1;
        } else {
            let i = self.floods.partition_point(|f| f.start <= p.t);
            if let Some(f) = i.checked_sub(1).and_then(|i| self.floods.get_mut(i))
                && p.t <= f.end + ATTACK_CALM_NS
            {
                f.never_completed += 1;
            }
        }
    }

    /// A reset ended the handshake in progress `h`, if any: it never completed.
    pub(super) fn reset_pending(&mut self, h: u64) {
        if let Some(p) = self.pend.remove(&h).or_else(|| self.pend_old.remove(&h)) {
            self.expire(p);
        }
    }

    pub(super) fn synack(&mut self, s: &Seg<'_>) {
        self.c.synacks += 1;
        let h = self.flow(s.dst, s.src, s.dport, s.sport);
        let p = match self.pend.get_mut(&h) {
            Some(p) => Some(p),
            None => self.pend_old.get_mut(&h),
        };
        if let Some(p) = p {
            if p.synack && p.srv_isn == s.seq {
                self.c.synack_retrans += 1;
            }
            p.synack = true;
            p.srv_isn = s.seq;
        }
    }

    pub(super) fn other(&mut self, now: u64, s: &Seg<'_>, key: Key) {
        let rst = s.flags & RST != 0;
        self.c.rsts += u64::from(rst);
        if self.targets.contains_key(&(s.src, s.sport)) {
            // From a server to its client.
            let client = self.p.key(s.v6, s.dst);
            let status = http_status(s.payload);
            if let Some(code) = status {
                *self.c.http.entry(code).or_default() += 1;
            }
            self.c.rsts_from_server += u64::from(rst);
            if rst {
                // A refused connection (a closed port, a full backlog): never completed.
                self.reset_pending(self.flow(s.dst, s.src, s.dport, s.sport));
            }
            if let Some(t) = self.talkers.get_mut(&client) {
                if rst {
                    t.resets = t.resets.saturating_add(1);
                }
                if let Some(code) = status.filter(|&c| c >= 500) {
                    t.http_err = t.http_err.saturating_add(1);
                    t.last_http_err = code;
                }
            }
            return;
        }
        if !self.targets.contains_key(&(s.dst, s.dport)) {
            return;
        }
        // From a client to a server.
        self.c.rsts_to_server += u64::from(rst);
        if rst {
            // The client gave up, or a real host reset a SYN-ACK it never asked for.
            self.reset_pending(self.flow(s.src, s.dst, s.sport, s.dport));
        }
        let mut established = false;
        if s.flags & ACK != 0 && !rst {
            let h = self.flow(s.src, s.dst, s.sport, s.dport);
            let p = match self.pend.get(&h) {
                Some(p) => Some(*p),
                None => self.pend_old.get(&h).copied(),
            };
            if let Some(p) = p {
                let done = if p.synack {
                    s.ack == p.srv_isn.wrapping_add(1)
                } else {
                    // Only one direction captured: the client's ACK after its SYN.
                    s.seq == p.isn.wrapping_add(1)
                };
                if done {
                    self.pend.remove(&h);
                    self.pend_old.remove(&h);
                    self.c.completed += 1;
                    self.cur.completed += 1;
                    established = true;
                }
            }
        }
        let cookies = self.cookies_active();
        // A completed handshake proves the source owns its address: the agent's sock_ops
        // program records it, attack mode or not.
        if established {
            self.prove(now, key);
        }
        if let Some(t) = self.talkers.get_mut(&key) {
            t.answered = true;
            if established {
                t.completed = t.completed.saturating_add(1);
            }
            // In attack mode the agent verifies a source by its ACK: a valid cookie, or
            // a connection the kernel has.
            established |= t.completed > 0;
        }
        if cookies && established && s.flags & ACK != 0 && !rst {
            if self.verified.len() >= capacity::VERIFIED as usize {
                self.verified.retain(|_, until| *until > now);
            }
            if self.verified.len() < capacity::VERIFIED as usize {
                self.verified
                    .insert(key, now.saturating_add(self.p.verified_ns));
                self.agent[stat::N_VERIFIED] += 1;
            }
        }
    }

    /// Record a proof (the verified set), as the kernel does for a completed handshake.
    pub(super) fn prove(&mut self, now: u64, key: Key) {
        if self.verified.len() >= capacity::VERIFIED as usize {
            self.verified.retain(|_, until| *until > now);
        }
        if self.verified.len() < capacity::VERIFIED as usize {
            let until = now.saturating_add(self.p.verified_ns);
            let e = self.verified.entry(key).or_insert(until);
            *e = (*e).max(until);
        }
    }
}
