//! Charts as inline SVG, drawn on the server: a capacity bar, a state timeline and a strip of
//! backup runs. Every text that goes into a chart passes through [`esc`]; colours come from the
//! stylesheet (classes), so the charts follow light and dark.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;

/// Escapes text for SVG/HTML.
pub fn esc(text: &str) -> String {
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

const WIDTH: f64 = 600.0;

/// A capacity bar: reserve, requested and free along allocatable, with a mark where the
/// limits end. Values in the same unit (millis); `labels` are the same values as people read
/// them (`3500m`, `6Gi`), in the order reserved, requested, free, limits, allocatable.
pub fn capacity_bar(
    allocatable: i128,
    reserved: i128,
    requested: i128,
    limits: i128,
    labels: [&str; 5],
) -> String {
    let [l_reserved, l_requested, l_free, l_limits, l_allocatable] = labels.map(esc);
    let scale_max = allocatable
        .max(reserved + requested)
        .max(reserved + limits)
        .max(1) as f64;
    let x = |v: i128| (v.max(0) as f64 / scale_max * WIDTH).min(WIDTH);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="bar" viewBox="0 0 {WIDTH} 28" preserveAspectRatio="none" role="img" aria-label="reserved {l_reserved}, requested {l_requested}, free {l_free}, limits {l_limits} of {l_allocatable}">"#
    );
    let _ = write!(
        out,
        r#"<rect class="b-track" x="0" y="4" width="{:.1}" height="20"/>"#,
        x(allocatable)
    );
    let _ = write!(
        out,
        r#"<rect class="b-reserved" x="0" y="4" width="{:.1}" height="20"><title>reserved {l_reserved}</title></rect>"#,
        x(reserved)
    );
    let over = reserved + requested > allocatable;
    let _ = write!(
        out,
        r#"<rect class="{}" x="{:.1}" y="4" width="{:.1}" height="20"><title>requested {l_requested}</title></rect>"#,
        if over { "b-over" } else { "b-requested" },
        x(reserved),
        (x(reserved + requested) - x(reserved)).max(0.0)
    );
    let limit_x = x(reserved + limits);
    let _ = write!(
        out,
        r#"<line class="{}" x1="{limit_x:.1}" x2="{limit_x:.1}" y1="0" y2="28"><title>limits {l_limits}</title></line>"#,
        if reserved + limits > allocatable {
            "b-limit-over"
        } else {
            "b-limit"
        }
    );
    out.push_str("</svg>");
    out
}

/// One segment of a timeline: from `start` in `state` (`InSync`, `Drifted`, `Unknown`).
pub struct Segment {
    /// When the state began.
    pub start: Timestamp,
    /// The state.
    pub state: String,
}

/// A timeline of states from the first segment's start to `now`.
pub fn timeline(segments: &[Segment], now: Timestamp) -> String {
    let Some(first) = segments.first() else {
        return String::new();
    };
    let span = now.duration_since(first.start).as_secs_f64().max(1.0);
    let x = |t: Timestamp| {
        (t.duration_since(first.start).as_secs_f64() / span * WIDTH).clamp(0.0, WIDTH)
    };
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="timeline" viewBox="0 0 {WIDTH} 24" preserveAspectRatio="none" role="img" aria-label="state over time">"#
    );
    for (i, s) in segments.iter().enumerate() {
        let end = segments.get(i + 1).map(|n| n.start).unwrap_or(now);
        let class = match s.state.as_str() {
            "InSync" => "t-ok",
            "Drifted" => "t-bad",
            _ => "t-unknown",
        };
        let _ = write!(
            out,
            r#"<rect class="{class}" x="{:.1}" y="2" width="{:.1}" height="20"><title>{} from {}</title></rect>"#,
            x(s.start),
            (x(end) - x(s.start)).max(1.0),
            esc(&s.state),
            esc(&s.start.to_string())
        );
    }
    out.push_str("</svg>");
    out
}

/// One backup run on a strip.
pub struct Run {
    /// When it started (or was created).
    pub at: Timestamp,
    /// Its phase.
    pub phase: String,
    /// Encrypted bytes, if it succeeded.
    pub bytes: Option<i64>,
    /// Its name, for the tooltip.
    pub name: String,
}

/// Backup runs along time: a bar per run, its height by size (successful runs), its colour by
/// phase, so a failed night or a backup that shrank stands out.
pub fn runs(runs: &[Run], now: Timestamp) -> String {
    let Some(first) = runs.iter().map(|r| r.at).min() else {
        return String::new();
    };
    let span = now.duration_since(first).as_secs_f64().max(3600.0);
    let biggest = runs
        .iter()
        .filter_map(|r| r.bytes)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="runs" viewBox="0 0 {WIDTH} 40" preserveAspectRatio="none" role="img" aria-label="backup runs over time">"#
    );
    for r in runs {
        let x = (r.at.duration_since(first).as_secs_f64() / span * (WIDTH - 6.0))
            .clamp(0.0, WIDTH - 6.0);
        let h = match r.bytes {
            Some(b) => 8.0 + 30.0 * (b as f64 / biggest),
            None => 38.0,
        };
        let class = match r.phase.as_str() {
            "Succeeded" => "r-ok",
            "Failed" => "r-bad",
            _ => "r-run",
        };
        let _ = write!(
            out,
            r#"<rect class="{class}" x="{x:.1}" y="{:.1}" width="5" height="{h:.1}"><title>{}: {}</title></rect>"#,
            40.0 - h,
            esc(&r.name),
            esc(&r.phase)
        );
    }
    out.push_str("</svg>");
    out
}

/// A latency gauge: p50 and p95 against the budget (milliseconds).
pub fn latency(p50: Option<f64>, p95: Option<f64>, budget: f64) -> String {
    let top = budget.max(p95.unwrap_or(0.0)).max(1.0) * 1.1;
    let x = |v: f64| (v / top * WIDTH).clamp(0.0, WIDTH);
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg class="bar" viewBox="0 0 {WIDTH} 28" preserveAspectRatio="none" role="img" aria-label="latency against the budget">"#
    );
    let _ = write!(
        out,
        r#"<rect class="b-track" x="0" y="4" width="{WIDTH}" height="20"/>"#
    );
    if let Some(p95) = p95 {
        let _ = write!(
            out,
            r#"<rect class="{}" x="0" y="4" width="{:.1}" height="20"><title>p95 {p95:.0} ms</title></rect>"#,
            if p95 > budget { "b-over" } else { "b-reserved" },
            x(p95)
        );
    }
    if let Some(p50) = p50 {
        let _ = write!(
            out,
            r#"<rect class="b-requested" x="0" y="4" width="{:.1}" height="20"><title>p50 {p50:.0} ms</title></rect>"#,
            x(p50)
        );
    }
    let b = x(budget);
    let _ = write!(
        out,
        r#"<line class="b-limit" x1="{b:.1}" x2="{b:.1}" y1="0" y2="28"><title>budget {budget:.0} ms</title></line>"#
    );
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_in_charts_is_escaped() {
        let svg = capacity_bar(4000, 500, 1500, 2000, ["500m", "<script>", "2", "2", "4"]);
        assert!(svg.contains("&lt;script&gt;"), "{svg}");
        assert!(!svg.contains("<script>"), "{svg}");
    }

    #[test]
    fn an_overcommitted_bar_is_marked() {
        assert!(capacity_bar(4000, 500, 4000, 5000, ["", "", "", "", ""]).contains("b-over"));
        assert!(!capacity_bar(4000, 500, 1000, 1000, ["", "", "", "", ""]).contains("b-over"));
    }
}
