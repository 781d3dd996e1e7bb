//! Pictures of a history, for humans debugging a failed check: a self-contained HTML page
//! with an SVG timeline in the style of Porcupine's visualisation (one lane per client, one
//! bar per operation from call to completion), and a plain-text listing.

use crate::history::{Op, Operation, Ret};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Lists the operations one per line, in order of invocation, for logs and terminals.
pub fn render_text(history: &[Operation]) -> String {
    let mut ops: Vec<&Operation> = history.iter().collect();
    ops.sort_by_key(|op| (op.call, op.id));
    let mut text = String::new();
    for op in ops {
        let _ = writeln!(text, "{op}");
    }
    text
}

/// Renders a history as a standalone HTML page (no scripts, no external resources) with an SVG
/// timeline: one lane per client, x = simulated time, each operation a bar from call to
/// completion coloured by key, indeterminate ones open-ended to the right edge. Operations whose
/// ids are in `highlight` (e.g. a minimal failing history) get a thick red border and the others
/// are dimmed, so the few operations that matter stand out among thousands. Hovering a bar shows
/// the operation in full.
pub fn render_html(title: &str, history: &[Operation], highlight: &[usize]) -> String {
    let highlight: BTreeSet<usize> = highlight.iter().copied().collect();
    let layout = Layout::new(history);
    let mut svg = String::new();
    layout.axis(&mut svg);
    layout.lanes(&mut svg);
    // Drawing order: indeterminate bars (which run to the right edge, across the client's later
    // operations) underneath, highlighted ones on top.
    let mut drawn: Vec<&Operation> = history.iter().collect();
    drawn.sort_by_key(|op| (highlight.contains(&op.id), !indeterminate(op), op.call, op.id));
    for op in &drawn {
        layout.bar(&mut svg, op, &highlight);
    }
    let mut ops: Vec<&Operation> = history.iter().collect();
    ops.sort_by_key(|op| (op.call, op.id));
    let mut listing = String::new();
    for op in &ops {
        let mark = if highlight.contains(&op.id) { "* " } else { "  " };
        let _ = writeln!(listing, "{mark}{}", escape(&op.to_string()));
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
svg {{ font-family: monospace; font-size: 11px; }}
.lane-label, .tick-label {{ fill: #333; }}
.tick {{ stroke: #ddd; }}
.op text {{ fill: #111; }}
.op.dim {{ opacity: 0.3; }}
.op.hl rect {{ stroke: #d00; stroke-width: 3; }}
.legend span {{ display: inline-block; padding: 0 0.6em; margin-right: 0.4em; border-radius: 3px; }}
pre {{ font-size: 12px; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>{summary}</p>
<p class="legend">{legend}</p>
<div style="overflow-x: auto">
<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}">
{svg}</svg>
</div>
<details{open}><summary>Operations ({count}; highlighted ones marked *)</summary>
<pre>{listing}</pre>
</details>
</body>
</html>
"#,
        title = escape(title),
        summary = summary(history, &highlight),
        legend = layout.legend(),
        width = fmt_px(layout.width()),
        height = fmt_px(layout.height()),
        open = if history.len() <= 200 { " open" } else { "" },
        count = history.len(),
    )
}

fn summary(history: &[Operation], highlight: &BTreeSet<usize>) -> String {
    let indeterminate = history.iter().filter(|op| indeterminate(op)).count();
    let mut text = format!(
        "{} operations, {} indeterminate (dashed, open-ended: may or may not have taken effect).",
        history.len(),
        indeterminate
    );
    if !highlight.is_empty() {
        let _ = write!(text, " {} highlighted in red.", highlight.len());
    }
    text
}

/// Colours for keys; red is kept for highlighting.
const PALETTE: [&str; 9] = [
    "#9ecae9", "#ffbf79", "#8cd17d", "#d4a6c8", "#86bcb6", "#f1ce63", "#b6992d", "#a0cbe8",
    "#d7b5a6",
];

const LEFT: f64 = 90.0;
const TOP: f64 = 36.0;
const LANE: f64 = 26.0;
const BAR: f64 = 18.0;
/// Room to the right of the last completion, where indeterminate operations end.
const OPEN_END: f64 = 40.0;

/// Where things go: lanes by client, x by the order of events, as in Porcupine's pictures: every
/// distinct invocation or completion time gets a column, so short operations far apart in time
/// stay readable and the order of events is exact. Ticks give the simulated time.
struct Layout {
    /// Each client's first row; a client gets several rows where its operations overlap (a
    /// pipeline).
    lanes: BTreeMap<usize, usize>,
    /// The row of each operation, by id.
    rows: BTreeMap<usize, usize>,
    rows_total: usize,
    keys: BTreeMap<String, usize>,
    /// Distinct event times, ascending.
    points: Vec<u64>,
    /// Width of one column.
    step: f64,
    plot: f64,
}

impl Layout {
    fn new(history: &[Operation]) -> Self {
        let clients: BTreeSet<usize> = history.iter().map(|op| op.client).collect();
        let keys: BTreeSet<&str> = history.iter().map(|op| op.key.as_str()).collect();
        let mut points: Vec<u64> = history
            .iter()
            .flat_map(|op| [Some(op.call), op.complete.map(|c| c.max(op.call))])
            .flatten()
            .collect();
        points.sort_unstable();
        points.dedup();
        // Wide columns for short histories (a minimal failing one fits its labels), narrower
        // ones for long histories, within a bounded picture.
        let step = if points.len() <= 60 {
            120.0
        } else {
            (60_000.0 / points.len() as f64).clamp(8.0, 40.0)
        };
        let mut layout = Self {
            lanes: BTreeMap::new(),
            rows: BTreeMap::new(),
            rows_total: 0,
            keys: keys.into_iter().enumerate().map(|(i, key)| (key.to_string(), i)).collect(),
            plot: (points.len() as f64 * step).max(200.0),
            points,
            step,
        };
        for client in clients {
            layout.place(client, history);
        }
        layout
    }

    /// Gives each of `client`'s operations the first of its rows free at its call. An
    /// indeterminate operation holds its row only for its first column: it is drawn to the
    /// right edge, underneath the client's later operations.
    fn place(&mut self, client: usize, history: &[Operation]) {
        let mut ops: Vec<&Operation> = history.iter().filter(|op| op.client == client).collect();
        ops.sort_by_key(|op| (op.call, op.id));
        let first = self.rows_total;
        // The last column each row is busy until.
        let mut busy: Vec<usize> = Vec::new();
        for op in ops {
            let start = self.rank(op.call);
            let end = match op.complete {
                Some(c) if !indeterminate(op) => self.rank(c.max(op.call)),
                _ => start,
            };
            let row = match busy.iter().position(|&until| until < start) {
                Some(row) => row,
                None => {
                    busy.push(0);
                    busy.len() - 1
                }
            };
            busy[row] = end;
            self.rows.insert(op.id, first + row);
        }
        self.lanes.insert(client, first);
        self.rows_total = first + busy.len().max(1);
    }

    fn rank(&self, t: u64) -> usize {
        match self.points.binary_search(&t) {
            Ok(i) | Err(i) => i,
        }
    }

    fn width(&self) -> f64 {
        LEFT + self.plot + OPEN_END + 10.0
    }

    fn height(&self) -> f64 {
        TOP + self.rows_total as f64 * LANE + 10.0
    }

    /// The left edge of the column of time `t`.
    fn x(&self, t: u64) -> f64 {
        LEFT + self.rank(t) as f64 * self.step
    }

    fn colour(&self, key: &str) -> &'static str {
        let i = self.keys.get(key).copied().unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    }

    /// About twenty ticks, each at an event column, labelled with its simulated time.
    fn axis(&self, svg: &mut String) {
        let every = self.points.len().div_ceil(20).max(1);
        let bottom = self.height() - 10.0;
        for (rank, t) in self.points.iter().enumerate().step_by(every) {
            let x = LEFT + rank as f64 * self.step;
            let _ = writeln!(
                svg,
                r#"<line class="tick" x1="{x}" y1="{y0}" x2="{x}" y2="{bottom}"/><text class="tick-label" x="{x}" y="{ty}" text-anchor="start">{label}ms</text>"#,
                x = fmt_px(x),
                y0 = fmt_px(TOP - 8.0),
                bottom = fmt_px(bottom),
                ty = fmt_px(TOP - 12.0),
                label = trim_number((*t as f64 / 1e3).round() / 1e3),
            );
        }
    }

    fn lanes(&self, svg: &mut String) {
        for (client, lane) in &self.lanes {
            let y = TOP + *lane as f64 * LANE + BAR / 2.0 + 4.0;
            let _ = writeln!(
                svg,
                r#"<text class="lane-label" x="4" y="{}">client {client}</text>"#,
                fmt_px(y)
            );
        }
    }

    fn bar(&self, svg: &mut String, op: &Operation, highlight: &BTreeSet<usize>) {
        let row = self.rows.get(&op.id).copied().unwrap_or(0);
        let y = TOP + row as f64 * LANE;
        let x0 = self.x(op.call);
        let indeterminate = indeterminate(op);
        let x1 = match op.complete {
            // To the end of its completion's column.
            Some(complete) if !indeterminate => self.x(complete.max(op.call)) + self.step * 0.9,
            _ => LEFT + self.plot + OPEN_END,
        };
        let width = (x1 - x0).max(2.0);
        let colour = self.colour(&op.key);
        let mut class = String::from("op");
        if highlight.contains(&op.id) {
            class.push_str(" hl");
        } else if !highlight.is_empty() {
            class.push_str(" dim");
        }
        let style = if indeterminate {
            format!(
                r#"fill="{colour}" fill-opacity="0.25" stroke="{colour}" stroke-width="1.5" stroke-dasharray="5 3""#
            )
        } else {
            format!(r##"fill="{colour}" stroke="#555" stroke-width="0.5""##)
        };
        let _ = writeln!(
            svg,
            r#"<g class="{class}" data-id="{id}"><title>{full}</title><rect x="{x}" y="{y}" width="{w}" height="{h}" rx="2" {style}/><svg x="{x}" y="{y}" width="{w}" height="{h}"><text x="3" y="13">{label}</text></svg></g>"#,
            id = op.id,
            full = escape(&op.to_string()),
            x = fmt_px(x0),
            y = fmt_px(y),
            w = fmt_px(width),
            h = fmt_px(BAR),
            label = escape(&label(op)),
        );
    }

    fn legend(&self) -> String {
        let mut html = String::from("keys: ");
        for key in self.keys.keys() {
            let _ = write!(
                html,
                r#"<span style="background: {}">{}</span>"#,
                self.colour(key),
                escape(key)
            );
        }
        html
    }
}

/// Whether the operation never returned (it may or may not have taken effect).
fn indeterminate(op: &Operation) -> bool {
    op.ret == Ret::Unknown || op.complete.is_none()
}

/// A short label: `SET k1=c3-7 → OK`, `GET k2 → "x"`, `INCR k → ?`.
fn label(op: &Operation) -> String {
    let command = match &op.op {
        Op::Get => format!("GET {}", op.key),
        Op::Set(v) => format!("SET {}={v}", op.key),
        Op::Del => format!("DEL {}", op.key),
        Op::Incr => format!("INCR {}", op.key),
        Op::Append(v) => format!("APPEND {}+={v}", op.key),
        Op::GetSet(v) => format!("GETSET {}={v}", op.key),
        Op::LPush(v) => format!("LPUSH {} {v}", op.key),
        Op::RPush(v) => format!("RPUSH {} {v}", op.key),
        Op::RPush2(a, b) => format!("RPUSH {} {a} {b}", op.key),
        Op::LPop => format!("LPOP {}", op.key),
        Op::RPop => format!("RPOP {}", op.key),
        Op::LRange => format!("LRANGE {}", op.key),
        Op::SAdd(m) => format!("SADD {} {m}", op.key),
        Op::SAdd2(a, b) => format!("SADD {} {a} {b}", op.key),
        Op::SRem(m) => format!("SREM {} {m}", op.key),
        Op::SPop => format!("SPOP {}", op.key),
        Op::SMembers => format!("SMEMBERS {}", op.key),
        Op::SCard => format!("SCARD {}", op.key),
        Op::ZAdd(m, score) => format!("ZADD {} {score} {m}", op.key),
        Op::ZAdd2(a, x, b, y) => format!("ZADD {} {x} {a} {y} {b}", op.key),
        Op::ZIncrBy(m, by) => format!("ZINCRBY {} {by} {m}", op.key),
        Op::ZPopMin => format!("ZPOPMIN {}", op.key),
        Op::ZRange => format!("ZRANGE {}", op.key),
        Op::ZRem(m) => format!("ZREM {} {m}", op.key),
        Op::Replace => format!("MULTI SET DEL {}", op.key),
    };
    format!("{command} → {}", op.ret)
}

/// Escapes text for HTML and XML content and attribute values.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// Pixel coordinates with one decimal, keeping the SVG compact.
fn fmt_px(v: f64) -> String {
    trim_number((v * 10.0).round() / 10.0)
}

/// A number without trailing zeros (`5`, `2.5`, `0.001`).
fn trim_number(v: f64) -> String {
    let s = format!("{v:.6}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_string()
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(
        id: usize,
        client: usize,
        key: &str,
        op: Op,
        ret: Ret,
        call_ms: u64,
        complete_ms: Option<u64>,
    ) -> Operation {
        Operation {
            id,
            client,
            node: 1,
            key: key.to_string(),
            op,
            ret,
            call: call_ms * 1_000_000,
            complete: complete_ms.map(|ms| ms * 1_000_000),
            after: None,
        }
    }

    fn sample() -> Vec<Operation> {
        vec![
            op(0, 0, "k1", Op::Set("c0-0".into()), Ret::Set, 0, Some(3)),
            op(1, 1, "k2", Op::Get, Ret::Get(Some("<&>\"'".into())), 1, Some(2)),
            op(2, 2, "k1", Op::Incr, Ret::Unknown, 2, None),
            op(3, 1, "k1", Op::Get, Ret::Get(None), 4, Some(9)),
        ]
    }

    #[test]
    fn html_contains_an_svg_timeline() {
        let html = render_html("seed 42", &sample(), &[]);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<svg"));
        assert_eq!(html.matches(r#"<g class="op""#).count(), 4);
        assert!(html.contains("SET k1=c0-0 → OK"));
        assert!(html.contains("INCR k1 → ?"));
        assert!(html.contains("stroke-dasharray"), "indeterminate ops are dashed");
        assert!(html.contains("client 2"));
        assert!(html.contains("ms</text>"), "time ticks");
        assert!(!html.contains("<script"));
    }

    #[test]
    fn html_escapes_text() {
        let html = render_html("a <b> & \"c\"", &sample(), &[]);
        assert!(html.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
        assert!(html.contains("GET k2 → &quot;&lt;&amp;&gt;\\&quot;&#39;&quot;"));
        assert!(!html.contains("<&>"));
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn highlighted_ops_stand_out() {
        let html = render_html("t", &sample(), &[3]);
        assert!(html.contains(r#"<g class="op hl" data-id="3">"#));
        assert!(html.contains(r#"<g class="op dim" data-id="0">"#));
        assert!(html.contains("* #3 client 1"));
    }

    #[test]
    fn degenerate_histories_render() {
        assert!(render_html("empty", &[], &[]).contains("<svg"));
        let one = vec![op(0, 0, "k", Op::Del, Ret::Del(0), 5, Some(5))];
        assert!(render_html("instant", &one, &[0]).contains("DEL k → 0"));
        let huge = vec![op(0, 0, "k", Op::Get, Ret::Get(None), u64::MAX / 1_000_000, Some(0))];
        assert!(render_html("odd", &huge, &[]).contains("<svg"));
    }

    #[test]
    fn text_is_sorted_by_call_time() {
        let mut ops = sample();
        ops.reverse();
        let text = render_text(&ops);
        let ids: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap_or("")).collect();
        assert_eq!(ids, vec!["#0", "#1", "#2", "#3"]);
    }
}
