//! SVG pictures (plotters' SVG backend, no system fonts needed):
//!
//! * [`bench_svg`]: `paytx bench --plot FILE.svg` — throughput over time
//!   and the latency distribution (HDR percentiles), one series per
//!   concurrency level;
//! * [`sim_timeline_svg`]: `paytx sim --seed S --timeline FILE.svg` —
//!   virtual time on the x-axis: commits and aborts per interval, the
//!   coordinator group's leader, and the faults (crashes, restarts, pauses,
//!   partitions, fsync failures), built from the run's trace
//!   ([`SimTimeline::from_trace`]); `paytx chaos --timeline` draws the same
//!   picture of a real run (`crate::chaos`).

use plotters::prelude::*;

/// Why a picture could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the plot: {0}")]
pub struct PlotError(String);

fn plot_error<E: std::fmt::Display>(e: E) -> PlotError {
    PlotError(e.to_string())
}

/// One concurrency level of a benchmark.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelSeries {
    pub concurrency: usize,
    /// Commits in each second of the measured window.
    pub commits_per_sec: Vec<f64>,
    /// `(percentile, latency ms)`, percentiles ascending in `(0, 100]`.
    pub percentiles_ms: Vec<(f64, f64)>,
}

/// The percentiles [`bench_svg`] draws (HDR-style: more resolution in the tail).
pub const PLOT_PERCENTILES: [f64; 9] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.99, 100.0];

/// "Nines" of a percentile: 90 → 1, 99 → 2, 99.9 → 3 (100 is drawn at 5).
fn nines(percentile: f64) -> f64 {
    let rest = (100.0 - percentile) / 100.0;
    if rest <= 1e-5 {
        5.0
    } else {
        -rest.log10()
    }
}

fn series_colour(index: usize) -> RGBColor {
    const COLOURS: [RGBColor; 8] = [
        RGBColor(31, 95, 168),
        RGBColor(199, 119, 0),
        RGBColor(23, 110, 44),
        RGBColor(176, 0, 32),
        RGBColor(110, 60, 160),
        RGBColor(0, 128, 128),
        RGBColor(120, 90, 40),
        RGBColor(90, 90, 90),
    ];
    COLOURS[index % COLOURS.len()]
}

/// Throughput over time (left) and the latency distribution (right), one
/// line per level in each.
pub fn bench_svg(levels: &[LevelSeries]) -> Result<String, PlotError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 440)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (left, right) = root.split_horizontally(550);
        let max_secs = levels.iter().map(|l| l.commits_per_sec.len()).max().unwrap_or(1).max(1) as f64;
        let max_tps = levels.iter().flat_map(|l| l.commits_per_sec.iter().copied()).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&left)
            .caption("throughput (commits per second)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_secs, 0.0..max_tps)
            .map_err(plot_error)?;
        chart.configure_mesh().x_desc("seconds into the window").y_desc("commits/s").draw().map_err(plot_error)?;
        for (i, level) in levels.iter().enumerate() {
            let colour = series_colour(i);
            let points = level.commits_per_sec.iter().enumerate().map(|(s, v)| (s as f64 + 1.0, *v));
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("concurrency {}", level.concurrency))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;

        let max_ms = levels.iter().flat_map(|l| l.percentiles_ms.iter().map(|(_, ms)| *ms)).fold(1.0, f64::max) * 1.1;
        let mut chart = ChartBuilder::on(&right)
            .caption("latency by percentile (ms)", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(32)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..5.2, 0.0..max_ms)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .x_labels(6)
            .x_label_formatter(&|x: &f64| match x.round() as i64 {
                0 => "0".into(),
                1 => "90".into(),
                2 => "99".into(),
                3 => "99.9".into(),
                4 => "99.99".into(),
                _ => "max".into(),
            })
            .y_desc("ms")
            .draw()
            .map_err(plot_error)?;
        for (i, level) in levels.iter().enumerate() {
            let colour = series_colour(i);
            let points: Vec<(f64, f64)> = level.percentiles_ms.iter().map(|(p, ms)| (nines(*p), *ms)).collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(format!("concurrency {}", level.concurrency))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// A fault or lifecycle event of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultMark {
    pub at_ms: u64,
    /// The simulator's `crash`, `start`, `pause`, `partition`, `heal`,
    /// `fsync-fail`, `flap`, or a chaos fault's kind (`kill_leader`, …).
    pub kind: &'static str,
    /// The node it hit (0: the whole cluster, e.g. a heal).
    pub node: u64,
}

/// What a simulated run's timeline shows.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SimTimeline {
    pub interval_ms: u64,
    /// Per interval: commits and aborts answered to clients (replays excluded).
    pub commits: Vec<u64>,
    pub aborts: Vec<u64>,
    /// `(at_ms, node)`: the coordinator leader, as the node that began each
    /// answered transaction (`txn-<term>.<node>.<seq>`).
    pub leader: Vec<(u64, u64)>,
    /// Each participant shard group's leader, `(at_ms, node)` at each
    /// change, by group name (`accounts/0`): the simulator traces them; a
    /// chaos run leaves this empty.
    pub shard_leaders: std::collections::BTreeMap<String, Vec<(u64, u64)>>,
    pub faults: Vec<FaultMark>,
    pub nodes: u64,
    pub end_ms: u64,
}

/// The number after `node ` in `text`, if any.
fn node_after(text: &str, prefix: &str) -> Option<u64> {
    let rest = text.strip_prefix(prefix)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

impl SimTimeline {
    /// Reads the simulator's trace lines (`"<at> ms  <label>"`), bucketing
    /// outcomes into `interval_ms`.
    pub fn from_trace(lines: &[String], interval_ms: u64) -> SimTimeline {
        let interval_ms = interval_ms.max(1);
        let mut timeline = SimTimeline { interval_ms, ..SimTimeline::default() };
        for line in lines {
            let Some((at, label)) = line.split_once(" ms  ") else { continue };
            let Ok(at_ms) = at.trim().parse::<u64>() else { continue };
            timeline.end_ms = timeline.end_ms.max(at_ms);
            let mark = |kind: &'static str, node: u64| FaultMark { at_ms, kind, node };
            if let Some(node) = node_after(label, "node ") {
                timeline.nodes = timeline.nodes.max(node);
                if label.ends_with(" crashed") {
                    timeline.faults.push(mark("crash", node));
                } else if label.contains(" started (incarnation") && at_ms > 0 {
                    // A start after time 0 is a restart (the first starts are the cluster's).
                    timeline.faults.push(mark("start", node));
                } else if label.ends_with(" paused") {
                    timeline.faults.push(mark("pause", node));
                } else if label.ends_with(" fsyncs start failing") {
                    timeline.faults.push(mark("fsync-fail", node));
                }
            } else if let Some(rest) = label.strip_prefix("partition: node ") {
                if let Some(node) = node_after(rest, "") {
                    timeline.faults.push(mark("partition", node));
                }
            } else if let Some(rest) = label.strip_prefix("flap: node ") {
                if let Some(node) = node_after(rest, "") {
                    timeline.faults.push(mark("flap", node));
                }
            } else if let Some((shard, node)) =
                label.strip_prefix("shard ").and_then(|rest| rest.split_once(" led by node "))
            {
                if let Ok(node) = node.trim().parse::<u64>() {
                    timeline.shard_leaders.entry(shard.to_string()).or_default().push((at_ms, node));
                }
            } else if label == "partition healed" || label == "healed" {
                timeline.faults.push(mark("heal", 0));
            } else if let Some((_, reply)) = label.split_once(" -> client ") {
                // "<client> txn-T.N.S Committed" or "... Aborted(…)", maybe " (replay)".
                let mut words = reply.splitn(3, ' ');
                let (_client, txn, outcome) = (words.next(), words.next(), words.next().unwrap_or(""));
                let Some(txn) = txn.and_then(crate::admin::views::parse_txn_id) else { continue };
                if timeline.leader.last().map(|(_, n)| *n) != Some(txn.node) {
                    timeline.leader.push((at_ms, txn.node));
                }
                if outcome.ends_with("(replay)") {
                    continue;
                }
                let bucket = (at_ms / interval_ms) as usize;
                if timeline.commits.len() <= bucket {
                    timeline.commits.resize(bucket + 1, 0);
                    timeline.aborts.resize(bucket + 1, 0);
                }
                if outcome.starts_with("Committed") {
                    timeline.commits[bucket] += 1;
                } else if outcome.starts_with("Aborted") {
                    timeline.aborts[bucket] += 1;
                }
            }
        }
        let buckets = (timeline.end_ms / interval_ms) as usize + 1;
        timeline.commits.resize(buckets, 0);
        timeline.aborts.resize(buckets, 0);
        timeline
    }
}

/// The timeline: outcomes per interval (top), the leader and the faults per
/// node (bottom), on one virtual-time axis.
/// `x_desc` names the clock (`virtual seconds` for the simulator). An empty
/// `aborts` (a chaos run does not time them) draws no abort line.
pub fn sim_timeline_svg(timeline: &SimTimeline, title: &str, x_desc: &str) -> Result<String, PlotError> {
    let mut svg = String::new();
    // The lower chart's legend lists the coordinator group, every shard
    // group and every fault kind, above the node rows: the chart grows with
    // the shard groups, and the rows leave the legend its height.
    const LEGEND_ROW_PX: f64 = 17.0;
    let fault_kinds = timeline.faults.iter().map(|f| f.kind).collect::<std::collections::BTreeSet<_>>().len();
    let legend_rows = 1 + timeline.shard_leaders.len() + fault_kinds;
    let bottom_px = 380 + 17 * timeline.shard_leaders.len() as u32;
    let plot_px = f64::from(bottom_px) - 90.0;
    let legend_px = legend_rows as f64 * LEGEND_ROW_PX + 12.0;
    let nodes = timeline.nodes.max(1) as f64;
    // Units above the top node row so that they span `legend_px` of `plot_px`.
    let headroom = (nodes * legend_px / (plot_px - legend_px).max(plot_px / 4.0)).max(1.0) + 0.5;
    {
        let root = SVGBackend::with_string(&mut svg, (1100, 300 + bottom_px)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let (top, bottom) = root.split_vertically(300);
        let end_secs = (timeline.end_ms as f64 / 1e3).max(0.001);
        let per_interval_max =
            timeline.commits.iter().chain(timeline.aborts.iter()).copied().max().unwrap_or(1).max(1) as f64 * 1.1;
        let mut chart = ChartBuilder::on(&top)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..end_secs, 0.0..per_interval_max)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(format!("per {} ms", timeline.interval_ms))
            .draw()
            .map_err(plot_error)?;
        let at = |i: usize| (i as f64 + 0.5) * timeline.interval_ms as f64 / 1e3;
        for (name, values, colour) in
            [("commits", &timeline.commits, series_colour(2)), ("aborts", &timeline.aborts, series_colour(3))]
        {
            if values.is_empty() {
                continue;
            }
            let points: Vec<(f64, f64)> = values.iter().enumerate().map(|(i, v)| (at(i), *v as f64)).collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(plot_error)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;

        let mut chart = ChartBuilder::on(&bottom)
            .caption("leaders (coordinator: thick; shard groups: thin) and faults per node", ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(28)
            .y_label_area_size(60)
            // Room above the top node for the legend.
            .build_cartesian_2d(0.0..end_secs, 0.0..nodes + headroom)
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("node")
            .y_labels((nodes + headroom) as usize + 1)
            .y_label_formatter(&|y: &f64| {
                if *y >= 1.0 && *y <= nodes && y.fract() == 0.0 {
                    format!("node {y}")
                } else {
                    String::new()
                }
            })
            .draw()
            .map_err(plot_error)?;
        // The coordinator's leader as a step line; each shard group's as a
        // thinner one, a little below it on the leader's row, so groups
        // led by one node stay apart.
        let leader_colour = series_colour(0);
        chart
            .draw_series(LineSeries::new(leader_steps(&timeline.leader, 0.0, end_secs), leader_colour.stroke_width(3)))
            .map_err(plot_error)?
            .label("coordinator group leader")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], leader_colour.stroke_width(3)));
        let groups = timeline.shard_leaders.len().max(1) as f64;
        for (i, (shard, changes)) in timeline.shard_leaders.iter().enumerate() {
            let colour = series_colour(i + 10).mix(0.8);
            let offset = -0.08 - 0.12 * (i as f64) / groups;
            chart
                .draw_series(LineSeries::new(leader_steps(changes, offset, end_secs), colour.stroke_width(1)))
                .map_err(plot_error)?
                .label(format!("{shard} leader"))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(1)));
        }
        // Every kind present, in a fixed order first (the simulator's), then
        // any other (the chaos harness's), one marker colour each.
        const KNOWN: [&str; 7] = ["crash", "start", "pause", "partition", "flap", "fsync-fail", "heal"];
        let mut kinds: Vec<&str> =
            KNOWN.iter().copied().filter(|k| timeline.faults.iter().any(|f| f.kind == *k)).collect();
        for fault in &timeline.faults {
            if !kinds.contains(&fault.kind) {
                kinds.push(fault.kind);
            }
        }
        for (i, kind) in kinds.into_iter().enumerate() {
            let colour = series_colour(i + 3);
            // Starts and crashes above a node's row, the rest below, so a
            // crash and its restart do not hide each other's marker.
            let offset =
                if matches!(kind, "crash" | "start" | "fsync-fail") || kind.starts_with("kill") { 0.25 } else { -0.25 };
            let marks: Vec<(f64, f64)> = timeline
                .faults
                .iter()
                .filter(|f| f.kind == kind)
                .map(|f| (f.at_ms as f64 / 1e3, if f.node == 0 { 0.5 } else { f.node as f64 + offset }))
                .collect();
            chart
                .draw_series(marks.into_iter().map(|p| TriangleMarker::new(p, 6, colour.filled())))
                .map_err(plot_error)?
                .label(kind)
                .legend(move |(x, y)| TriangleMarker::new((x + 8, y), 5, colour.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(svg)
}

/// A leader's changes `(at_ms, node)` as a step line on the node rows,
/// `offset` below or above the row, held to `end_secs`.
fn leader_steps(changes: &[(u64, u64)], offset: f64, end_secs: f64) -> Vec<(f64, f64)> {
    let mut steps: Vec<(f64, f64)> = Vec::new();
    for (at_ms, node) in changes {
        let (x, y) = (*at_ms as f64 / 1e3, *node as f64 + offset);
        if let Some((_, previous)) = steps.last().copied() {
            steps.push((x, previous));
        }
        steps.push((x, y));
    }
    if let Some((_, y)) = steps.last().copied() {
        steps.push((end_secs, y));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses_as_xml(svg: &str) -> roxmltree::Document<'_> {
        roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}"))
    }

    #[test]
    fn the_bench_plot_is_svg_with_one_line_per_level_in_each_chart() {
        let levels: Vec<LevelSeries> = [1usize, 16, 64]
            .iter()
            .enumerate()
            .map(|(i, c)| LevelSeries {
                concurrency: *c,
                commits_per_sec: vec![100.0 * (i + 1) as f64, 120.0, 110.0],
                percentiles_ms: PLOT_PERCENTILES.iter().map(|p| (*p, 1.0 + p / 10.0 + i as f64)).collect(),
            })
            .collect();
        let svg = bench_svg(&levels).expect("drawn");
        let doc = parses_as_xml(&svg);
        let lines = doc.descendants().filter(|n| n.has_tag_name("polyline")).count();
        assert!(lines >= 2 * levels.len(), "{lines} polylines for {} levels", levels.len());
        let texts: Vec<&str> =
            doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(str::trim).collect();
        for level in &levels {
            let entry = format!("concurrency {}", level.concurrency);
            assert_eq!(texts.iter().filter(|t| **t == entry).count(), 2, "a legend entry per level in each chart");
        }
    }

    #[test]
    fn the_sim_timeline_reads_outcomes_leaders_and_faults_from_a_trace() {
        let trace: Vec<String> = [
            "       0 ms  node 1 started (incarnation 0)",
            "      10 ms  1 -> client 3 txn-1.1.4294967297 Committed",
            "      20 ms  1 -> client 4 txn-1.1.4294967298 Aborted(InsufficientFunds { .. })",
            "      30 ms  shard account/0 led by node 1",
            "      30 ms  shard order/0 led by node 2",
            "     600 ms  node 1 crashed",
            "     700 ms  partition: node 2 isolated (one-way: false)",
            "    1200 ms  2 -> client 3 txn-2.2.8589934593 Committed",
            "    1250 ms  2 -> client 3 txn-2.2.8589934593 Committed (replay)",
            "    1300 ms  partition healed",
            "    1400 ms  node 1 started (incarnation 1)",
            "    1500 ms  node 3 paused",
            "    1600 ms  shard account/0 led by node 3",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let timeline = SimTimeline::from_trace(&trace, 500);
        assert_eq!(timeline.commits, vec![1, 0, 1, 0]);
        assert_eq!(timeline.aborts, vec![1, 0, 0, 0]);
        assert_eq!(timeline.leader, vec![(10, 1), (1200, 2)]);
        let groups: Vec<(&str, &[(u64, u64)])> =
            timeline.shard_leaders.iter().map(|(s, c)| (s.as_str(), c.as_slice())).collect();
        assert_eq!(groups, vec![("account/0", &[(30, 1), (1600, 3)][..]), ("order/0", &[(30, 2)][..])]);
        let kinds: Vec<&str> = timeline.faults.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec!["crash", "partition", "heal", "start", "pause"]);
        let svg = sim_timeline_svg(&timeline, "seed 7", "virtual seconds").expect("drawn");
        let doc = parses_as_xml(&svg);
        let lines = doc.descendants().filter(|n| n.has_tag_name("polyline")).count();
        assert!(lines >= 5, "commits, aborts, the coordinator's and two shard groups' leaders: {lines}");
        let texts: Vec<&str> =
            doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).map(str::trim).collect();
        assert!(texts.contains(&"account/0 leader") && texts.contains(&"order/0 leader"), "a legend entry per group");
    }
}
