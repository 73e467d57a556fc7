//! A [`View`] drawn into a ratatui frame, or printed as one line. Pure.

use super::*;

pub(super) fn stamp(wall: Option<SystemTime>) -> String {
    wall.map_or_else(|| "-".into(), clock::rfc3339)
}

/// The line printed per interval when stdout is not a terminal:
/// `2026-11-24T20:50:01Z syn/s=152000 drop/s=151900 attack=sga bans=1
/// top=203.0.113.66/32:151000(banned)`. Fields are always present and in this order;
/// `syn/s` and `drop/s` are as in the module documentation (in `mode = monitor`,
/// `drop/s` is what would have been dropped);
/// `attack` lists the interfaces in attack mode (comma-separated) or is `-`, `top` the
/// three busiest sources as `PREFIX:RATE(VERDICT)` (comma-separated) or `-`.
pub fn plain_line(v: &View) -> String {
    let attack: Vec<&str> = v
        .ifaces
        .iter()
        .filter(|i| i.attack)
        .map(|i| i.name.as_str())
        .collect();
    let top: Vec<String> = v
        .top
        .iter()
        .take(PLAIN_TOP)
        .map(|s| format!("{}:{}({})", s.net, s.rate, s.verdict.as_str()))
        .collect();
    let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
    format!(
        "{} syn/s={} drop/s={} attack={} bans={} top={}",
        stamp(v.wall),
        v.syn_rate,
        v.drop_rate,
        or_dash(attack.join(",")),
        v.bans,
        or_dash(top.join(","))
    )
}

/// A list change as a line of the plain output: `2026-11-24T20:50:01Z + 203.0.113.66/32
/// banned (at 101000 SYN/s), expires in 10m`.
pub fn event_line(wall: Option<SystemTime>, e: &ListEvent) -> String {
    format!("{} {}", stamp(e.wall.or(wall)), e.text)
}

/// The time of day of a stamp, `20:50:01`, for the events pane.
pub(super) fn time_of_day(wall: Option<SystemTime>) -> String {
    let s = stamp(wall);
    s.get(11..19).map_or(s.clone(), str::to_string)
}

/// The last `width` columns of a history, each the peak of the samples it stands for
/// when there are more samples than columns (a short spike stays visible).
pub(super) fn fit(history: &[u64], width: usize) -> Vec<u64> {
    if width == 0 || history.len() <= width {
        return history.to_vec();
    }
    let group = history.len().div_ceil(width);
    history
        .chunks(group)
        .map(|c| c.iter().copied().max().unwrap_or(0))
        .collect()
}

pub(super) fn span(v: &View, samples: usize) -> String {
    let secs = v.interval.as_secs_f64() * samples as f64;
    format_duration(Duration::from_secs_f64(secs.min(1e9)))
}

pub(super) fn verdict_style(v: Verdict) -> Style {
    match v {
        Verdict::Banned => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Verdict::Blocked => Style::new().fg(Color::Magenta),
        Verdict::Allowed => Style::new().fg(Color::Green),
        Verdict::Limited => Style::new().fg(Color::Yellow),
        Verdict::Challenged => Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
        Verdict::Passing => Style::new(),
        Verdict::Cookie => Style::new().fg(Color::Cyan),
    }
}

pub(super) fn titled(title: String) -> Block<'static> {
    Block::bordered().title(Span::styled(
        title,
        Style::new().add_modifier(Modifier::BOLD),
    ))
}

/// Draw the view. Pure: everything comes from `v`.
pub fn render(frame: &mut Frame, v: &View) {
    // Borders, a header row, one row per interface.
    let ifaces_height = if v.ifaces.is_empty() {
        3
    } else {
        v.ifaces.len() as u16 + 3
    };
    let [header, sparks, middle, attack, events] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(6),
        Constraint::Length(TOP as u16 + 3),
        Constraint::Length(ifaces_height),
        Constraint::Min(3),
    ])
    .areas(frame.area());

    // Header.
    let mut head = vec![
        Span::styled("synguard top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  {}  every {}  ",
            stamp(v.wall),
            humantime::format_duration(v.interval),
        )),
    ];
    head.push(if v.monitor {
        Span::styled("MONITOR mode", Style::new().fg(Color::Yellow))
    } else {
        Span::raw("enforce")
    });
    head.push(Span::raw("  "));
    head.push(if v.daemon {
        Span::raw("daemon running")
    } else {
        Span::styled(
            "daemon NOT RUNNING",
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        )
    });
    frame.render_widget(Paragraph::new(Line::from(head)), header);

    // Sparklines.
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(sparks);
    for (area, name, now, history, color) in [
        (left, "SYN/s in", v.syn_rate, &v.syn_history, Color::Cyan),
        (
            right,
            if v.monitor {
                "Would drop/s"
            } else {
                "Dropped/s"
            },
            v.drop_rate,
            &v.drop_history,
            Color::Red,
        ),
    ] {
        let width = area.width.saturating_sub(2) as usize;
        // Newest at the right edge, older to the left, as the history fills up.
        let mut data = fit(history, width);
        data.reverse();
        let peak = history.iter().copied().max().unwrap_or(0);
        let title = if v.measuring {
            format!(" {name}: measuring... ")
        } else {
            format!(" {name}: {now} (peak {peak}, {}) ", span(v, history.len()))
        };
        frame.render_widget(
            Sparkline::default()
                .block(titled(title))
                .style(Style::new().fg(color))
                .direction(RenderDirection::RightToLeft)
                .data(&data),
            area,
        );
    }

    // Top sources and drops by reason.
    let [sources_area, drops_area] =
        Layout::horizontal([Constraint::Min(40), Constraint::Length(37)]).areas(middle);
    let rows: Vec<Row> = v
        .top
        .iter()
        .map(|s| {
            Row::new(vec![
                Cell::from(s.net.to_string()),
                Cell::from(s.rate.to_string()),
                Cell::from(s.verdict.as_str()).style(verdict_style(s.verdict)),
                Cell::from(s.note.clone()),
            ])
        })
        .collect();
    let empty = rows.is_empty();
    let table = Table::new(
        rows,
        [
            Constraint::Min(18),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec!["SOURCE", "SYN/s", "VERDICT", "NOTE"])
            .style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(titled(format!(
        " Top sources by SYN/s (of {} tracked) ",
        v.sources
    )));
    frame.render_widget(table, sources_area);
    if empty {
        let inner = Rect {
            x: sources_area.x + 2,
            y: sources_area.y + 2,
            width: sources_area.width.saturating_sub(4),
            height: 1.min(sources_area.height.saturating_sub(3)),
        };
        frame.render_widget(Paragraph::new("no source sending SYNs"), inner);
    }

    let mut drop_rows: Vec<Row> = v
        .drops
        .iter()
        .map(|(name, rate, total)| {
            let style = if *rate > 0 {
                Style::new().fg(Color::Red)
            } else {
                Style::new()
            };
            Row::new(vec![
                Cell::from(*name),
                Cell::from(rate.to_string()),
                Cell::from(total.to_string()),
            ])
            .style(style)
        })
        .collect();
    drop_rows.push(Row::new(vec![
        Cell::from("answered (cookie)"),
        Cell::from(v.answered_rate.to_string()),
        Cell::from(""),
    ]));
    let drops = Table::new(
        drop_rows,
        [
            Constraint::Length(18),
            Constraint::Length(7),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(vec!["REASON", "/s", "TOTAL"]).style(Style::new().add_modifier(Modifier::BOLD)),
    )
    .block(titled(if v.monitor {
        " Would drop, by reason (monitor) ".into()
    } else {
        " Drops by reason ".into()
    }));
    frame.render_widget(drops, drops_area);

    // Attack mode per interface.
    let attack_block = titled(format!(
        " Attack mode (starts at {} SYN/s) ",
        v.attack_syn_rate
    ));
    if v.ifaces.is_empty() {
        frame.render_widget(
            Paragraph::new("no interface attached").block(attack_block),
            attack,
        );
    } else {
        let rows: Vec<Row> = v
            .ifaces
            .iter()
            .map(|i| {
                let state = if i.attack {
                    Cell::from(format!(
                        "ATTACK MODE for {}",
                        i.attack_for.map_or("?".into(), format_duration)
                    ))
                    .style(Style::new().fg(Color::Red).add_modifier(Modifier::BOLD))
                } else {
                    Cell::from("normal").style(Style::new().fg(Color::Green))
                };
                Row::new(vec![
                    Cell::from(i.name.clone()),
                    state,
                    Cell::from(i.detector_rate.to_string()),
                    Cell::from(i.peak_rate.to_string()),
                    Cell::from(i.syn_rate.to_string()),
                    Cell::from(i.drop_rate.to_string()),
                    Cell::from(i.answered_rate.to_string()),
                ])
            })
            .collect();
        let table = Table::new(
            rows,
            [
                Constraint::Min(10),
                Constraint::Length(24),
                Constraint::Length(12),
                Constraint::Length(10),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(10),
            ],
        )
        .header(
            Row::new(vec![
                "INTERFACE",
                "STATE",
                "DETECTOR/s",
                "PEAK/s",
                "SYN/s",
                "DROPPED/s",
                "ANSWERED/s",
            ])
            .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(attack_block);
        frame.render_widget(table, attack);
    }

    // Ban and block events.
    let lines: Vec<Line> = if v.events.is_empty() {
        vec![Line::raw("no changes since top started")]
    } else {
        v.events
            .iter()
            .map(|e| {
                let style = if e.text.starts_with('+') {
                    Style::new().fg(Color::Red)
                } else if e.text.starts_with('-') {
                    Style::new().fg(Color::Green)
                } else {
                    Style::new()
                };
                Line::from(vec![
                    Span::raw(format!("{}  ", time_of_day(e.wall))),
                    Span::styled(e.text.clone(), style),
                ])
            })
            .collect()
    };
    let block = titled(format!(
        " Bans and blocks: {} banned, {} blocked, {} allowed now ",
        v.bans, v.blocks, v.allows
    ))
    .title_bottom(Line::from(" q quits ").right_aligned());
    frame.render_widget(Paragraph::new(lines).block(block), events);
}
