//! `synguard report [--since DURATION] [--format md|json] [--output FILE]`: the journal
//! of `run` told as incidents (see `crate::report`, which builds the report).

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use crate::{cli::ReportFormat, journal, report::build};

pub fn report(
    state_dir: &Path,
    since: Option<Duration>,
    format: ReportFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let since_t = since.map(|d| SystemTime::now() - d);
    let (records, bad) = journal::read(state_dir, since_t)?;
    let r = build(&records, bad, &state_dir.display().to_string());
    r.emit(format, output)
}
