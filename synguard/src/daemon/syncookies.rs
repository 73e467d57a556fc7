//! `net.ipv4.tcp_syncookies` (and timestamps) as attack mode needs them, and attack
//! state picked up from adopted maps.

use super::*;

impl Daemon {
    /// Keep the kernel settings cookies answered from XDP need while they are (see
    /// `sysctls`), and put the previous values back afterwards: `tcp_syncookies` at once,
    /// `tcp_timestamps` six calm periods later (a minute by default), so the ACKs of the
    /// last cookies are still read without timestamp offsets. Every second: this also
    /// keeps the cookie SYN-ACK's options in step with the kernel's settings.
    pub(super) fn manage_syncookies(&mut self) {
        let want = match self.settings.syn_cookies {
            crate::config::Cookies::Always => true,
            crate::config::Cookies::Auto => !self.attacks.is_empty(),
            crate::config::Cookies::Off => false,
        };
        if want {
            self.cookies_wanted = Some(Instant::now());
        }
        let calm = self
            .maps
            .read_config()
            .map_or(synguard_common::ATTACK_CALM_NS, |c| c.attack_calm_ns);
        let linger = Duration::from_nanos(calm.saturating_mul(6));
        let want_ts = want || self.cookies_wanted.is_some_and(|t| t.elapsed() < linger);
        if let Err(e) = crate::sysctls::sync_syncookies(&self.pin_dir, &mut self.maps, want) {
            log::error!("managing net.ipv4.tcp_syncookies: {e:#}");
        }
        if let Err(e) = crate::sysctls::sync_timestamps(&self.pin_dir, &mut self.maps, want_ts) {
            log::error!("managing net.ipv4.tcp_timestamps: {e:#}");
        }
    }

    /// Attack state left on by a complete silence (no SYN closes a rate window, so the
    /// kernel never sees the calm): clear it once the calm period has passed.
    pub(super) fn settle_attacks(&mut self) {
        let now = clock::monotonic_ns();
        let calm = self
            .maps
            .read_config()
            .map_or(synguard_common::ATTACK_CALM_NS, |c| c.attack_calm_ns);
        for ifindex in self.names.keys().copied().collect::<Vec<_>>() {
            let slot = capacity::stats_slot(ifindex);
            let Ok(mut st) = self.maps.ifstate(slot) else {
                continue;
            };
            if st.attack != 0 && now.saturating_sub(st.rate_ns) > calm + 1_000_000_000 {
                let lasted = now.saturating_sub(st.since_ns) / 1_000_000;
                st.attack = 0;
                st.calm_since_ns = 0;
                if self.maps.ifstate.set(slot, st, 0).is_ok() {
                    self.on_attack(ifindex, false, st.peak_rate, lasted, false);
                }
            } else if st.attack != 0 && !self.attacks.contains(&ifindex) {
                // Adopted, or its event was lost: pick it up.
                self.on_attack(ifindex, true, st.rate, 0, false);
            }
        }
    }
}
