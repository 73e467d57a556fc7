//! `synguard completions SHELL` and `synguard man`: generated from the command-line
//! definition itself, so they can never drift from it.

use clap::CommandFactory as _;

use crate::cli::{Cli, Shell};

/// The completion script for `shell`.
pub fn completions(shell: Shell) -> Vec<u8> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let name = cmd.get_name().to_string();
    match shell {
        Shell::Bash => {
            clap_complete::generate(clap_complete::Shell::Bash, &mut cmd, name, &mut out)
        }
        Shell::Zsh => clap_complete::generate(clap_complete::Shell::Zsh, &mut cmd, name, &mut out),
        Shell::Fish => {
            clap_complete::generate(clap_complete::Shell::Fish, &mut cmd, name, &mut out)
        }
    }
    out
}

/// Extra sections after the generated ones (roff).
const EXTRA: &str = r#".SH "STATE COMMANDS"
Every command but \fBrun\fR, \fBreport\fR, \fBanalyze\fR, \fBcompletions\fR and \fBman\fR works on
the state that \fBrun\fR pins under \fB\-\-pin\-dir\fR, from any shell or network namespace.
Run \fBsynguard\fR \fIcommand\fR \fB\-\-help\fR for each command's options and examples.
.SH "CONFIGURATION"
Keys, the same in \fI/etc/synguard/synguard.toml\fR, as \fBrun \-\-\fR\fIkey\fR and in
\fBconfig set\fR: syn\-rate, syn\-burst, ban\-for, ipv4\-prefix, ipv6\-prefix, attack\-syn\-rate,
syn\-cookies (auto|always|off), verified\-for, mode (enforce|monitor), ports.
The file is re\-read on SIGHUP (\fBsystemctl reload synguard\fR).
.SH "EXIT STATUS"
.TP
\fB0\fR
success
.TP
\fB1\fR
a runtime failure
.TP
\fB2\fR
bad usage or bad input (nothing was changed)
.SH "FILES"
.TP
\fI/etc/synguard/synguard.toml\fR
the configuration file (\fBrun \-\-config\fR)
.TP
\fI/etc/default/synguard\fR
the interfaces and options of the systemd service
.TP
\fI/sys/fs/bpf/synguard\fR
the pinned program, maps and links (\fB\-\-pin\-dir\fR); readable by root only
.TP
\fI/var/lib/synguard/journal.jsonl\fR
the event journal that \fBreport\fR reads (\fB\-\-state\-dir\fR); readable by root only
.SH "ENVIRONMENT"
.TP
\fBSYNGUARD_PIN_DIR\fR, \fBSYNGUARD_STATE_DIR\fR
defaults for \fB\-\-pin\-dir\fR and \fB\-\-state\-dir\fR
.TP
\fBRUST_LOG\fR
log level of \fBrun\fR (error, warn, info, debug)
.SH "SECURITY"
\fBrun\fR needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; the other state commands need CAP_BPF.
Blocking the address you manage the server from locks you out: \fBblock add\fR refuses to
block your own SSH session or an allowlisted address unless given \fB\-\-force\fR.
.SH "SEE ALSO"
\fBsystemctl\fR(1), \fBip\-link\fR(8), \fBbpftool\fR(8), \fBxdp\-filter\fR(8)
"#;

/// Render one command's page; the top-level page gets the extra sections.
fn page(cmd: clap::Command, top: bool) -> anyhow::Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd).section("8");
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    if top {
        out.extend_from_slice(EXTRA.as_bytes());
        man.render_version_section(&mut out)?;
    } else {
        out.extend_from_slice(b".SH \"SEE ALSO\"\n\\fBsynguard\\fR(8)\n");
    }
    Ok(out)
}

/// The manual page, section 8.
pub fn man() -> anyhow::Result<Vec<u8>> {
    page(Cli::command(), true)
}

/// Every page: `synguard.8` and one per subcommand (`synguard-block-add.8`, ...), as the
/// top page's SUBCOMMANDS section refers to them. Returns (file name, page).
pub fn all_pages() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    fn walk(
        cmd: &clap::Command,
        prefix: &str,
        out: &mut Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        // clap's generated `help` subcommands get no pages: `--help` covers them.
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("{prefix}-{}", sub.get_name());
            // clap_mangen names a page after the command's own name.
            let renamed = sub.clone().name(name.clone());
            out.push((format!("{name}.8"), page(renamed, false)?));
            walk(sub, &name, out)?;
        }
        Ok(())
    }
    let mut cmd = Cli::command();
    cmd.build();
    let mut out = vec![("synguard.8".to_string(), man()?)];
    walk(&cmd, "synguard", &mut out)?;
    Ok(out)
}

/// `synguard man [--out-dir DIR]`.
pub fn write_man(out_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    use std::io::Write as _;
    match out_dir {
        None => std::io::stdout().write_all(&man()?)?,
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            for (name, text) in all_pages()? {
                std::fs::write(dir.join(&name), text)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_know_every_command() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let text = String::from_utf8(completions(shell)).unwrap();
            for sub in [
                "run", "status", "block", "explain", "report", "analyze", "top",
            ] {
                assert!(text.contains(sub), "{shell:?} lacks {sub}");
            }
            assert!(text.contains("syn-rate"), "{shell:?} lacks the config keys");
        }
    }

    #[test]
    fn man_page_is_roff_with_every_section() {
        let text = String::from_utf8(man().unwrap()).unwrap();
        assert!(
            text.starts_with(".ie \\n(.g") || text.contains(".TH synguard 8"),
            "{text}"
        );
        for s in [
            ".SH NAME",
            ".SH SYNOPSIS",
            ".SH SUBCOMMANDS",
            "EXIT STATUS",
            ".SH \"FILES\"",
        ] {
            assert!(text.contains(s), "{s} in the man page");
        }
    }
}

#[cfg(test)]
mod pages {
    #[test]
    fn a_page_for_every_subcommand_the_top_page_names() {
        let pages = super::all_pages().unwrap();
        let names: Vec<&str> = pages.iter().map(|(n, _)| n.as_str()).collect();
        for n in [
            "synguard.8",
            "synguard-run.8",
            "synguard-block-add.8",
            "synguard-report.8",
        ] {
            assert!(names.contains(&n), "{n} in {names:?}");
        }
        let top = String::from_utf8(pages[0].1.clone()).unwrap();
        for (name, _) in &pages[1..] {
            let stem = name.trim_end_matches(".8");
            // Nested pages are named from their parent's page.
            assert!(!stem.contains("-help"), "{stem}");
            if stem.matches('-').count() == 1 {
                assert!(
                    top.contains(&stem.replace('-', "\\-")),
                    "{stem} named in synguard.8"
                );
            }
        }
    }
}
