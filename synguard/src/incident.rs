//! The incident report: one model, filled from the journal (`report`) or from a packet
//! capture (`analyze`), rendered as Markdown or JSON, with an SVG chart of SYN rate,
//! drops and attack mode over time.
//!
//! Both sources classify an attack with the same rules ([`classify`]) from the same
//! [`Traits`], so a flood seen live and the same flood in a capture get the same name.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use serde::Serialize;

/// What kind of SYN flood an episode was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackKind {
    /// One source (or one prefix at the aggregation length) sent most of the SYNs.
    SingleSource,
    /// One address carried most of the SYNs, but that address belongs to a real host that
    /// proved it (it completed handshakes with the server, or answered its SYN-ACKs with
    /// resets): the flood was forged in its name.
    SpoofedSource,
    /// Many real sources, each sending many SYNs (a botnet).
    Distributed,
    /// Many sources seen once or twice each that never complete a handshake: forged.
    ForgedSources,
    /// Like forged, over IPv6 addresses rotating inside the sender's prefixes.
    Ipv6Rotation,
    /// The handshakes complete: real connections opened in bulk, not half-open ones.
    ConnectionFlood,
}

impl AttackKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::SingleSource => "single source",
            Self::SpoofedSource => "spoofed source",
            Self::Distributed => "distributed",
            Self::ForgedSources => "forged sources",
            Self::Ipv6Rotation => "IPv6 rotation",
            Self::ConnectionFlood => "connection flood",
        }
    }
}

/// What an episode looked like, as far as its source could see. `None` is "not seen".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Traits {
    /// SYNs in the episode.
    pub syns: u64,
    /// Distinct sources (at the aggregation prefix lengths) that sent SYNs.
    pub sources: u64,
    /// The busiest source and its SYNs.
    pub top_source: Option<(String, u64)>,
    /// SYNs from IPv6 sources.
    pub ipv6_syns: u64,
    /// Handshakes that completed (final ACKs seen, or cookies verified).
    pub completed: Option<u64>,
    /// Why the busiest source's address is most likely forged, if it is (see
    /// [`AttackKind::SpoofedSource`]).
    pub top_forged: Option<String>,
}

/// The rules that name an attack, with the evidence behind the name.
pub fn classify(t: &Traits) -> (AttackKind, Vec<String>) {
    let syns = t.syns.max(1);
    let pct = |n: u64| n as f64 * 100.0 / syns as f64;
    let mut ev = Vec::new();
    if let Some((src, n)) = &t.top_source
        && (pct(*n) >= 50.0 || t.sources <= 3)
    {
        ev.push(format!(
            "{src} sent {n} of {} SYNs ({:.0} %)",
            t.syns,
            pct(*n)
        ));
        if t.sources > 1 {
            ev.push(format!("{} other sources sent the rest", t.sources - 1));
        }
        if let Some(why) = &t.top_forged {
            ev.push(format!(
                "but {src} {why}: the flood carries its address, not its packets"
            ));
            return (AttackKind::SpoofedSource, ev);
        }
        return (AttackKind::SingleSource, ev);
    }
    let per_source = t.syns as f64 / t.sources.max(1) as f64;
    ev.push(format!(
        "{} distinct sources, {per_source:.1} SYNs each on average",
        t.sources
    ));
    if let Some((src, n)) = &t.top_source {
        ev.push(format!(
            "no source stands out: the busiest, {src}, sent {} % of them",
            fmt_share(pct(*n))
        ));
    }
    let completion = t.completed.map(|c| c as f64 / syns as f64);
    if let Some(c) = t.completed {
        ev.push(format!(
            "{c} handshakes completed ({:.1} % of SYNs)",
            c as f64 * 100.0 / syns as f64
        ));
    }
    if completion.is_some_and(|c| c >= 0.5) {
        return (AttackKind::ConnectionFlood, ev);
    }
    // Forged floods draw a new address for (nearly) every SYN; drawn from a small range
    // they repeat, so tens of thousands of sources that do not answer count as forged
    // too. Real hosts answer SYN-ACKs, so a botnet completes handshakes.
    let forged_like =
        (per_source < 4.0 || t.sources >= 10_000) && completion.is_none_or(|c| c < 0.1);
    if forged_like && pct(t.ipv6_syns) >= 50.0 {
        ev.push(format!(
            "{:.0} % of the SYNs came over IPv6",
            pct(t.ipv6_syns)
        ));
        return (AttackKind::Ipv6Rotation, ev);
    }
    if forged_like {
        return (AttackKind::ForgedSources, ev);
    }
    (AttackKind::Distributed, ev)
}

/// One attack episode.
#[derive(Clone, Debug, Serialize)]
pub struct Attack {
    pub kind: AttackKind,
    pub kind_label: &'static str,
    /// RFC 3339.
    pub start: String,
    pub end: String,
    pub duration_secs: f64,
    /// The interface (report) or destination address and port (analyze) under attack.
    pub target: String,
    pub syns: u64,
    pub peak_syn_rate: u64,
    pub sources: u64,
    pub evidence: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TimelineEntry {
    pub t: String,
    pub what: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct SourceRow {
    pub source: String,
    pub syns: u64,
    pub peak_syn_rate: u64,
    /// What was done about it (banned, blocked, answered with cookies, passed...).
    pub verdict: String,
}

/// A source whose SYNs were most likely forged: its address proved itself (it completed
/// handshakes, or answered the server's SYN-ACKs with resets), so the flood in its name
/// was not its own.
#[derive(Clone, Debug, Serialize)]
pub struct ForgedRow {
    pub source: String,
    /// The evidence.
    pub why: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct PrefixRow {
    pub prefix: String,
    pub sources: u64,
    pub syns: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct DropRow {
    pub reason: String,
    pub packets: u64,
    pub how: String,
}

/// A point of the chart: rates over one interval.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Point {
    /// Seconds since the report's start.
    pub t: f64,
    pub syn_rate: f64,
    pub drop_rate: f64,
    /// SYNs answered with cookies (attack mode), per second.
    pub answered_rate: f64,
    pub attack: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Peaks {
    pub syn_rate: u64,
    pub syn_rate_at: Option<String>,
    /// How the SYN peak was measured (sample average, the kernel's busiest 100 ms, a
    /// source's rate at its ban), since these differ by up to a few times.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub syn_rate_how: String,
    pub drop_rate: u64,
    pub drop_rate_at: Option<String>,
}

/// A share in percent with the digits that say something: 12 %, 0.4 %, 0.003 %.
fn fmt_share(p: f64) -> String {
    if p >= 10.0 {
        format!("{p:.0}")
    } else if p >= 0.1 {
        format!("{p:.1}")
    } else if p > 0.0 {
        let digits = (-p.log10()).floor() as usize + 2;
        format!("{p:.digits$}")
    } else {
        "0".into()
    }
}

/// The report.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// `journal` or `capture`.
    pub origin: &'static str,
    /// The state directory or capture file read.
    pub input: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub summary: Vec<String>,
    pub attacks: Vec<Attack>,
    pub timeline: Vec<TimelineEntry>,
    pub top_sources: Vec<SourceRow>,
    /// Sources whose SYNs were most likely forged (see [`ForgedRow`]).
    pub forged: Vec<ForgedRow>,
    pub top_prefixes: Vec<PrefixRow>,
    pub peaks: Peaks,
    pub drops: Vec<DropRow>,
    pub impact: Vec<String>,
    pub actions: Vec<String>,
    pub recommendations: Vec<String>,
    /// What could not be read (torn journal lines, a truncated capture).
    pub warnings: Vec<String>,
    pub series: Vec<Point>,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Markdown; `chart` is the file name of the SVG to link, if one is written.
    pub fn to_markdown(&self, chart: Option<&str>) -> String {
        let mut m = String::new();
        let title = if self.origin == "capture" {
            "SYN flood analysis"
        } else {
            "Incident report"
        };
        let _ = writeln!(m, "# {title}\n");
        let _ = writeln!(
            m,
            "_{} {} · {} → {}_\n",
            if self.origin == "capture" {
                "capture"
            } else {
                "journal"
            },
            self.input,
            self.from.as_deref().unwrap_or("?"),
            self.to.as_deref().unwrap_or("?")
        );
        section(&mut m, "Summary", &self.summary);
        if let Some(c) = chart {
            let _ = writeln!(m, "![SYN rate, drops and attack mode]({c})\n");
        }
        let _ = writeln!(m, "## Attack type\n");
        if self.attacks.is_empty() {
            let _ = writeln!(m, "No SYN flood was detected.\n");
        }
        for (i, a) in self.attacks.iter().enumerate() {
            let _ = writeln!(
                m,
                "{}. **{}** on {}, {} → {} ({:.0} s): {} SYNs from {} sources, peak {} \
                 SYN/s",
                i + 1,
                a.kind_label,
                a.target,
                a.start,
                a.end,
                a.duration_secs,
                a.syns,
                a.sources,
                a.peak_syn_rate
            );
            for e in &a.evidence {
                let _ = writeln!(m, "   - {e}");
            }
        }
        m.push('\n');
        if !self.timeline.is_empty() {
            let _ = writeln!(m, "## Timeline\n\n| time | event |\n|---|---|");
            for e in &self.timeline {
                let _ = writeln!(m, "| {} | {} |", e.t, e.what.replace('|', "\\|"));
            }
            m.push('\n');
        }
        if !self.top_sources.is_empty() {
            let _ = writeln!(
                m,
                "## Top sources\n\n| source | SYNs | peak SYN/s | verdict |\n|---|--:|--:|---|"
            );
            for s in &self.top_sources {
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} |",
                    s.source, s.syns, s.peak_syn_rate, s.verdict
                );
            }
            m.push('\n');
        }
        if !self.forged.is_empty() {
            let _ = writeln!(
                m,
                "## Sources most likely forged\n\nTheir addresses proved they are real \
                 hosts that did not send this flood: SYNs in their name were challenged with \
                 cookies, never a reason to cut them off.\n\n| source | evidence |\n|---|---|"
            );
            for f in &self.forged {
                let _ = writeln!(m, "| {} | {} |", f.source, f.why.replace('|', "\\|"));
            }
            m.push('\n');
        }
        if !self.top_prefixes.is_empty() {
            let _ = writeln!(
                m,
                "## Top prefixes\n\n| prefix | sources | SYNs |\n|---|--:|--:|"
            );
            for p in &self.top_prefixes {
                let _ = writeln!(m, "| {} | {} | {} |", p.prefix, p.sources, p.syns);
            }
            m.push('\n');
        }
        let _ = writeln!(m, "## Peak rates\n");
        let _ = writeln!(
            m,
            "- SYNs: {} per second{}{}",
            self.peaks.syn_rate,
            self.peaks
                .syn_rate_at
                .as_ref()
                .map_or(String::new(), |t| format!(" at {t}")),
            if self.peaks.syn_rate_how.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.peaks.syn_rate_how)
            }
        );
        let _ = writeln!(
            m,
            "- drops: {} per second{}\n",
            self.peaks.drop_rate,
            self.peaks
                .drop_rate_at
                .as_ref()
                .map_or(String::new(), |t| format!(" at {t}"))
        );
        if !self.drops.is_empty() {
            let _ = writeln!(
                m,
                "## What was dropped, and how\n\n| reason | packets | how |\n|---|--:|---|"
            );
            for d in &self.drops {
                let _ = writeln!(m, "| {} | {} | {} |", d.reason, d.packets, d.how);
            }
            m.push('\n');
        }
        section(&mut m, "Impact on legitimate traffic", &self.impact);
        section(&mut m, "Actions taken", &self.actions);
        section(&mut m, "Recommendations", &self.recommendations);
        section(&mut m, "Could not be read", &self.warnings);
        m
    }

    /// The chart: SYN rate and drop rate over time, attack mode shaded.
    pub fn chart_svg(&self) -> anyhow::Result<String> {
        chart(&self.series)
    }

    /// Print or write the report in `format`; a Markdown file gets its chart beside it.
    pub fn emit(
        &self,
        format: crate::cli::ReportFormat,
        output: Option<&Path>,
    ) -> anyhow::Result<()> {
        use crate::cli::ReportFormat;
        let text = match (format, output) {
            (ReportFormat::Json, _) => self.to_json() + "\n",
            (ReportFormat::Md, None) => self.to_markdown(None),
            (ReportFormat::Md, Some(out)) => {
                let svg_path = out.with_extension("svg");
                let name = svg_path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if self.series.len() >= 2 {
                    std::fs::write(&svg_path, self.chart_svg()?)
                        .with_context(|| format!("writing {}", svg_path.display()))?;
                    self.to_markdown(Some(&name))
                } else {
                    self.to_markdown(None)
                }
            }
        };
        match output {
            Some(out) => {
                std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?
            }
            None => print!("{text}"),
        }
        Ok(())
    }
}

fn section(m: &mut String, title: &str, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(m, "## {title}\n");
    for l in lines {
        let _ = writeln!(m, "- {l}");
    }
    m.push('\n');
}

/// Draw the series with plotters' SVG backend.
fn chart(series: &[Point]) -> anyhow::Result<String> {
    use plotters::prelude::*;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 360)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t_max = series.last().map_or(1.0, |p| p.t).max(1.0);
        let y_max = series
            .iter()
            .map(|p| p.syn_rate.max(p.drop_rate).max(p.answered_rate))
            .fold(1.0, f64::max)
            * 1.1;
        let mut c = ChartBuilder::on(&root)
            .caption("SYN rate, drops and attack mode", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        c.configure_mesh()
            .x_desc("time since the start (min:s)")
            .y_desc("packets per second")
            .x_label_formatter(&|x| format!("{}:{:02}", *x as u64 / 60, *x as u64 % 60))
            .y_label_formatter(&|y| {
                if *y >= 1000.0 {
                    format!("{:.0}k", y / 1000.0)
                } else {
                    format!("{y:.0}")
                }
            })
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // Attack mode: shaded spans.
        let shade = RGBColor(255, 200, 120).mix(0.35).filled();
        let mut spans = Vec::new();
        let mut start = None;
        for w in series.windows(2) {
            if w[0].attack && start.is_none() {
                start = Some(w[0].t);
            }
            if !w[1].attack
                && let Some(s) = start.take()
            {
                spans.push((s, w[1].t));
            }
        }
        if let (Some(s), Some(last)) = (start, series.last()) {
            spans.push((s, last.t));
        }
        let mut first = true;
        for (a, b) in spans {
            let r = c
                .draw_series(std::iter::once(Rectangle::new(
                    [(a, 0.0), (b, y_max)],
                    shade,
                )))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if std::mem::take(&mut first) {
                r.label("attack mode")
                    .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], shade));
            }
        }
        c.draw_series(LineSeries::new(
            series.iter().map(|p| (p.t, p.syn_rate)),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("SYNs/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLUE.stroke_width(2)));
        c.draw_series(LineSeries::new(
            series.iter().map(|p| (p.t, p.drop_rate)),
            RED.stroke_width(2),
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .label("dropped/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED.stroke_width(2)));
        if series.iter().any(|p| p.answered_rate > 0.0) {
            let green = RGBColor(0, 150, 60);
            c.draw_series(LineSeries::new(
                series.iter().map(|p| (p.t, p.answered_rate)),
                green.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label("answered with cookies/s")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], green.stroke_width(2)));
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_keep_the_digits_that_matter() {
        assert_eq!(fmt_share(42.4), "42");
        assert_eq!(fmt_share(0.43), "0.4");
        assert_eq!(fmt_share(0.0123), "0.012");
        assert_eq!(fmt_share(0.00043), "0.00043");
        assert_eq!(fmt_share(0.0), "0");
    }

    fn traits(syns: u64, sources: u64, top: u64) -> Traits {
        Traits {
            syns,
            sources,
            top_source: Some(("203.0.113.66".into(), top)),
            ..Traits::default()
        }
    }

    #[test]
    fn the_rules_name_each_kind() {
        assert_eq!(
            classify(&traits(10_000, 5, 9_000)).0,
            AttackKind::SingleSource
        );
        let forged = Traits {
            completed: Some(3),
            ..traits(100_000, 90_000, 3)
        };
        let (k, ev) = classify(&forged);
        assert_eq!(k, AttackKind::ForgedSources);
        assert!(ev[0].contains("90000 distinct sources"), "{ev:?}");
        let v6 = Traits {
            ipv6_syns: 99_000,
            ..forged.clone()
        };
        assert_eq!(classify(&v6).0, AttackKind::Ipv6Rotation);
        let bots = Traits {
            completed: Some(10),
            ..traits(100_000, 500, 400)
        };
        assert_eq!(classify(&bots).0, AttackKind::Distributed);
        let conns = Traits {
            completed: Some(9_000),
            ..traits(10_000, 200, 60)
        };
        assert_eq!(classify(&conns).0, AttackKind::ConnectionFlood);
    }

    #[test]
    fn chart_is_svg_with_the_series() {
        let series: Vec<Point> = (0..20)
            .map(|i| Point {
                t: f64::from(i),
                syn_rate: if (5..15).contains(&i) { 90_000.0 } else { 50.0 },
                drop_rate: if (5..15).contains(&i) { 89_000.0 } else { 0.0 },
                attack: (6..14).contains(&i),
                answered_rate: 0.0,
            })
            .collect();
        let svg = chart(&series).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        assert!(svg.contains("attack mode") && svg.contains("SYNs/s"));
        assert!(svg.matches("<polyline").count() >= 2);
    }
}
