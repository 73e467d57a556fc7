//! `synguard analyze FILE|- [--format md|json] [--output FILE] [--KEY VALUE ...]`: a
//! capture judged by synguard's rules without a kernel (see `crate::analyze`).

use std::path::Path;

use crate::{analyze::analyze_reader, cli::ReportFormat, config::Settings, error::usage};

/// Analyse `file` (`-` for stdin) and print or write the report.
pub fn analyze(
    file: &Path,
    keys: &[(&'static str, String)],
    format: ReportFormat,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    let mut settings = Settings::default();
    for (k, v) in keys {
        settings.set(k, v).map_err(|e| usage(e.to_string()))?;
    }
    let (report, stopped) = if file.as_os_str() == "-" {
        use std::io::IsTerminal as _;
        if std::io::stdin().is_terminal() {
            return Err(usage(
                "`-` reads the capture from stdin, which is a terminal: pipe one in (`tcpdump \
                 -w - ... | synguard analyze -`) or give a file",
            ));
        }
        analyze_reader(std::io::stdin(), "stdin", &settings)?
    } else {
        let name = file.display().to_string();
        if file.is_dir() {
            return Err(usage(format!("{name} is a directory: give a capture file")));
        }
        let f = std::fs::File::open(file).map_err(|e| usage(format!("cannot open {name}: {e}")))?;
        analyze_reader(f, &name, &settings)?
    };
    report.emit(format, output)?;
    match stopped {
        // The report is out; the exit code still says the input was not all readable.
        Some(why) => Err(usage(format!(
            "{why}. Only part of the capture was analysed: check how it was recorded or copied"
        ))),
        None => Ok(()),
    }
}
