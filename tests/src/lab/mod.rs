//! The lab: what `cargo xtask lab` runs (`src/bin/sg-lab.rs`), and what the lab's own
//! test (`tests/tests/lab.rs`), the attack-mode tests and the bench's survival runs
//! reuse of it. A module belongs here when it is the lab's: its network, its web server,
//! its scenarios and what they measure; anything a test needs without the lab belongs in
//! the [`kit`](crate::kit).
mod run;

pub use run::*;
