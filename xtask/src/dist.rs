//! `cargo xtask dist`: the Debian package, built with `dpkg-deb` from a staged tree.
//!
//! Why not cargo-deb: the package needs generated files (man pages and completions from
//! the built binary itself), maintainer scripts that keep protection across upgrades and
//! remove it on removal, and nothing else; `dpkg-deb` is on every Debian machine, so
//! building the tree by hand costs a page of code and no extra tool to install.
//!
//! Contents: `/usr/sbin/synguard` (the eBPF program embedded), the systemd unit, the
//! commented `/etc/synguard/synguard.toml` and `/etc/default/synguard` (conffiles), man
//! pages, bash/zsh/fish completions, copyright and changelog.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use crate::{bootstrap::output_bytes, guarded, root, step};

const PACKAGE: &str = "synguard";
/// Debian revision of the package.
const REVISION: &str = "1";

fn version() -> String {
    format!("{}-{REVISION}", env!("CARGO_PKG_VERSION"))
}

fn write(path: &Path, text: &[u8], mode: u32) -> anyhow::Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Run `cmd` (under the guard: these programs are the `dist` list's too).
fn output(cmd: &mut Command) -> anyhow::Result<Vec<u8>> {
    output_bytes(guarded(cmd))
}

fn gzip(path: &Path) -> anyhow::Result<()> {
    output(Command::new("gzip").args(["-9n", "-f"]).arg(path))?;
    Ok(())
}

/// The newest glibc symbol version the binary needs: its `libc6` dependency.
fn glibc_needed(bin: &Path) -> anyhow::Result<String> {
    let text = String::from_utf8(output(Command::new("objdump").arg("-T").arg(bin))?)?;
    let mut best = (2u32, 17u32);
    for w in text.split(|c: char| c.is_whitespace() || c == '(' || c == ')') {
        if let Some(v) = w.strip_prefix("GLIBC_")
            && let Some((a, b)) = v.split_once('.')
            && let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.split('.').next().unwrap_or("").parse())
        {
            best = best.max((a, b));
        }
    }
    Ok(format!("{}.{}", best.0, best.1))
}

const DESCRIPTION: &str = "\
Description: SYN-flood defence in XDP for Linux servers
 synguard stops TCP SYN floods in the kernel's earliest hook (XDP), before
 they reach the server's SYN queue: it meters SYNs per source, bans sources
 over their limit, drops allow- and blocklisted prefixes, and during an attack
 from forged sources answers SYNs itself with the kernel's SYN cookies.
 .
 The service keeps the program attached across its own restarts and upgrades.
 `synguard status`, `block`, `allow`, `config`, `explain` and `top` inspect and
 tune it live; `report` writes the incident report from its journal, and
 `analyze` reads packet captures.";

const POSTINST: &str = r#"#!/bin/sh
set -e
# The unit is enabled, and started once /etc/default/synguard names an interface
# (until then it is skipped). On upgrade the running service is restarted: it runs
# with --keep, so the new binary adopts the attached program with no gap.
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ]; then
	if command -v deb-systemd-helper >/dev/null; then
		deb-systemd-helper unmask 'synguard.service' >/dev/null || true
		if deb-systemd-helper --quiet was-enabled 'synguard.service'; then
			deb-systemd-helper enable 'synguard.service' >/dev/null || true
		else
			deb-systemd-helper update-state 'synguard.service' >/dev/null || true
			if [ -z "$2" ]; then
				deb-systemd-helper enable 'synguard.service' >/dev/null || true
			fi
		fi
	fi
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			deb-systemd-invoke try-restart 'synguard.service' >/dev/null || true
		else
			deb-systemd-invoke start 'synguard.service' >/dev/null || true
		fi
	fi
fi
"#;

const PRERM: &str = r#"#!/bin/sh
set -e
# On removal (not on upgrade) stop the service and take the kept program away.
if [ "$1" = "remove" ]; then
	if [ -d /run/systemd/system ]; then
		deb-systemd-invoke stop 'synguard.service' >/dev/null || true
	fi
	if command -v synguard >/dev/null; then
		synguard detach >/dev/null 2>&1 || true
	fi
fi
"#;

const POSTRM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -d /run/systemd/system ]; then
	systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = "remove" ] && command -v deb-systemd-helper >/dev/null; then
	deb-systemd-helper mask 'synguard.service' >/dev/null || true
fi
if [ "$1" = "purge" ]; then
	if command -v deb-systemd-helper >/dev/null; then
		deb-systemd-helper purge 'synguard.service' >/dev/null || true
		deb-systemd-helper unmask 'synguard.service' >/dev/null || true
	fi
	rm -rf /var/lib/synguard
fi
"#;

fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: synguard\n\
         {}\n\
         Files: *\n\
         Copyright: 2026 synguard developers\n\
         License: MIT or Apache-2.0\n\
         \x20The userspace program is MIT or Apache-2.0; the embedded eBPF program is\n\
         \x20dual MIT/GPL (the kernel's SYN-cookie helpers are GPL-only).\n\
         \x20.\n\
         \x20On Debian systems the Apache License 2.0 is in\n\
         \x20/usr/share/common-licenses/Apache-2.0; the GPL in\n\
         \x20/usr/share/common-licenses/GPL-2.\n\
         \x20.\n\
         \x20Permission is hereby granted, free of charge, to any person obtaining a copy\n\
         \x20of this software and associated documentation files (the \"Software\"), to deal\n\
         \x20in the Software without restriction, including without limitation the rights\n\
         \x20to use, copy, modify, merge, publish, distribute, sublicense, and/or sell\n\
         \x20copies of the Software, and to permit persons to whom the Software is\n\
         \x20furnished to do so, subject to the following conditions:\n\
         \x20.\n\
         \x20The above copyright notice and this permission notice shall be included in all\n\
         \x20copies or substantial portions of the Software.\n\
         \x20.\n\
         \x20THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n\
         \x20IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,\n\
         \x20FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE\n\
         \x20AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER\n\
         \x20LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,\n\
         \x20OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE\n\
         \x20SOFTWARE.\n",
        optional_field("Source", env!("CARGO_PKG_REPOSITORY"))
    )
}

/// `Name: value\n`, or nothing when the value is unknown (lintian rejects empty fields).
fn optional_field(name: &str, value: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        format!("{name}: {value}\n")
    }
}

/// Build the package from the release binary; returns its path.
pub fn dist(bin: &Path) -> anyhow::Result<PathBuf> {
    let out_dir = root().join("target").join("dist");
    let stage = out_dir.join(format!("{PACKAGE}_{}_amd64", version()));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    let dist_src = root().join("synguard").join("dist");
    let s = |p: &str| stage.join(p);

    // The binary, stripped (the eBPF object is data inside it and stays).
    let sbin = s("usr/sbin/synguard");
    fs::create_dir_all(s("usr/sbin"))?;
    fs::copy(bin, &sbin)?;
    output(
        Command::new("strip")
            .args(["--strip-unneeded", "--remove-section=.comment"])
            .arg(&sbin),
    )?;
    fs::set_permissions(&sbin, fs::Permissions::from_mode(0o755))?;

    write(
        &s("lib/systemd/system/synguard.service"),
        &fs::read(dist_src.join("synguard.service"))?,
        0o644,
    )?;
    write(
        &s("etc/synguard/synguard.toml"),
        &fs::read(dist_src.join("synguard.toml"))?,
        0o644,
    )?;
    write(
        &s("etc/default/synguard"),
        &fs::read(dist_src.join("default"))?,
        0o644,
    )?;

    // Man pages and completions, from the binary's own CLI definition.
    let man = s("usr/share/man/man8");
    fs::create_dir_all(&man)?;
    output(Command::new(&sbin).arg("man").arg("--out-dir").arg(&man))?;
    for e in fs::read_dir(&man)? {
        let p = e?.path();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644))?;
        gzip(&p)?;
    }
    for (shell, path) in [
        ("bash", "usr/share/bash-completion/completions/synguard"),
        ("zsh", "usr/share/zsh/vendor-completions/_synguard"),
        ("fish", "usr/share/fish/vendor_completions.d/synguard.fish"),
    ] {
        let text = output(Command::new(&sbin).args(["completions", shell]))?;
        write(&s(path), &text, 0o644)?;
    }

    // Documentation.
    let doc = s("usr/share/doc/synguard");
    write(&doc.join("copyright"), copyright().as_bytes(), 0o644)?;
    let date = String::from_utf8(output(Command::new("date").args(["-R", "-u"]))?)?;
    let changelog = format!(
        "{PACKAGE} ({}) unstable; urgency=medium\n\n  * Release {}.\n\n -- synguard \
         developers <synguard@example.invalid>  {}\n",
        version(),
        env!("CARGO_PKG_VERSION"),
        date.trim()
    );
    write(&doc.join("changelog.Debian"), changelog.as_bytes(), 0o644)?;
    gzip(&doc.join("changelog.Debian"))?;
    // The package is built locally, not uploaded to Debian: no bug to close.
    write(
        &s("usr/share/lintian/overrides/synguard"),
        b"# Built from the synguard tree, not uploaded to Debian: there is no ITP bug.\n\
          synguard: initial-upload-closes-no-bugs\n",
        0o644,
    )?;

    // Control files.
    let debian = s("DEBIAN");
    fs::create_dir_all(&debian)?;
    write(
        &debian.join("conffiles"),
        b"/etc/default/synguard\n/etc/synguard/synguard.toml\n",
        0o644,
    )?;
    write(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    let du = String::from_utf8(output(
        Command::new("du")
            .args(["-k", "-s", "--exclude=DEBIAN"])
            .arg(&stage),
    )?)?;
    let size = du.split_whitespace().next().unwrap_or("0").to_string();
    let control = format!(
        "Package: {PACKAGE}\nVersion: {}\nArchitecture: amd64\nMaintainer: synguard \
         developers <synguard@example.invalid>\nInstalled-Size: {size}\nDepends: libc6 (>= \
         {})\nRecommends: nftables\nSuggests: prometheus\nSection: net\nPriority: optional\n{}{DESCRIPTION}\n",
        version(),
        glibc_needed(&sbin)?,
        optional_field("Homepage", env!("CARGO_PKG_HOMEPAGE")),
    );
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    // md5sums of everything but the control files.
    let files = String::from_utf8(output(
        Command::new("find")
            .arg(".")
            .args(["-type", "f", "!", "-path", "./DEBIAN/*", "-printf", "%P\\n"])
            .current_dir(&stage),
    )?)?;
    let mut files: Vec<&str> = files.lines().collect();
    files.sort_unstable();
    let sums = output(Command::new("md5sum").args(&files).current_dir(&stage))?;
    write(&debian.join("md5sums"), &sums, 0o644)?;

    let deb = out_dir.join(format!("{PACKAGE}_{}_amd64.deb", version()));
    step(
        "build the Debian package",
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}
