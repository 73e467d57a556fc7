//! Test and lab support for synguard: crafted packets, the real program under `TestRun`,
//! network namespaces with RAII guards, and processes that die with their guard.
pub mod packet;
pub mod prog;
