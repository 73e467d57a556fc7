//! The bench: what `cargo xtask bench` runs (`src/bin/sg-bench.rs`) and nothing else
//! does. A module belongs here when only the bench uses it; what tests use too belongs
//! in the [`kit`](crate::kit) (the bench's no-op programs and floors are in
//! [`kit::baseline`](crate::kit::baseline), since tests check them and the lab attaches
//! one).
//!
//! - [`survival`]: employees and CPU under floods, in the lab's network, one defence at a
//!   time;
//! - [`xdpfilter`]: xdp-filter's own programs as a yardstick.
pub mod survival;
pub mod xdpfilter;
