//! The status page: `GET /` on the headnode's metrics port. One server-rendered HTML page, no
//! script and no external asset (the CSS is inline), that reloads itself every 2 s: the datanodes
//! with their status, address, probe latency, messages routed and last change; the last
//! transitions; totals and uptime.
//!
//! Everything a datanode controls (its name, its address, the errors it causes) goes through
//! [`escape`], so a datanode that registers under a name full of markup shows that markup as
//! text.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::pool::{Liveness, Pool};
use crate::metrics::GrpcMetrics;

/// How often the page reloads itself, in seconds.
pub const REFRESH_SECONDS: u32 = 2;

/// What the page is rendered from.
pub struct StatusPage {
    pool: Arc<Pool>,
    /// The Store counts by result come from the gRPC metrics.
    grpc: Arc<GrpcMetrics>,
    /// For the uptime.
    started: Instant,
    started_at: DateTime<Utc>,
    /// The gRPC address clients use, shown in the header.
    listen: String,
}

impl StatusPage {
    pub fn new(pool: Arc<Pool>, grpc: Arc<GrpcMetrics>, listen: String) -> Self {
        Self {
            pool,
            grpc,
            started: Instant::now(),
            started_at: Utc::now(),
            listen,
        }
    }

    /// The page as it is now.
    pub fn render(&self) -> String {
        let now = Utc::now();
        let members = self.pool.members();
        let rows: Vec<Row> = members
            .iter()
            .map(|m| {
                let o = m.observation();
                Row {
                    name: m.name.clone(),
                    address: m.address.clone(),
                    registered: m.registered,
                    liveness: o.liveness,
                    latency: o.latency,
                    routed: m.routed(),
                    last_change: o.last_change,
                    last_checked: o.last_checked,
                    detail: o.detail,
                }
            })
            .collect();
        let stores = self.grpc.handled(crate::STORE_SERVICE, "Store");
        let summary = Summary {
            serving: rows
                .iter()
                .filter(|r| r.liveness == Liveness::Serving)
                .count(),
            datanodes: rows.len(),
            stored: stores
                .iter()
                .filter(|(code, _)| *code == "OK")
                .map(|(_, n)| n)
                .sum(),
            failed: stores
                .iter()
                .filter(|(code, _)| *code != "OK")
                .cloned()
                .collect(),
            routed: rows.iter().map(|r| r.routed).sum(),
            uptime: self.started.elapsed(),
        };
        render(&Page {
            now,
            started_at: self.started_at,
            listen: &self.listen,
            summary,
            rows,
            transitions: self.pool.recent_transitions(),
        })
    }
}

/// One datanode's line in the table.
struct Row {
    name: String,
    address: String,
    registered: bool,
    liveness: Liveness,
    latency: Option<Duration>,
    routed: u64,
    last_change: Option<DateTime<Utc>>,
    last_checked: Option<DateTime<Utc>>,
    detail: String,
}

/// The numbers at the top of the page.
struct Summary {
    serving: usize,
    datanodes: usize,
    /// Stores answered OK.
    stored: u64,
    /// Stores answered with an error, by code.
    failed: Vec<(&'static str, u64)>,
    routed: u64,
    uptime: Duration,
}

/// Everything the page shows, gathered first so rendering is a pure function (and testable).
struct Page<'a> {
    now: DateTime<Utc>,
    started_at: DateTime<Utc>,
    listen: &'a str,
    summary: Summary,
    rows: Vec<Row>,
    transitions: Vec<super::pool::Transition>,
}

/// `text` safe to put in HTML text and in quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The CSS class and the words of a status.
fn badge(liveness: Liveness) -> (&'static str, &'static str) {
    match liveness {
        Liveness::Serving => ("ok", "SERVING"),
        Liveness::NotServing => ("warn", "NOT_SERVING"),
        Liveness::Unreachable => ("bad", "UNREACHABLE"),
        Liveness::Unknown => ("unknown", "UNKNOWN"),
    }
}

/// `1 h 02 min`, `3 min 05 s`, `42 s`.
fn format_span(span: Duration) -> String {
    let s = span.as_secs();
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d} d {h:02} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {s:02} s")
    } else {
        format!("{s} s")
    }
}

fn ago(now: DateTime<Utc>, then: Option<DateTime<Utc>>) -> String {
    match then {
        Some(then) => {
            let span = (now - then).to_std().unwrap_or_default();
            format!(
                r#"<span title="{}">{} ago</span>"#,
                crate::time::format(then),
                format_span(span)
            )
        }
        None => "—".to_string(),
    }
}

fn latency(liveness: Liveness, latency: Option<Duration>) -> String {
    match (liveness, latency) {
        (Liveness::Serving | Liveness::NotServing, Some(l)) => {
            format!("{:.2} ms", l.as_secs_f64() * 1000.0)
        }
        _ => "—".to_string(),
    }
}

/// Thousands separated by a thin space: 1 234 567.
fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push('\u{2009}');
        }
        out.push(c);
    }
    out
}

const STYLE: &str = r#"
:root { --ok:#15803d; --ok-bg:#dcfce7; --warn:#b45309; --warn-bg:#fef3c7; --bad:#b91c1c; --bad-bg:#fee2e2;
        --muted:#64748b; --line:#e2e8f0; --ink:#0f172a; --card:#ffffff; --page:#f1f5f9; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--page); color: var(--ink);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header { background: #0f172a; color: #f8fafc; padding: 18px 32px; display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; }
header h1 { margin: 0; font-size: 20px; font-weight: 650; letter-spacing: .2px; }
header .where { color: #94a3b8; font-size: 13px; }
header .health { margin-left: auto; font-weight: 600; font-size: 13px; padding: 4px 12px; border-radius: 999px; }
header .health.ok { background: var(--ok); color: #fff; }
header .health.warn { background: #d97706; color: #fff; }
header .health.bad { background: var(--bad); color: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 40px; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 14px; margin-bottom: 24px; }
.tile { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px 16px; }
.tile .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .6px; }
.tile .value { font-size: 26px; font-weight: 650; margin-top: 2px; font-variant-numeric: tabular-nums; }
.tile .sub { color: var(--muted); font-size: 12px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 10px; margin-bottom: 24px; overflow: hidden; }
section h2 { font-size: 15px; margin: 0; padding: 14px 18px; border-bottom: 1px solid var(--line); }
section h2 small { color: var(--muted); font-weight: 400; margin-left: 6px; }
table { width: 100%; border-collapse: collapse; }
th { text-align: left; font-size: 12px; color: var(--muted); font-weight: 600; text-transform: uppercase; letter-spacing: .5px;
     padding: 9px 14px; background: #f8fafc; border-bottom: 1px solid var(--line); white-space: nowrap; }
td { padding: 10px 14px; border-bottom: 1px solid var(--line); vertical-align: top; white-space: nowrap; }
th:first-child, td:first-child { padding-left: 18px; }
tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.name { font-weight: 600; }
td.mono, span.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
td.detail { color: var(--muted); white-space: normal; overflow-wrap: anywhere; font-size: 13px; width: 40%; }
.badge { display: inline-block; font-size: 12px; font-weight: 650; padding: 2px 10px; border-radius: 999px; letter-spacing: .3px; white-space: nowrap; }
.badge::before { content: ""; display: inline-block; width: 7px; height: 7px; border-radius: 50%; margin-right: 6px; vertical-align: 1px; background: currentColor; }
.badge.ok { color: var(--ok); background: var(--ok-bg); }
.badge.warn { color: var(--warn); background: var(--warn-bg); }
.badge.bad { color: var(--bad); background: var(--bad-bg); }
.badge.unknown { color: var(--muted); background: #e2e8f0; }
tr.bad td { background: #fff7f7; }
.tag { font-size: 11px; color: var(--muted); border: 1px solid var(--line); border-radius: 4px; padding: 0 5px; margin-left: 6px; font-weight: 500; }
.arrow { color: var(--muted); margin: 0 4px; }
.empty { color: var(--muted); padding: 16px 18px; }
footer { color: var(--muted); font-size: 12px; text-align: center; }
footer a { color: inherit; }
"#;

fn render(page: &Page<'_>) -> String {
    let s = &page.summary;
    let (health_class, health_text) = if s.datanodes == 0 {
        ("bad", "no datanodes".to_string())
    } else if s.serving == s.datanodes {
        ("ok", "all datanodes serving".to_string())
    } else if s.serving == 0 {
        ("bad", "no datanode serving".to_string())
    } else {
        (
            "warn",
            format!(
                "{} of {} datanodes down",
                s.datanodes - s.serving,
                s.datanodes
            ),
        )
    };
    let failed_total: u64 = s.failed.iter().map(|(_, n)| n).sum();
    let failed_detail = if s.failed.is_empty() {
        "no errors".to_string()
    } else {
        s.failed
            .iter()
            .map(|(code, n)| format!("{code} {}", count(*n)))
            .collect::<Vec<_>>()
            .join(" · ")
    };

    let mut html = String::with_capacity(16 * 1024);
    let _ = write!(
        html,
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>registro · {serving}/{datanodes} serving</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>registro headnode</h1>
<span class="where">gRPC on <span class="mono">{listen}</span> · up since {started}</span>
<span class="health {health_class}">{health_text}</span>
</header>
<main>
<div class="tiles">
<div class="tile"><div class="label">Datanodes serving</div><div class="value">{serving} / {datanodes}</div><div class="sub">as last checked</div></div>
<div class="tile"><div class="label">Stores OK</div><div class="value">{stored}</div><div class="sub">answered by this headnode</div></div>
<div class="tile"><div class="label">Stores failed</div><div class="value">{failed_total}</div><div class="sub">{failed_detail}</div></div>
<div class="tile"><div class="label">Messages routed</div><div class="value">{routed}</div><div class="sub">to the datanodes listed</div></div>
<div class="tile"><div class="label">Uptime</div><div class="value">{uptime}</div><div class="sub">headnode process</div></div>
</div>
"#,
        serving = s.serving,
        datanodes = s.datanodes,
        listen = escape(page.listen),
        started = crate::time::format(page.started_at),
        stored = count(s.stored),
        failed_total = count(failed_total),
        failed_detail = escape(&failed_detail),
        routed = count(s.routed),
        uptime = format_span(s.uptime),
    );

    html.push_str(
        r#"<section>
<h2>Datanodes</h2>
"#,
    );
    if page.rows.is_empty() {
        html.push_str(r#"<div class="empty">No datanode has registered yet.</div>"#);
    } else {
        html.push_str(
            r#"<table>
<thead><tr><th>Status</th><th>Datanode</th><th>Address</th><th class="num">Probe latency</th><th class="num">Routed</th><th>Last change</th><th>Last check</th><th>Detail</th></tr></thead>
<tbody>
"#,
        );
        for r in &page.rows {
            let (class, word) = badge(r.liveness);
            let _ = writeln!(
                html,
                r#"<tr class="{row_class}"><td><span class="badge {class}">{word}</span></td><td class="name">{name}{tag}</td><td class="mono">{address}</td><td class="num">{latency}</td><td class="num">{routed}</td><td>{change}</td><td>{checked}</td><td class="detail">{detail}</td></tr>"#,
                row_class = if r.liveness == Liveness::Unreachable {
                    "bad"
                } else {
                    ""
                },
                name = escape(&r.name),
                tag = if r.registered {
                    ""
                } else {
                    r#"<span class="tag" title="from --datanodes">static</span>"#
                },
                address = escape(&r.address),
                latency = latency(r.liveness, r.latency),
                routed = count(r.routed),
                change = ago(page.now, r.last_change),
                checked = ago(page.now, r.last_checked),
                detail = escape(&r.detail),
            );
        }
        html.push_str("</tbody>\n</table>\n");
    }
    html.push_str("</section>\n");

    let _ = write!(
        html,
        r#"<section>
<h2>Recent transitions<small>the last {} status changes, newest first</small></h2>
"#,
        super::pool::RECENT_TRANSITIONS
    );
    if page.transitions.is_empty() {
        html.push_str(r#"<div class="empty">No status change yet.</div>"#);
    } else {
        html.push_str(
            r#"<table>
<thead><tr><th>When</th><th>Datanode</th><th>Change</th><th>Detail</th></tr></thead>
<tbody>
"#,
        );
        for t in &page.transitions {
            let (from_class, from) = badge(t.from);
            let (to_class, to) = badge(t.to);
            let _ = writeln!(
                html,
                r#"<tr><td><span class="mono" title="{stamp}">{at} UTC</span><br><small>{ago}</small></td><td class="name">{name}<br><span class="mono" style="font-weight:400;color:var(--muted)">{address}</span></td><td><span class="badge {from_class}">{from}</span><span class="arrow">→</span><span class="badge {to_class}">{to}</span></td><td class="detail">{detail}</td></tr>"#,
                stamp = crate::time::format(t.at),
                at = t.at.format("%H:%M:%S%.3f"),
                ago = ago(page.now, Some(t.at)),
                name = escape(&t.datanode),
                address = escape(&t.address),
                detail = escape(&t.detail),
            );
        }
        html.push_str("</tbody>\n</table>\n");
    }
    html.push_str("</section>\n");

    let _ = write!(
        html,
        r#"<footer>Rendered {now} · reloads every {REFRESH_SECONDS} s · <a href="/metrics">/metrics</a> for Prometheus</footer>
</main>
</body>
</html>
"#,
        now = crate::time::format(page.now),
    );
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headnode::pool::Transition;

    fn row(name: &str, liveness: Liveness, detail: &str) -> Row {
        Row {
            name: name.into(),
            address: format!("{name}:6000"),
            registered: true,
            liveness,
            latency: Some(Duration::from_micros(420)),
            routed: 1234,
            last_change: None,
            last_checked: None,
            detail: detail.into(),
        }
    }

    fn page(rows: Vec<Row>, transitions: Vec<Transition>) -> String {
        render(&Page {
            now: Utc::now(),
            started_at: Utc::now(),
            listen: "0.0.0.0:5000",
            summary: Summary {
                serving: 1,
                datanodes: rows.len(),
                stored: 1_234_567,
                failed: vec![("Unavailable", 3)],
                routed: 1234,
                uptime: Duration::from_secs(3725),
            },
            rows,
            transitions,
        })
    }

    /// A datanode's name, address and errors are shown as text: markup in them never reaches
    /// the page as markup.
    #[test]
    fn datanode_text_is_html_escaped() {
        let evil = r#"<script>alert("x")</script>&'"#;
        let html = page(
            vec![row(evil, Liveness::Unreachable, "<b>refused</b>")],
            vec![Transition {
                at: Utc::now(),
                datanode: evil.into(),
                address: "<i>host</i>:1".into(),
                from: Liveness::Serving,
                to: Liveness::Unreachable,
                detail: "<img src=x>".into(),
            }],
        );
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("<b>refused"), "{html}");
        assert!(!html.contains("<i>host"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"));
        assert!(html.contains("&lt;b&gt;refused&lt;/b&gt;"));
    }

    /// The page reloads itself every 2 s and loads nothing from anywhere else.
    #[test]
    fn the_page_refreshes_itself_and_has_no_external_assets() {
        let html = page(vec![row("datanode1", Liveness::Serving, "")], Vec::new());
        assert!(html.contains(r#"<meta http-equiv="refresh" content="2">"#));
        for needle in ["<script", "<link", "src=", "http://", "https://", "@import"] {
            assert!(!html.contains(needle), "found {needle:?}");
        }
        assert!(html.contains("SERVING") && html.contains("datanode1:6000"));
        assert!(html.contains("0.42 ms"));
        assert!(html.contains("1\u{2009}234\u{2009}567"));
        assert!(html.contains("1 h 02 min"));
    }

    #[test]
    fn spans_read_like_a_person_wrote_them() {
        assert_eq!(format_span(Duration::from_secs(42)), "42 s");
        assert_eq!(format_span(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(format_span(Duration::from_secs(90_000)), "1 d 01 h");
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1\u{2009}000");
    }
}
