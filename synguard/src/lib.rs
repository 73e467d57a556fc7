//! synguard: a SYN-flood defence for Linux servers, in XDP.
//!
//! The library holds everything the `synguard` binary does, so integration tests can
//! drive the real program in the kernel through the same code.
pub mod analyze;
pub mod batch;
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod crowdsec;
pub mod daemon;
pub mod docs;
pub mod error;
pub mod incident;
pub mod journal;
pub mod kernel;
pub mod locals;
pub mod metrics;
pub mod nat;
pub mod net;
pub mod pins;
pub mod privs;
pub mod proofs;
pub mod report;
pub mod rules;
pub mod sockdiag;
pub mod sources;
pub mod sysctls;
pub mod upgrade;
pub mod verdict;
pub mod version;
