//! `synguard analyze`: SYN floods in a packet capture.

use std::path::Path;

use crate::cli::ReportFormat;

pub fn analyze(_file: &Path, _format: ReportFormat, _output: Option<&Path>) -> anyhow::Result<()> {
    anyhow::bail!("`synguard analyze` is not built yet")
}
