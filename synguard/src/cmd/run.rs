//! `synguard run`: the daemon. Its code is `crate::daemon` (attaching, events,
//! housekeeping, tcp_syncookies), with the CrowdSec link in `crate::crowdsec`.

use std::path::PathBuf;

use crate::cli::RunArgs;

pub async fn run(pin_dir: PathBuf, state_dir: PathBuf, args: RunArgs) -> anyhow::Result<()> {
    crate::daemon::run(pin_dir, state_dir, args).await
}
