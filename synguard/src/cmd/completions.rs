//! `synguard completions SHELL` and `synguard man [DIR]`: generated from the CLI
//! definition itself (`crate::docs`).

use std::io::Write as _;

use crate::cli::Shell;

pub fn completions(shell: Shell) -> anyhow::Result<()> {
    std::io::stdout().write_all(&crate::docs::completions(shell))?;
    Ok(())
}

pub fn man(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    crate::docs::write_man(out_dir)
}
