//! `synguard report`: the incident report from the journal.

use std::{path::Path, time::Duration};

use crate::cli::ReportFormat;

pub fn report(
    _state_dir: &Path,
    _since: Option<Duration>,
    _format: ReportFormat,
    _output: Option<&Path>,
) -> anyhow::Result<()> {
    anyhow::bail!("`synguard report` is not built yet")
}
