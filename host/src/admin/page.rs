//! `GET /`: the status page. Rendered on the server from what `/plugins`
//! and `/readyz` tell (no script, no build step) and reloaded by the
//! browser every 5 s, so it works wherever the admin endpoint is reached.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::catalog::{PluginState, PluginStatus};
use crate::locks::Lock;

/// How far back the per-minute rates look.
const WINDOW: Duration = Duration::from_secs(60);

/// When, handled, dead-lettered.
type Sample = (Instant, u64, u64);

/// Counts of each plugin taken now and then, for rates per minute.
#[derive(Default)]
pub struct Rates {
    samples: Mutex<BTreeMap<String, VecDeque<Sample>>>,
}

impl Rates {
    /// Notes `plugin`'s handled and dead-lettered counts now.
    pub fn sample(&self, plugin: &str, handled: u64, dead_lettered: u64) {
        let now = Instant::now();
        let mut all = self.samples.locked();
        let samples = all.entry(plugin.to_string()).or_default();
        samples.push_back((now, handled, dead_lettered));
        while samples.len() > 2 && samples[1].0 + WINDOW < now {
            samples.pop_front();
        }
    }

    /// Handled and dead-lettered per minute over the last minute (or as
    /// much of it as was seen); none before two samples.
    pub fn per_minute(&self, plugin: &str) -> Option<(f64, f64)> {
        let all = self.samples.locked();
        let samples = all.get(plugin)?;
        let (first, last) = (samples.front()?, samples.back()?);
        let seconds = last.0.duration_since(first.0).as_secs_f64();
        if seconds < 1.0 {
            return None;
        }
        let per_minute = |a: u64, b: u64| b.saturating_sub(a) as f64 * 60.0 / seconds;
        Some((per_minute(first.1, last.1), per_minute(first.2, last.2)))
    }
}

/// What the page shows.
pub struct View<'a> {
    pub topic: &'a str,
    pub ready: bool,
    /// What `/readyz` says besides ready or not.
    pub readiness: &'a str,
    pub uptime: Duration,
    pub plugins: &'a [PluginStatus],
    pub lags: &'a BTreeMap<String, BTreeMap<i32, i64>>,
    pub retries: &'a BTreeMap<String, u64>,
    pub rates: &'a Rates,
}

/// Text for HTML.
fn esc(text: &str) -> String {
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

fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86400, (s % 86400) / 3600),
    }
}

/// A plugin's state as a person reads it, and its CSS class.
fn state(p: &PluginStatus) -> (String, &'static str) {
    match p.state {
        PluginState::Failed => ("failed".into(), "bad"),
        PluginState::Stopped => ("stopped".into(), "off"),
        PluginState::Running if p.paused => ("paused".into(), "off"),
        PluginState::Running if !p.waiting.is_empty() => {
            // Partitions that wait for the same thing, said once.
            let mut same: BTreeMap<(&str, &str), (Vec<i32>, u64)> = BTreeMap::new();
            for h in &p.waiting {
                let entry = same
                    .entry((h.cause.as_str(), h.reason.as_str()))
                    .or_default();
                entry.0.push(h.partition);
                entry.1 = entry.1.max(h.seconds);
            }
            let holds: Vec<String> = same
                .into_iter()
                .map(|((cause, reason), (partitions, seconds))| {
                    let which = if partitions.contains(&crate::hold::ALL_PARTITIONS) {
                        "all partitions wait".to_string()
                    } else if partitions.len() == 1 {
                        format!("partition {} waits", partitions[0])
                    } else {
                        let list: Vec<String> = partitions.iter().map(i32::to_string).collect();
                        format!("partitions {} wait", list.join(", "))
                    };
                    format!(
                        "{which} for the {cause} for {}: {reason}",
                        duration(Duration::from_secs(seconds))
                    )
                })
                .collect();
            (format!("holding — {}", holds.join("; ")), "warn")
        }
        PluginState::Running => ("running".into(), "ok"),
    }
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2330}\
h1{font-size:20px;margin:0 0 4px}.meta{color:#5b6475;margin-bottom:16px}\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e3e6ec;vertical-align:top}\
th{background:#f4f6f9;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}\
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600}\
.ok{background:#dcf5e3;color:#11612c}.warn{background:#fff1cc;color:#7a5300}.bad{background:#fde0e0;color:#8a1c1c}.off{background:#e8eaef;color:#434a59}\
.sub{color:#5b6475;font-size:12px}code{font-size:12px}";

/// The page.
pub fn render(view: &View<'_>) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"5\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>plugboard — {topic}</title><style>{STYLE}</style></head><body>\
         <h1>plugboard — <code>{topic}</code></h1>\
         <div class=\"meta\"><span id=\"readiness\" class=\"badge {class}\">{ready}</span> \
         up for <span id=\"uptime\">{uptime}</span> · {n} plugins · refreshes every 5 s</div>",
        topic = esc(view.topic),
        class = if view.ready { "ok" } else { "bad" },
        ready = if view.ready { "ready" } else { "not ready" },
        uptime = duration(view.uptime),
        n = view.plugins.len(),
    );
    if !view.ready && !view.readiness.trim().is_empty() {
        let _ = write!(
            html,
            "<pre class=\"sub\">{}</pre>",
            esc(view.readiness.trim())
        );
    }
    html.push_str(
        "<table id=\"plugins\"><thead><tr><th>Plugin</th><th>State</th><th>Version</th>\
         <th>Handled /min</th><th>Dead-lettered /min</th><th>Handled</th><th>Dead-lettered</th>\
         <th>Retries</th><th>Lag</th></tr></thead><tbody>",
    );
    for p in view.plugins {
        let (state, class) = state(p);
        let rates = view.rates.per_minute(&p.name);
        let rate = |r: Option<f64>| r.map_or("—".to_string(), |r| format!("{r:.0}"));
        let version = match (&p.sha256, &p.loaded_at) {
            (Some(sha), Some(at)) => format!(
                "<code>{}</code><div class=\"sub\">loaded {}</div>",
                esc(&sha[..sha.len().min(12)]),
                esc(at)
            ),
            _ => "—".into(),
        };
        let lag = view.lags.get(&p.name).filter(|l| !l.is_empty());
        let lag_total = lag.map_or("—".to_string(), |l| l.values().sum::<i64>().to_string());
        let _ = write!(
            html,
            "<tr class=\"plugin\" data-plugin=\"{name}\"><td><b>{name}</b></td>\
             <td><span class=\"badge state {class}\">{state}</span></td><td>{version}</td>\
             <td class=\"num handled-rate\">{hr}</td><td class=\"num dead-rate\">{dr}</td>\
             <td class=\"num\">{handled}</td><td class=\"num\">{dead}</td>\
             <td class=\"num\">{retries}</td><td class=\"num lag\">{lag_total}</td></tr>",
            name = esc(&p.name),
            state = esc(&state),
            hr = rate(rates.map(|r| r.0)),
            dr = rate(rates.map(|r| r.1)),
            handled = p.handled,
            dead = p.dead_lettered,
            retries = view.retries.get(&p.name).copied().unwrap_or(0),
        );
        let mut notes = Vec::new();
        if let Some(lag) = lag.filter(|l| !l.is_empty()) {
            let parts: Vec<String> = lag.iter().map(|(p, l)| format!("p{p} {l}")).collect();
            notes.push(format!(
                "<span class=\"partitions\">lag per partition: {}</span>",
                esc(&parts.join(" · "))
            ));
        }
        if let Some(r) = &p.redrive {
            let text = |k: &str| r[k].as_u64().map_or("?".into(), |n| n.to_string());
            notes.push(format!(
                "<span class=\"redrive\">redrive {} {}: read {}, handled {}, parked again {}, skipped {}, remaining {}</span>",
                esc(r["id"].as_str().unwrap_or("?")),
                esc(r["state"].as_str().unwrap_or("?")),
                text("read"),
                text("handled"),
                text("parked_again"),
                text("skipped"),
                text("remaining"),
            ));
        }
        if let Some(pending) = &p.pending_approval {
            notes.push(format!(
                "<span class=\"badge warn pending\">pending-approval</span> version <code>{}</code> asks for {} \
                 (<code>plugboard ctl approve {}</code>)",
                esc(&pending.version),
                esc(&pending.asks.join("; ")),
                esc(&p.name)
            ));
        }
        if let Some(shadow) = &p.shadow {
            notes.push(format!(
                "<span class=\"shadow\">shadow <code>{}</code>: {} events compared, {} agree \
                 (<code>plugboard ctl shadow {}</code>)</span>",
                esc(shadow["version"].as_str().unwrap_or("?")),
                shadow["compared"],
                shadow["agreed"],
                esc(&p.name)
            ));
        }
        if let Some(r) = &p.rollback {
            notes.push(format!(
                "<span class=\"rollback\">rolled back {} at {}: {}</span>",
                esc(&r.from),
                esc(&r.at),
                esc(&r.reason)
            ));
        }
        if let Some(error) = &p.last_error {
            notes.push(format!(
                "<span class=\"last-error\">last error: {}</span>",
                esc(error)
            ));
        }
        if !notes.is_empty() {
            let _ = write!(
                html,
                "<tr class=\"notes\"><td></td><td colspan=\"8\" class=\"sub\">{}</td></tr>",
                notes.join("<br>")
            );
        }
    }
    html.push_str("</tbody></table></body></html>\n");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_plugins_is_escaped() {
        assert_eq!(esc("<b a=\"x\">&'"), "&lt;b a=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(duration(Duration::from_secs(3725)), "1 h 2 min");
    }

    #[test]
    fn rates_are_per_minute_over_what_was_seen() {
        let rates = Rates::default();
        assert!(rates.per_minute("crm").is_none());
        let mut all = rates.samples.locked();
        let start = Instant::now() - Duration::from_secs(30);
        all.insert(
            "crm".into(),
            VecDeque::from([(start, 100, 1), (start + Duration::from_secs(30), 400, 4)]),
        );
        drop(all);
        let (handled, dead) = rates.per_minute("crm").unwrap();
        assert!((handled - 600.0).abs() < 1.0 && (dead - 6.0).abs() < 0.1);
    }
}
