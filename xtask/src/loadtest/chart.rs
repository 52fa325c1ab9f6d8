//! The charts, as hand-written SVG: the cumulative distribution of each run's latencies
//! on a logarithmic time axis (a cache hit and a provider call are three decades apart;
//! a linear axis would hide one of them), and each run's in-flight limit over time.

use std::fmt::Write as _;

use super::timeline::Sample;

/// One curve of the chart.
#[derive(Debug, Clone)]
pub(crate) struct Series<'a> {
    pub(crate) label: &'a str,
    /// A CSS colour.
    pub(crate) color: &'a str,
    /// Latencies in seconds, any order.
    pub(crate) latencies: Vec<f64>,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 64.0;
/// The shortest latency the axis shows: 1 ms.
const FLOOR_DECADE: i32 = -3;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The decades the x axis spans: from the one below the smallest latency to the one
/// above the largest.
fn decades(series: &[Series<'_>]) -> (i32, i32) {
    let values = series
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0);
    let (min, max) = values.fold((f64::INFINITY, 0.0_f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if max <= 0.0 {
        return (-2, 3);
    }
    // log10 of a finite positive f64 is within ±330: it fits an i32.
    #[allow(clippy::cast_possible_truncation)]
    let lo = (min.log10().floor() as i32).max(FLOOR_DECADE);
    #[allow(clippy::cast_possible_truncation)]
    let hi = (max.log10().ceil() as i32).max(lo + 1);
    (lo, hi)
}

fn decade_label(decade: i32) -> String {
    if decade >= 0 {
        format!("{} s", 10_u64.pow(decade.unsigned_abs()))
    } else {
        let digits = decade.unsigned_abs() as usize;
        format!("{:.*} s", digits, 10f64.powi(decade))
    }
}

/// The chart as a complete SVG document.
pub(crate) fn cdf_svg(title: &str, series: &[Series<'_>]) -> String {
    let (lo, hi) = decades(series);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let span = f64::from(hi - lo);
    let x = |secs: f64| {
        let d = secs.max(10f64.powi(lo)).log10();
        LEFT + (d - f64::from(lo)) / span * plot_w
    };
    let y = |share: f64| TOP + (1.0 - share) * plot_h;

    let mut svg = String::new();
    // Writing to a String cannot fail: the results below are ignored on purpose.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="42" text-anchor="middle" fill="#555">share of each run's answered requests (real or fallback) answered within a given time</text>"##,
        WIDTH / 2.0
    );

    // Grid: every decade labelled, 2..9 faint; every 25% of requests.
    for decade in lo..=hi {
        let base = 10f64.powi(decade);
        let gx = x(base);
        let _ = writeln!(
            svg,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#bbb"/>"##,
            TOP + plot_h
        );
        let _ = writeln!(
            svg,
            r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            TOP + plot_h + 18.0,
            decade_label(decade)
        );
        if decade < hi {
            for m in 2..10 {
                let mx = x(base * f64::from(m));
                let _ = writeln!(
                    svg,
                    r##"<line x1="{mx:.1}" y1="{TOP}" x2="{mx:.1}" y2="{:.1}" stroke="#eee"/>"##,
                    TOP + plot_h
                );
            }
        }
    }
    for quarter in 0..=4 {
        let share = f64::from(quarter) / 4.0;
        let gy = y(share);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/>"##,
            LEFT + plot_w
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}%</text>"#,
            LEFT - 8.0,
            gy + 4.0,
            quarter * 25
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (unscaled, log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 16.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">answered within</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );

    // The legend's backdrop, so that a curve passing under it stays readable.
    let legend_h = 18.0 * series.len() as f64 + 10.0;
    let _ = writeln!(
        svg,
        r#"<rect x="{:.1}" y="{:.1}" width="250" height="{legend_h:.1}" fill="white" fill-opacity="0.85"/>"#,
        LEFT + 6.0,
        TOP + 6.0
    );
    for (i, s) in series.iter().enumerate() {
        let mut values: Vec<f64> = s
            .latencies
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .collect();
        values.sort_by(f64::total_cmp);
        // Legend, top left inside the plot.
        let ly = TOP + 18.0 + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{}" stroke-width="3"/>"#,
            LEFT + 12.0,
            LEFT + 36.0,
            escape(s.color)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}">{} (n = {})</text>"#,
            LEFT + 42.0,
            ly + 4.0,
            escape(s.label),
            values.len()
        );
        if values.is_empty() {
            continue;
        }
        // A step function: it rises by 1/n at each latency.
        let n = values.len() as f64;
        let mut points = format!("{:.1},{:.1}", x(values[0]), y(0.0));
        for (k, v) in values.iter().enumerate() {
            let (below, at) = (k as f64 / n, (k + 1) as f64 / n);
            let _ = write!(
                points,
                " {:.1},{:.1} {:.1},{:.1}",
                x(*v),
                y(below),
                x(*v),
                y(at)
            );
        }
        let _ = write!(points, " {:.1},{:.1}", LEFT + plot_w, y(1.0));
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{points}"/>"#,
            escape(s.color)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// One panel of the in-flight chart: one run's samples.
#[derive(Debug, Clone)]
pub(crate) struct Panel<'a> {
    pub(crate) title: &'a str,
    /// A CSS colour for the run's own in-flight count.
    pub(crate) color: &'a str,
    pub(crate) samples: &'a [Sample],
    /// The provider's capacity, drawn as a line; `None` when unlimited.
    pub(crate) capacity: Option<usize>,
}

const PANEL_H: f64 = 170.0;
const PANEL_GAP: f64 = 46.0;
const TIMELINE_TOP: f64 = 78.0;
/// The timeline's margins: the right one holds the waiting room's axis.
const TL_LEFT: f64 = 56.0;
const TL_RIGHT: f64 = 56.0;

/// A line of a panel.
struct Line {
    label: &'static str,
    /// A CSS colour; empty for the panel's own.
    color: &'static str,
    width: f64,
    dash: &'static str,
    read: fn(&Sample) -> Option<usize>,
    /// On the right axis (the waiting room), not the left one (calls).
    right: bool,
}

const LIMIT_COLOR: &str = "#111";
const QUEUE_COLOR: &str = "#aaa";
const PROVIDER_COLOR: &str = "#e67e22";
const CAPACITY_COLOR: &str = "#c0392b";

/// Drawn in this order: the last on top.
const LINES: [Line; 4] = [
    Line {
        label: "waiting (right axis)",
        color: QUEUE_COLOR,
        width: 1.0,
        dash: "",
        read: |s| s.queued,
        right: true,
    },
    Line {
        label: "at the provider",
        color: PROVIDER_COLOR,
        width: 1.2,
        dash: "4 3",
        read: |s| s.provider_in_flight,
        right: false,
    },
    Line {
        label: "in-flight limit",
        color: LIMIT_COLOR,
        width: 2.5,
        dash: "",
        read: |s| s.limit,
        right: false,
    },
    Line {
        label: "in flight",
        color: "",
        width: 1.5,
        dash: "",
        read: |s| s.in_flight,
        right: false,
    },
];

/// A round upper bound for the y axis, and its tick step.
fn y_scale(max: usize) -> (usize, usize) {
    let step = match max {
        0..=8 => 2,
        9..=20 => 5,
        21..=50 => 10,
        51..=100 => 20,
        _ => max.div_ceil(5).next_multiple_of(10),
    };
    (max.max(1).div_ceil(step) * step, step)
}

/// The in-flight chart: one panel per run, sharing the time axis: the queue's in-flight
/// limit, the calls it has in flight, the calls running at the provider and the
/// provider's capacity on the left axis; the waiting room on the right one.
pub(crate) fn timeline_svg(title: &str, panels: &[Panel<'_>]) -> String {
    let end_secs = panels
        .iter()
        .flat_map(|p| p.samples.iter().map(|s| s.at_secs))
        .filter(|t| t.is_finite())
        .fold(0.0_f64, f64::max);
    // Whole ten minutes, at least ten.
    let end_min = ((end_secs / 60.0 / 10.0).ceil() * 10.0).max(10.0);
    let plot_w = WIDTH - TL_LEFT - TL_RIGHT;
    let height = TIMELINE_TOP + panels.len() as f64 * (PANEL_H + PANEL_GAP) + 10.0;
    let x = |secs: f64| TL_LEFT + (secs / 60.0 / end_min).clamp(0.0, 1.0) * plot_w;

    let mut svg = String::new();
    // Writing to a String cannot fail: the results below are ignored on purpose.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{height}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // One legend for every panel; the run's own colour shows as blue.
    let mut legend: Vec<(&str, &str, f64, &str)> = LINES
        .iter()
        .rev()
        .map(|l| {
            let color = if l.color.is_empty() {
                "#1f6fb2"
            } else {
                l.color
            };
            (l.label, color, l.width, l.dash)
        })
        .collect();
    legend.push(("provider capacity", CAPACITY_COLOR, 1.0, "8 4"));
    let mut lx = 20.0;
    for (label, color, width, dash) in legend {
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="46" x2="{:.1}" y2="46" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}"/>"#,
            lx + 24.0
        );
        let _ = writeln!(svg, r#"<text x="{:.1}" y="50">{label}</text>"#, lx + 29.0);
        lx += 29.0 + 6.3 * label.len() as f64 + 16.0;
    }

    for (index, panel) in panels.iter().enumerate() {
        let top = TIMELINE_TOP + index as f64 * (PANEL_H + PANEL_GAP);
        let axis_max = |right: bool| {
            panel
                .samples
                .iter()
                .flat_map(|s| {
                    LINES
                        .iter()
                        .filter(|l| l.right == right)
                        .filter_map(|l| (l.read)(s))
                })
                .chain(if right { None } else { panel.capacity })
                .max()
                .unwrap_or(0)
        };
        // Headroom above the highest line, so that it does not merge with the frame.
        let (left_max, left_step) = y_scale(axis_max(false) + 1);
        let (right_max, right_step) = y_scale(axis_max(true));
        let has_right = panel
            .samples
            .iter()
            .any(|s| LINES.iter().any(|l| l.right && (l.read)(s).is_some()));
        let y = |v: usize, right: bool| {
            let max = if right { right_max } else { left_max };
            top + PANEL_H - (v as f64 / max as f64) * PANEL_H
        };
        let _ = writeln!(
            svg,
            r#"<text x="{TL_LEFT}" y="{:.1}" font-weight="bold">{}</text>"#,
            top - 8.0,
            escape(panel.title)
        );
        for tick in (0..=left_max).step_by(left_step) {
            let gy = y(tick, false);
            let _ = writeln!(
                svg,
                r##"<line x1="{TL_LEFT}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#e5e5e5"/>"##,
                TL_LEFT + plot_w
            );
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{tick}</text>"#,
                TL_LEFT - 8.0,
                gy + 4.0
            );
        }
        for tick in (0..=right_max).step_by(right_step).filter(|_| has_right) {
            let _ = writeln!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" fill="{QUEUE_COLOR}">{tick}</text>"#,
                TL_LEFT + plot_w + 8.0,
                y(tick, true) + 4.0
            );
        }
        let mut minute = 0.0;
        while minute <= end_min + 1e-9 {
            let gx = x(minute * 60.0);
            let _ = writeln!(
                svg,
                r##"<line x1="{gx:.1}" y1="{top:.1}" x2="{gx:.1}" y2="{:.1}" stroke="#eee"/>"##,
                top + PANEL_H
            );
            let _ = writeln!(
                svg,
                r#"<text x="{gx:.1}" y="{:.1}" text-anchor="middle">{minute:.0} min</text>"#,
                top + PANEL_H + 16.0
            );
            minute += 10.0;
        }
        let _ = writeln!(
            svg,
            r##"<rect x="{TL_LEFT}" y="{top:.1}" width="{plot_w}" height="{PANEL_H}" fill="none" stroke="#333"/>"##
        );
        if let Some(capacity) = panel.capacity {
            let cy = y(capacity, false);
            let _ = writeln!(
                svg,
                r#"<line x1="{TL_LEFT}" y1="{cy:.1}" x2="{:.1}" y2="{cy:.1}" stroke="{CAPACITY_COLOR}" stroke-width="1" stroke-dasharray="8 4"/>"#,
                TL_LEFT + plot_w
            );
        }
        for line in &LINES {
            let color = if line.color.is_empty() {
                panel.color
            } else {
                line.color
            };
            let mut points = String::new();
            let mut last: Option<usize> = None;
            for s in panel.samples {
                let Some(v) = (line.read)(s) else { continue };
                let px = x(s.at_secs);
                // A step: hold the previous value until this sample.
                if let Some(previous) = last {
                    let _ = write!(points, " {px:.1},{:.1}", y(previous, line.right));
                }
                let _ = write!(points, " {px:.1},{:.1}", y(v, line.right));
                last = Some(v);
            }
            if last.is_none() {
                continue;
            }
            let _ = writeln!(
                svg,
                r#"<polyline data-series="{}" fill="none" stroke="{}" stroke-width="{}" stroke-dasharray="{}" points="{}"/>"#,
                line.label,
                escape(color),
                line.width,
                line.dash,
                points.trim_start()
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(svg: &str) -> Vec<Vec<(f64, f64)>> {
        svg.lines()
            .filter(|l| l.starts_with("<polyline"))
            .map(|l| {
                let start = l.find("points=\"").map_or(0, |i| i + 8);
                l[start..]
                    .trim_end_matches("\"/>")
                    .split(' ')
                    .map(|p| {
                        let (x, y) = p.split_once(',').unwrap_or(("nan", "nan"));
                        (x.parse().unwrap_or(f64::NAN), y.parse().unwrap_or(f64::NAN))
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn two_runs_give_two_rising_curves_inside_the_plot() {
        let svg = cdf_svg(
            "Latency <before & after>",
            &[
                Series {
                    label: "before",
                    color: "#c0392b",
                    latencies: vec![70.0, 45.0, 90.0, 60.0],
                },
                Series {
                    label: "after",
                    color: "#2471a3",
                    latencies: vec![0.05, 0.04, 60.0],
                },
            ],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("Latency &lt;before &amp; after&gt;"));
        assert!(svg.contains("before (n = 4)") && svg.contains("after (n = 3)"));
        // Decades from 0.01 s to 100 s.
        assert!(svg.contains(">0.01 s<") && svg.contains(">100 s<"));
        assert!(!svg.contains(">0.001 s<") && !svg.contains(">1000 s<"));
        let curves = points(&svg);
        assert_eq!(curves.len(), 2);
        assert_eq!(curves[0].len(), 2 + 2 * 4);
        for curve in &curves {
            for &(px, py) in curve {
                assert!((LEFT..=WIDTH - RIGHT).contains(&px), "x {px}");
                assert!((TOP..=HEIGHT - BOTTOM).contains(&py), "y {py}");
            }
            // Never goes left, never goes down (SVG y grows downwards).
            assert!(
                curve
                    .windows(2)
                    .all(|w| w[1].0 >= w[0].0 && w[1].1 <= w[0].1)
            );
            assert!((curve[0].1 - (HEIGHT - BOTTOM)).abs() < 0.1);
            assert!((curve[curve.len() - 1].1 - TOP).abs() < 0.1);
        }
    }

    #[test]
    fn an_empty_run_still_draws_axes_and_legend() {
        let svg = cdf_svg(
            "empty",
            &[Series {
                label: "none",
                color: "black",
                latencies: Vec::new(),
            }],
        );
        assert!(svg.contains("none (n = 0)"));
        assert!(points(&svg).is_empty());
        assert!(svg.contains(">1 s<"));
    }

    #[test]
    fn decade_labels_read_naturally() {
        assert_eq!(decade_label(-3), "0.001 s");
        assert_eq!(decade_label(-1), "0.1 s");
        assert_eq!(decade_label(0), "1 s");
        assert_eq!(decade_label(2), "100 s");
    }

    fn sample(at_secs: f64, limit: Option<usize>, in_flight: usize) -> Sample {
        Sample {
            at_secs,
            limit,
            in_flight: limit.map(|_| in_flight),
            queued: limit.map(|_| 1),
            circuit: None,
            provider_in_flight: Some(in_flight),
        }
    }

    #[test]
    fn the_timeline_draws_each_run_in_its_own_panel() {
        let adaptive: Vec<Sample> = (0..=36_u16)
            .map(|i| sample(f64::from(i) * 100.0, Some(2 + usize::from(i) / 6), 2))
            .collect();
        let before: Vec<Sample> = (0..=10)
            .map(|i| sample(f64::from(i) * 60.0, None, 9))
            .collect();
        let svg = timeline_svg(
            "In flight <over time>",
            &[
                Panel {
                    title: "before",
                    color: "#c0392b",
                    samples: &before,
                    capacity: Some(8),
                },
                Panel {
                    title: "preset",
                    color: "#1f6fb2",
                    samples: &adaptive,
                    capacity: Some(8),
                },
            ],
        );
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("In flight &lt;over time&gt;"));
        // 3600 s of samples: the axis ends at 60 min.
        assert!(svg.contains(">60 min<") && !svg.contains(">70 min<"));
        // Before has only the provider's line; the preset has all four.
        let polylines = svg.matches("<polyline").count();
        assert_eq!(polylines, 1 + 4);
        let curves = points(&svg);
        for curve in &curves {
            assert!(
                curve
                    .iter()
                    .all(|&(px, _)| (TL_LEFT..=WIDTH - TL_RIGHT).contains(&px))
            );
            // Time never runs backwards.
            assert!(curve.windows(2).all(|w| w[1].0 >= w[0].0));
        }
        // The limit rises from 2 to 8: its line ends higher (smaller y) than it starts.
        let limit = svg
            .lines()
            .find(|l| l.contains("data-series=\"in-flight limit\""))
            .unwrap_or_default();
        let limit = &points(limit)[0];
        assert!(limit[limit.len() - 1].1 < limit[0].1);
    }

    #[test]
    fn the_y_axis_rounds_up() {
        assert_eq!(y_scale(0), (2, 2));
        assert_eq!(y_scale(7), (8, 2));
        assert_eq!(y_scale(9), (10, 5));
        assert_eq!(y_scale(32), (40, 10));
        assert_eq!(y_scale(101), (120, 30));
    }
}
