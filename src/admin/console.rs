//! `GET /console`: the web console, server-rendered HTML with inline SVG
//! charts — no JavaScript, no build step. It refreshes itself every
//! [`REFRESH_SECS`] seconds (`<meta http-equiv="refresh">`). Behind the
//! admin key: `Authorization: Bearer <key>`, or HTTP Basic with the key as
//! the password, so a browser asks for it (any user name).

use super::history::Interval;
use super::views::{ClusterStatus, TxnDetail, TxnList};
use super::AdminState;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use std::fmt::Write as _;

pub const REFRESH_SECS: u64 = 5;

/// A byte count for people: `12.3 GiB`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The audit-chain cell of a node: its class and text (`ok, N entries`,
/// `BROKEN: …`, `not checked yet`, or `no API` for a node without a gateway).
pub fn audit_chain_cell(chain: Option<&paytx_protocol::messages::AuditChainView>) -> (&'static str, String) {
    match chain {
        None => ("", "no API".to_string()),
        Some(chain) if chain.checked_at_ms == 0 => ("", "not checked yet".to_string()),
        Some(chain) => match &chain.problem {
            None => ("ok", format!("ok, {} entries", chain.verified_entries)),
            Some(problem) => ("bad", format!("BROKEN after entry {}: {problem}", chain.verified_entries)),
        },
    }
}

/// Escapes text for HTML element content and attribute values.
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

/// The console accepts the key as a bearer token or as a Basic password.
fn authorized(state: &AdminState, req: &HttpRequest) -> Result<(), &'static str> {
    let basic = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, password)| password.to_string()));
    match basic {
        Some(password) => state.key_matches(password.as_bytes()),
        None => super::check_admin_key(state, req),
    }
}

#[derive(serde::Deserialize)]
pub struct ConsoleQuery {
    txn: Option<String>,
}

pub async fn page(state: web::Data<AdminState>, req: HttpRequest, query: web::Query<ConsoleQuery>) -> HttpResponse {
    if let Err(reason) = authorized(&state, &req) {
        return HttpResponse::Unauthorized()
            .insert_header(("WWW-Authenticate", "Basic realm=\"paytx-admin\""))
            .content_type("text/plain; charset=utf-8")
            .body(format!("401 unauthorized: {reason}\n"));
    }
    let cluster = super::api::cluster_status(&state).await;
    let txns = super::api::txn_list(&state, 50).await;
    let readiness = super::health::readiness(&state).await;
    let lookup = match query.txn.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        Some(wanted) => Some((wanted.to_string(), super::api::txn_detail(&state, wanted).await)),
        None => None,
    };
    let intervals = state.history.intervals();
    let aborts = Aborts { span_secs: state.history.span_secs(), by_reason: state.history.aborts_by_reason() };
    let html = render(&cluster, &txns, &readiness, lookup.as_ref(), &intervals, &aborts);
    HttpResponse::Ok().content_type("text/html; charset=utf-8").body(html)
}

/// Aborts by reason: over the sampler's history and since start.
pub struct Aborts {
    pub span_secs: u64,
    /// `(reason, in the last span_secs, since start)`, most frequent first.
    pub by_reason: Vec<(String, u64, u64)>,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:1rem 2rem;color:#222;max-width:1200px}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.85rem;white-space:nowrap}\
th{background:#f3f3f3}.ok{color:#176e2c}.bad{color:#b00020}.charts{display:flex;gap:2rem;flex-wrap:wrap}\
code{font-size:.85rem}h2{margin-top:1.5rem;font-size:1.15rem}td.audit{white-space:normal;max-width:16rem}";

/// The whole page.
pub fn render(
    cluster: &ClusterStatus,
    txns: &TxnList,
    readiness: &super::health::Readiness,
    lookup: Option<&(String, Option<TxnDetail>)>,
    intervals: &[Interval],
    aborts: &Aborts,
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>paytx console — node {}</title><style>{STYLE}</style></head><body>",
        cluster.answered_by
    );
    let leader = cluster.leader.map(|l| format!("node {l}")).unwrap_or_else(|| "none known".into());
    let (class, health) = if readiness.ready {
        ("ok", "ready".to_string())
    } else {
        ("bad", format!("not ready: {}", readiness.reasons.join("; ")))
    };
    let _ = write!(
        h,
        "<h1>paytx console</h1><p>Answered by node {} · coordinator leader: <b id=\"leader\">{}</b> · this node: \
         <span class=\"{class}\">{}</span> · refreshes every {REFRESH_SECS} s</p>",
        cluster.answered_by,
        escape(&leader),
        escape(&health)
    );

    h.push_str("<h2>Cluster</h2><table id=\"nodes\"><tr><th>node</th><th>address</th><th>role</th><th>term</th><th>leader</th>\
                <th>applied</th><th>lag</th><th>undecided</th><th>unacked</th><th>in doubt</th><th>syncs / flushes</th><th>disk free</th>\
                <th>audit chain</th></tr>");
    for node in &cluster.nodes {
        let cell = |v: Option<String>| v.unwrap_or_else(|| "—".into());
        let status = node.status.as_ref();
        let (audit_class, audit) = match status.map(|s| &s.local.audit_chain) {
            None => ("", "—".to_string()),
            Some(chain) => audit_chain_cell(chain.as_ref()),
        };
        let _ = write!(
            h,
            "<tr><td>node {}</td><td><code>{}</code></td><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"audit {audit_class}\">{}</td></tr>",
            node.node,
            node.addr,
            if node.status.is_some() { "ok" } else { "bad" },
            escape(&match &node.error {
                Some(e) => format!("{} ({e})", node.role),
                None => node.role.clone(),
            }),
            cell(status.and_then(|s| s.raft_term).map(|t| t.to_string())),
            cell(status.and_then(|s| s.leader).map(|l| format!("node {l}"))),
            cell(status.and_then(|s| s.last_applied_index).map(|i| i.to_string())),
            cell(node.lag_entries.map(|l| l.to_string())),
            cell(status.map(|s| s.undecided_txns.to_string())),
            cell(status.map(|s| s.unacked_txns.to_string())),
            cell(status.map(|s| s.shards.iter().map(|x| x.in_doubt).sum::<u64>().to_string())),
            cell(status.map(|s| format!("{} / {}", s.disk_syncs, s.disk_flushes))),
            cell(status.and_then(|s| s.local.disk_free_bytes).map(bytes_text)),
            escape(&audit),
        );
    }
    h.push_str("</table>");

    let _ = write!(
        h,
        "<h2>Throughput and latency (last {} s, the cluster: every node's coordinator added up, sampled by node \
         {})</h2><div class=\"charts\">",
        intervals.len(),
        cluster.answered_by
    );
    let commits: Vec<(f64, f64)> = intervals.iter().map(|i| (-i.ago_secs, i.commits_per_sec)).collect();
    let aborted: Vec<(f64, f64)> = intervals.iter().map(|i| (-i.ago_secs, i.aborts_per_sec)).collect();
    h.push_str(&svg_chart(
        "transactions per second",
        &[("commits", "#176e2c", &commits), ("aborts", "#b00020", &aborted)],
        1.0,
        "/s",
    ));
    let p50: Vec<(f64, f64)> = intervals.iter().filter_map(|i| i.p50_seconds.map(|v| (-i.ago_secs, v * 1e3))).collect();
    let p99: Vec<(f64, f64)> = intervals.iter().filter_map(|i| i.p99_seconds.map(|v| (-i.ago_secs, v * 1e3))).collect();
    h.push_str(&svg_chart(
        "commit latency (ms, bucket bounds)",
        &[("p50", "#1f5fa8", &p50), ("p99", "#c77700", &p99)],
        1.0,
        " ms",
    ));
    h.push_str("</div>");

    let _ = write!(
        h,
        "<h2>Transactions in flight and awaiting acknowledgements ({} in node {}'s table, oldest first)</h2>\
         <table id=\"txns\"><tr><th>txn</th><th>key</th><th>state</th><th>age</th><th>ops</th></tr>",
        txns.total, txns.answered_by
    );
    if txns.txns.is_empty() {
        h.push_str("<tr><td colspan=\"5\">none</td></tr>");
    }
    for t in &txns.txns {
        let _ = write!(
            h,
            "<tr><td><a href=\"/console?txn={}\"><code>{}</code></a></td><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td></tr>",
            escape(&t.txn),
            escape(&t.txn),
            escape(&t.key),
            escape(&t.state),
            t.age_ms as f64 / 1e3,
            t.ops
        );
    }
    h.push_str("</table><p>In doubt on this node's shards: ");
    let in_doubt: Vec<String> = txns.in_doubt_by_shard.iter().map(|(s, n)| format!("{} {n}", escape(s))).collect();
    h.push_str(&in_doubt.join(" · "));
    h.push_str("</p>");

    h.push_str(
        "<h2>Look up a transaction</h2><form method=\"get\" action=\"/console\"><input name=\"txn\" size=\"40\" \
                placeholder=\"txn-3.1.4294967297 or an idempotency key\"> <button>look up</button></form>",
    );
    if let Some((wanted, detail)) = lookup {
        match detail {
            None => {
                let _ = write!(h, "<p id=\"lookup\" class=\"bad\">{}: not found</p>", escape(wanted));
            }
            Some(d) => {
                let decision = match (&d.decision, &d.refused) {
                    (Some(o), _) => format!("{o:?}"),
                    (None, Some(reason)) => format!("none yet (will abort: {reason})"),
                    (None, None) => "none yet".into(),
                };
                let _ = write!(
                    h,
                    "<div id=\"lookup\"><p><code>{}</code> key <b>{}</b> · state {} · decision {}{}</p>\
                     <table><tr><th>shard</th><th>vote</th><th>acked</th><th>operations</th></tr>",
                    escape(&d.txn),
                    escape(&d.key),
                    escape(&d.state),
                    escape(&decision),
                    d.decided_after_ms.map_or_else(String::new, |ms| format!(", {ms} ms after its Begin"))
                );
                if d.shards.is_empty() {
                    h.push_str(
                        "<tr><td colspan=\"4\">finished: every shard acknowledged and the record was \
                         forgotten; the key keeps the outcome</td></tr>",
                    );
                }
                for s in &d.shards {
                    let acked = match (s.acked, s.acked_after_ms) {
                        (Some(true), Some(ms)) => format!("yes, {ms} ms after the decision"),
                        (Some(true), None) => "yes".into(),
                        (Some(false), _) => "not yet".into(),
                        (None, _) => "—".into(),
                    };
                    let ops: Vec<String> = s.ops.iter().map(|o| format!("{o:?}")).collect();
                    let _ = write!(
                        h,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                        escape(&s.shard),
                        escape(&s.vote),
                        acked,
                        escape(&ops.join("; "))
                    );
                }
                h.push_str("</table></div>");
            }
        }
    }

    let _ = write!(
        h,
        "<h2>Aborts by reason (the cluster, sampled by node {})</h2><table id=\"aborts\"><tr><th>reason</th>\
         <th>last {} s</th><th>since each node started</th></tr>",
        cluster.answered_by, aborts.span_secs
    );
    if aborts.by_reason.is_empty() {
        h.push_str("<tr><td colspan=\"3\">none</td></tr>");
    }
    for (reason, recent, total) in &aborts.by_reason {
        let _ = write!(h, "<tr><td>{}</td><td>{recent}</td><td>{total}</td></tr>", escape(reason));
    }
    h.push_str(
        "</table><p><a href=\"/metrics\">/metrics</a> · <a href=\"/health/ready\">/health/ready</a></p></body></html>",
    );
    h
}

/// One line of a chart: its name, its colour and its `(x, y)` points.
pub type Series<'a> = (&'a str, &'a str, &'a [(f64, f64)]);

/// A small line chart: x in seconds (≤ 0, now at the right), y from 0.
pub fn svg_chart(title: &str, series: &[Series<'_>], min_y_max: f64, unit: &str) -> String {
    const W: f64 = 520.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 55.0;
    const BOTTOM: f64 = 25.0;
    let x_min = series.iter().flat_map(|(_, _, p)| p.iter().map(|(x, _)| *x)).fold(-60.0_f64, f64::min);
    let y_max = series.iter().flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y)).fold(min_y_max, f64::max) * 1.1;
    let sx = |x: f64| LEFT + (x - x_min) / (0.0 - x_min).max(1.0) * (W - LEFT - 10.0);
    let sy = |y: f64| (H - BOTTOM) - y / y_max * (H - BOTTOM - 20.0);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\">\
         <title>{}</title><text x=\"{LEFT}\" y=\"14\" font-size=\"13\">{}</text>\
         <line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#999\"/><line x1=\"{LEFT}\" y1=\"20\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"#999\"/>\
         <text x=\"4\" y=\"24\" font-size=\"11\">{:.1}{}</text><text x=\"4\" y=\"{}\" font-size=\"11\">0</text>\
         <text x=\"{LEFT}\" y=\"{}\" font-size=\"11\">{:.0} s</text><text x=\"{}\" y=\"{}\" font-size=\"11\">now</text>",
        escape(title),
        escape(title),
        H - BOTTOM,
        W - 10.0,
        H - BOTTOM,
        H - BOTTOM,
        y_max,
        escape(unit),
        H - BOTTOM,
        H - 8.0,
        x_min,
        W - 35.0,
        H - 8.0
    );
    for (i, (name, colour, points)) in series.iter().enumerate() {
        if !points.is_empty() {
            let path: Vec<String> = points.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\" points=\"{}\"><title>{}</title></polyline>",
                path.join(" "),
                escape(name)
            );
            // Dots too: a series of one point draws no line.
            for (x, y) in points.iter() {
                let _ = write!(s, "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.8\" fill=\"{colour}\"/>", sx(*x), sy(*y));
            }
        }
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"14\" font-size=\"12\" fill=\"{colour}\">{}</text>",
            W - 150.0 + 70.0 * i as f64,
            escape(name)
        );
    }
    s.push_str("</svg>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_draws_one_polyline_per_nonempty_series() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        let points = [(-2.0, 1.0), (-1.0, 3.0), (0.0, 2.0)];
        let svg = svg_chart("t<x>", &[("a", "#000", &points), ("b", "#111", &[])], 1.0, "/s");
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("t&lt;x&gt;"));
    }
}
