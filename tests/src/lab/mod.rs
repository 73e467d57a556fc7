//! The lab: what `cargo xtask lab` runs (`src/bin/sg-lab.rs`), and what the lab's own
//! test (`tests/tests/lab.rs`), the attack-mode tests and the bench's survival runs
//! reuse of it. A module belongs here when it is the lab's: its network, its web server,
//! its scenarios and what they measure; anything a test needs without the lab belongs in
//! the [`kit`](crate::kit).
//!
//! - `net.rs`: the lab's network ([`LabNet`]), its web server and `synguard` on it;
//! - `run.rs`: the scenarios, the employees, one [`run`] and its [`table`].
//!
//! ```text
//!  employees 198.51.100.10-29 ─┐                     ┌─ server 192.0.2.1 (nginx, synguard)
//!  2001:db8:5::10-29           ├── router ───────────┤  2001:db8:2::1
//!  attacker 203.0.113.0 (+ .2-.251 for many-sources) ┘  └─ sink: replies to forged
//!  2001:db8:6::1                                           sources (198.18.0.0/15,
//!                                                          2001:db8:8000::/33)
//! ```
//!
//! The `container` profiles put the web server in a container namespace behind the
//! server, `192.0.2.194` and `2001:db8:3::2`, reached through a DNAT of the server's port
//! 80 (nftables, as Docker publishes a port); `container` also keeps a listener on the
//! server's port 80, as docker-proxy does.
//!
//! Every run builds its own namespaces (nothing is linked to the host's) and removes them
//! when it ends, however it ends. Numbers are measured in the run; nothing is assumed.
mod net;
mod run;

pub use net::*;
pub use run::*;
