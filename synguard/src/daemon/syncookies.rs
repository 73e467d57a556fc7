//! Attack state picked up from adopted maps, or left on by a silence. (The host's
//! settings attack mode needs are the keeper's: see `keeper`.)

use super::*;

impl Daemon {
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
